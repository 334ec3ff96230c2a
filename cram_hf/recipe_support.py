"""What the recipes (``recipes/run_glue.py``, ``run_qa.py``, ``run_mlm_cram.py``) share: their argument
dataclasses, the checks they make before any work, the training block and the one-shot table.

* :class:`SparseTransferArguments` — ``--keep_sparsity`` and ``--eval_sparsities``;
* :class:`RecipeConfig` — ``CrAMConfig`` with ``--overwrite_output_dir`` and an ``--output_dir`` checked
  while parsing; :func:`last_checkpoint` and :func:`check_model_fits`, the checks before any work (also used
  by ``recipes/run_mlm_cram.py``);
* :class:`FinetuneConfig` — ``RecipeConfig`` whose CrAM is *off* unless ``--cram_rho`` or
  ``--cram_sparsities`` is given (``CrAMConfig`` itself defaults to CrAM on, which suits pre-training, not a
  plain fine-tune);
* :func:`setup_keep_sparsity` — the mask-keeping callback when the model is sparse;
* :func:`evaluate_sparsities` — the one-shot loop of :mod:`cram_hf.pruning` on the fine-tuned model, as a
  printed table and ``eval_sparsities.json``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field, fields
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .arguments import UsageError, validated
from .checkpoint import check_writable_dir, save_finetuned_sparsity_config
from .compression import SCOPES, level_name, parse_level, parse_levels
from .config import DEFAULT_SPARSITIES, CrAMConfig
from .files import check_not_empty, write_json
from .pruning import format_one_shot_table, one_shot
from .sparse_finetune import KeepSparsityCallback, keep_sparsity_callback
from .sweep_options import METHODS
from .targets import Patterns

logger = logging.getLogger(__name__)

EVAL_SPARSITIES_FILE = "eval_sparsities.json"
# Trainer bookkeeping that is not a quality metric; left out of the one-shot table.
_CRAM_DEFAULT_RHO = {f.name: f.default for f in fields(CrAMConfig)}["cram_rho"]
_NOT_METRICS = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "model_preparation_time",
    "_samples",
)
# What a resumed run must share with the run that wrote the checkpoint.
CRAM_SETTINGS = (
    "cram_rho",
    "cram_sparsities",
    "cram_plus",
    "cram_sparse_grad",
    "cram_scope",
    "cram_targets",
    "cram_grad_norm",
)


@dataclass
class EvalPruningArguments:
    """How the recipes' one-shot table (``--eval_sparsities``) prunes: magnitude, or a calibrated pruner."""

    eval_pruning_method: str = field(
        default="magnitude",
        metadata={
            "help": "Pruner of the one-shot table: magnitude (no data), wanda or sparsegpt (need "
            "--eval_calibration_file).",
            "choices": list(METHODS),
        },
    )
    eval_calibration_file: Optional[str] = field(
        default=None,
        metadata={"help": "Calibration text for wanda/sparsegpt: .txt (one sample per line) or csv/json."},
    )
    eval_num_calibration_samples: int = field(
        default=128, metadata={"help": "Calibration samples drawn from --eval_calibration_file."}
    )

    def __post_init__(self):
        if self.eval_pruning_method not in METHODS:
            raise ValueError(
                f"eval_pruning_method: must be magnitude, wanda or sparsegpt, got {self.eval_pruning_method!r}."
            )
        if self.eval_pruning_method != "magnitude":
            if self.eval_calibration_file is None:
                raise ValueError(
                    f"eval_calibration_file: --eval_pruning_method {self.eval_pruning_method} needs calibration text."
                )
            if not os.path.isfile(self.eval_calibration_file):
                raise ValueError(f"eval_calibration_file: no such file {self.eval_calibration_file!r}.")
            check_not_empty(self.eval_calibration_file, "eval_calibration_file")
        if self.eval_num_calibration_samples < 1:
            raise ValueError("eval_num_calibration_samples: must be a positive integer.")

    def pruning_method(self, tokenizer, max_seq_length: int) -> dict:
        """``method`` (and ``calibration`` batches, for a calibrated pruner) for :func:`evaluate_sparsities`."""
        if self.eval_pruning_method == "magnitude":
            return {"method": "magnitude"}
        from .calibration import calibration_batches

        batches = calibration_batches(
            self.eval_calibration_file,
            tokenizer,
            num_samples=self.eval_num_calibration_samples,
            max_seq_length=max_seq_length,
        )
        return {"method": self.eval_pruning_method, "calibration": batches}


@dataclass
class SparseTransferArguments(EvalPruningArguments):
    """Sparse-transfer flags shared by the fine-tuning recipes."""

    keep_sparsity: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Hold the zeros of a pruned model at exactly zero while fine-tuning. Default: on when the model "
            "is sparse (a sparsity_config.json next to it, or >= 1%% exact zeros in its target matrices); "
            "'--keep_sparsity false' turns it off, '--keep_sparsity' (or '--keep_sparsity true') forces it.",
            # A bare flag means true, as for the plain bool flags (HfArgumentParser does that only for those).
            "nargs": "?",
            "const": True,
        },
    )
    eval_sparsities: list[str] = field(
        default_factory=list,
        metadata={
            "help": "After fine-tuning, prune a copy of the model one-shot at each of these levels (sparsities in "
            "[0, 1) and/or N:M patterns such as 2:4) and evaluate it; writes eval_sparsities.json.",
            "nargs": "*",
        },
    )
    eval_sparsity_scope: str = field(
        default="global", metadata={"help": "Magnitude ranking for --eval_sparsities: 'global' or 'layer'."}
    )

    def __post_init__(self):
        super().__post_init__()
        self.eval_sparsities = [level_name(v) for v in parse_levels(self.eval_sparsities, "eval_sparsities")]
        if self.eval_sparsity_scope not in SCOPES:
            raise ValueError(
                f"eval_sparsity_scope: must be one of {SCOPES}, got {self.eval_sparsity_scope!r}."
            )


@dataclass
class RecipeConfig(CrAMConfig):
    """``CrAMConfig`` for the recipes: ``--output_dir`` is refused while parsing when it could not be written,
    and ``--overwrite_output_dir`` exists on every transformers version (5.x dropped it)."""

    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Train from scratch in an --output_dir that holds checkpoints of an earlier run, "
            "instead of resuming the last one (run_mlm_cram.py resumes by default)."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        check_writable_dir(self.output_dir)


@dataclass
class FinetuneConfig(RecipeConfig):
    """``RecipeConfig`` for fine-tuning: CrAM is off unless asked for.

    Neither ``cram_rho`` nor ``cram_sparsities`` given: plain fine-tuning (ρ = 0, no levels). Only one given:
    the other takes ``CrAMConfig``'s default (ρ = 0.05, levels 0.5/0.6/0.7/0.8), so ``--cram_rho 0.05`` or
    ``--cram_sparsities 0.5 0.7 2:4`` alone switches CrAM+ on.
    """

    cram_rho: Optional[float] = field(
        default=None,
        metadata={
            "help": "CrAM perturbation radius ρ >= 0. Not given: CrAM off, unless --cram_sparsities is given "
            "(then ρ = 0.05)."
        },
    )
    cram_sparsities: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "CrAM compression levels (sparsities in [0, 1) and/or N:M such as 2:4). Not given: none, unless "
            "--cram_rho > 0 is given (then 0.5 0.6 0.7 0.8).",
            "nargs": "*",
        },
    )

    def __post_init__(self):
        if self.cram_sparsities is not None:  # "--cram_sparsities none": explicitly none
            self.cram_sparsities = [
                level_name(v) for v in parse_levels(self.cram_sparsities, "cram_sparsities")
            ]
        rho_given, levels_given = self.cram_rho is not None, self.cram_sparsities is not None
        if not rho_given:
            self.cram_rho = _CRAM_DEFAULT_RHO if levels_given and self.cram_sparsities else 0.0
        if not levels_given:
            rho = self.cram_rho
            try:
                on = float(rho) > 0
            except (TypeError, ValueError):
                on = False  # let CrAMConfig report the bad value
            self.cram_sparsities = list(DEFAULT_SPARSITIES) if rho_given and on else []
        super().__post_init__()


def last_checkpoint(args: RecipeConfig) -> Optional[str]:
    """The checkpoint a re-run into ``args.output_dir`` resumes from: its last ``checkpoint-N``, or none (no
    ``--do_train``, ``--overwrite_output_dir``, or ``--resume_from_checkpoint`` given). One written with other
    CrAM settings is refused: the Trainer would carry on with the old run (a finished one: keep its model)."""
    from transformers.trainer_utils import get_last_checkpoint

    if not args.do_train or args.overwrite_output_dir or args.resume_from_checkpoint is not None:
        return None
    if not os.path.isdir(args.output_dir):
        return None
    checkpoint = get_last_checkpoint(args.output_dir)
    changed = _changed_cram_settings(checkpoint, args) if checkpoint is not None else []
    if changed:
        raise UsageError(
            f"output_dir: {checkpoint!r} was trained with other CrAM settings ({'; '.join(changed)}) and "
            "would be resumed with them; pass --overwrite_output_dir to start over, or a new --output_dir."
        )
    return checkpoint


def _changed_cram_settings(checkpoint: str, args) -> list[str]:
    """``"name: old -> new"`` for each CrAM setting of the checkpoint's ``training_args.bin`` that ``args``
    changes; nothing when that file cannot be read (the Trainer resumes without it)."""
    from transformers.trainer import TRAINING_ARGS_NAME

    path = os.path.join(checkpoint, TRAINING_ARGS_NAME)
    try:
        # The Trainer pickles its arguments there; the folder is this run's own output.
        old = torch.load(path, weights_only=False)
    except Exception as err:  # noqa: BLE001 - missing, or pickled by another version: nothing to compare
        logger.warning(
            "%s: not readable (%s); its CrAM settings are not compared with this run's.", path, err
        )
        return []
    return [
        f"{name}: {_setting(old, name)!r} -> {_setting(args, name)!r}"
        for name in CRAM_SETTINGS
        if _setting(old, name) != _setting(args, name)
    ]


def _setting(args, name: str):
    value = getattr(args, name, None)
    if name == "cram_sparsities" and value is not None:
        # Canonical names: older versions stored 0.5 where the current one stores "0.5".
        return [level_name(parse_level(v, name)) for v in value]
    return value


def check_model_fits(config, model_class, args: CrAMConfig, eval_levels: Sequence = (), **hub_kwargs) -> None:
    """Before data or weights are loaded: ``--cram_targets`` match parameters of ``model_class`` built from
    ``config`` (a meta-device skeleton, no weights read) and every N:M level of ``--cram_sparsities`` and
    ``--eval_sparsities`` divides the targets' input dimensions. ``config`` is a config, or the name or path
    ``AutoConfig`` loads it from (with ``hub_kwargs``), only when there is something to check."""
    from .checkpoint import meta_model
    from .pruning import check_levels_fit

    if args.cram_targets is None and not args.cram_sparsities and not eval_levels:
        return  # nothing is pruned and no regex given: the targets are not needed
    if isinstance(config, (str, os.PathLike)):
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(config, **hub_kwargs)
    skeleton = meta_model(config, model_class, trust_remote_code=hub_kwargs.get("trust_remote_code", False))
    if skeleton is None:
        return
    for levels, name in ((args.cram_sparsities, "cram_sparsities"), (eval_levels, "eval_sparsities")):
        validated(
            check_levels_fit,
            skeleton,
            levels,
            args.cram_targets,
            levels_name=name,
            targets_name="cram_targets",
        )


def setup_keep_sparsity(
    model: nn.Module, model_path, args: SparseTransferArguments, targets: Patterns = None
) -> Optional[KeepSparsityCallback]:
    """The mask-keeping callback for ``model`` (loaded from ``model_path``), per ``--keep_sparsity``."""
    return keep_sparsity_callback(model, model_path, targets=targets, keep=args.keep_sparsity)


def check_model_path(path) -> None:
    """Fail early on a *compact* sparse checkpoint: it has no ``model.safetensors``, so ``from_pretrained`` of a
    task class cannot read it."""
    from .checkpoint import is_compact

    if path is not None and os.path.isdir(str(path)) and is_compact(path):
        raise ValueError(
            f"model_name_or_path: {path!r} is a compact sparse checkpoint, which only cram_hf.load_sparse reads. "
            "Re-save it in the dense storage first: save_sparse(load_sparse(path), new_path)."
        )


def quality_metrics(metrics: dict) -> dict:
    """Drop the Trainer's timing and bookkeeping entries."""
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, (int, float))
        and not k.removesuffix("_mm").endswith(_NOT_METRICS)  # _mm: MNLI mismatched
    }


def evaluate_sparsities(
    evaluate: Callable[[], dict],
    model: nn.Module,
    levels: Sequence,
    *,
    scope: str = "global",
    targets: Patterns = None,
    output_dir: Optional[str] = None,
    dense_metrics: Optional[dict] = None,
    write: bool = True,
    **method,
) -> dict:
    """One-shot results after fine-tuning (:func:`cram_hf.pruning.one_shot`: prune in place, ``evaluate()``,
    restore): prints the table and writes ``eval_sparsities.json`` in ``output_dir``. ``dense_metrics`` saves
    re-evaluating the unpruned model."""
    dense = quality_metrics(dense_metrics if dense_metrics is not None else evaluate())
    rows = one_shot(
        model,
        parse_levels(levels, "eval_sparsities"),
        lambda _: quality_metrics(evaluate()),
        scope=scope,
        targets=targets,
        on_row=lambda row: logger.info("one-shot %s: %s", row["level"], {k: row.get(k) for k in dense}),
        **method,
    )
    result = {
        "scope": scope,
        "targets": targets,
        "method": method.get("method", "magnitude"),
        "dense": dense,
        "levels": rows,
    }
    metrics = [k for k in dense if not k.endswith("_loss")] or list(dense)
    print(format_one_shot_table(rows, metrics, dense=dense))
    if write and output_dir:
        write_json(os.path.join(output_dir, EVAL_SPARSITIES_FILE), result)
    return result


def train_and_save(
    trainer, train_dataset, keep_sparsity: Optional[KeepSparsityCallback], model_path=None
) -> dict:
    """The recipes' training block: train (resuming if asked), save the model — with its
    ``sparsity_config.json`` when the mask was kept — and the train metrics and state. Returns the metrics,
    which include how many pruned weights ended non-zero (0 unless something broke the mask)."""
    args = trainer.args
    metrics = trainer.train(resume_from_checkpoint=args.resume_from_checkpoint).metrics
    metrics["train_samples"] = len(train_dataset)
    if keep_sparsity is not None:
        metrics["train_pruned_weights_nonzero"] = keep_sparsity.violations()
    trainer.save_model()
    if keep_sparsity is not None and trainer.is_world_process_zero():
        save_finetuned_sparsity_config(trainer.model, args.output_dir, list(keep_sparsity.masks), model_path)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics
