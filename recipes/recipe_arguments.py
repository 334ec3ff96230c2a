"""The argument dataclasses the recipes share, beside each recipe's own ``DataTrainingArguments`` (and
``run_mlm_cram.py``'s own ``ModelArguments``, which can also start from scratch):

* :class:`ModelArguments` — the model, config and tokenizer of the fine-tuning recipes;
* :class:`EvalPruningArguments` — how the one-shot table prunes (``--eval_pruning_method`` & co.);
* :class:`SparseTransferArguments` — ``--keep_sparsity`` and ``--eval_sparsities``, for the fine-tuning recipes;
* :class:`RecipeConfig` — ``CrAMConfig`` with ``--overwrite_output_dir`` and an ``--output_dir`` checked while
  parsing;
* :class:`FinetuneConfig` — ``RecipeConfig`` whose CrAM is *off* unless ``--cram_rho`` or ``--cram_sparsities``
  is given (``CrAMConfig`` itself defaults to CrAM on, which suits pre-training, not a plain fine-tune);
* :func:`check_sample_limits`, for the ``max_*_samples`` fields of the data arguments;
* :func:`parse_finetune_args`, the command line of a fine-tuning recipe.

``--gradual_sparsity`` & co. are in :mod:`gradual_pruning`, with what they build.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

from transformers import HfArgumentParser

from command_line import parse_args as parse_recipe_args
from cram_hf.calibration import check_calibration_file
from cram_hf.checkpoint import check_model_source, check_writable_dir
from cram_hf.compression import Level, level_name, parse_levels
from cram_hf.config import DEFAULT_SPARSITIES, CrAMConfig
from cram_hf.pruning_spec import PRUNERS, PruningSpec
from gradual_pruning import GradualPruningArguments
from preflight import check_model_path, is_complete_checkpoint

_CRAM_DEFAULT_RHO = {f.name: f.default for f in fields(CrAMConfig)}["cram_rho"]
# How the one-shot table's flags spell the settings of its PruningSpec, for the spec's messages.
EVAL_PRUNING_NAMES = {
    "method": "eval_pruning_method",
    "scope": "eval_sparsity_scope",
    "targets": "cram_targets",
    "num_calibration_samples": "eval_num_calibration_samples",
    "levels": "eval_sparsities",
    "calibration": "eval_calibration_file",
}


@dataclass
class ModelArguments:
    """Which model/config/tokenizer to fine-tune from."""

    model_name_or_path: str = field(
        metadata={"help": "Path or Hub id of the (possibly sparse) pretrained model."}
    )
    config_name: Optional[str] = field(
        default=None, metadata={"help": "Config name or path, if not the model's."}
    )
    tokenizer_name: Optional[str] = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the model's."}
    )
    cache_dir: Optional[str] = field(default=None, metadata={"help": "Where to store downloads."})
    model_revision: str = field(default="main", metadata={"help": "Model version (branch, tag or commit)."})
    token: Optional[str] = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the Hub."})

    def __post_init__(self):
        check_model_source(self.model_name_or_path, "model_name_or_path")
        check_model_path(self.model_name_or_path)


@dataclass
class EvalPruningArguments:
    """How the recipes' one-shot table (``--eval_sparsities``) prunes: magnitude, or a calibrated pruner."""

    eval_pruning_method: str = field(
        default="magnitude",
        metadata={
            "help": "Pruner of the one-shot table: magnitude (no data), wanda or sparsegpt (need "
            "--eval_calibration_file).",
            "choices": list(PRUNERS),
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
        self.check_pruning()

    def pruning_spec(self, targets=None, scope: str = "global") -> PruningSpec:
        """How the one-shot table prunes: ``targets`` and ``scope`` are the recipe's (``--cram_targets``, and
        ``--eval_sparsity_scope`` or ``--cram_scope``), the rest these flags."""
        return PruningSpec(
            self.eval_pruning_method,
            scope,
            targets,
            num_calibration_samples=self.eval_num_calibration_samples,
        )

    def check_pruning(self, levels: Sequence[Level] = (), scope: str = "global") -> None:
        """The spec's one check, in these flags' names, at parse time; ``--cram_targets`` is the training
        config's to check."""
        spec = self.pruning_spec(scope=scope).validate(
            levels, calibration=self.eval_calibration_file is not None, names=EVAL_PRUNING_NAMES
        )
        if spec.pruner.calibrated:
            check_calibration_file(self.eval_calibration_file, "eval_calibration_file")

    def one_shot_pruning(self, tokenizer, max_seq_length: int, targets, scope: str) -> dict:
        """``spec`` (and ``calibration`` batches, for a calibrated pruner) for :func:`evaluate_sparsities`."""
        spec = self.pruning_spec(targets, scope)
        if not spec.pruner.calibrated:
            return {"spec": spec}
        from cram_hf.calibration import calibration_batches

        batches = calibration_batches(
            self.eval_calibration_file,
            tokenizer,
            num_samples=spec.num_calibration_samples,
            max_seq_length=max_seq_length,
        )
        return {"spec": spec, "calibration": batches}


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
    eval_sparsities: Optional[list[str]] = field(
        default=None,
        metadata={
            "help": "After fine-tuning, prune a copy of the model one-shot at each of these levels (sparsities in "
            "[0, 1) and/or N:M patterns such as 2:4) and evaluate it; writes eval_sparsities.json. Default: the "
            "run's CrAM levels (none without CrAM); 'none' for none.",
            "nargs": "*",
        },
    )
    eval_sparsity_scope: str = field(
        default="global", metadata={"help": "Magnitude ranking for --eval_sparsities: 'global' or 'layer'."}
    )

    def __post_init__(self):
        # Not super().__post_init__(): the one check of the spec wants this class's levels and scope too.
        levels = parse_levels(self.eval_sparsities, "eval_sparsities")
        if self.eval_sparsities is not None:
            self.eval_sparsities = [level_name(v) for v in levels]
        self.check_pruning(levels, self.eval_sparsity_scope)


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
        resume = self.resume_from_checkpoint
        if isinstance(resume, str) and os.path.isdir(resume) and not is_complete_checkpoint(resume):
            raise ValueError(
                f"resume_from_checkpoint: {resume!r} is incomplete (no trainer_state.json: its save was "
                "interrupted); give an earlier checkpoint-N of that run."
            )


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


def check_sample_limits(args) -> None:
    """Every ``max_*_samples`` field of a recipe's data arguments is unset or a positive integer: 0 would
    train on no example (the sampler fails mid-run) or evaluate on none."""
    for f in fields(args):
        value = getattr(args, f.name)
        if f.name.startswith("max_") and f.name.endswith("_samples") and value is not None and value < 1:
            raise ValueError(
                f"{f.name}: must be a positive number of examples, got {value}; leave it out for all."
            )


def parse_finetune_args(model_arguments, data_arguments, argv=None):
    """A fine-tuning recipe's flags, or a YAML/JSON config file (same names) optionally followed by flags that
    override it: ``(model_args, data_args, sparse_args, gradual_args, training_args)``."""
    parser = HfArgumentParser(
        (model_arguments, data_arguments, SparseTransferArguments, GradualPruningArguments, FinetuneConfig)
    )
    return parse_recipe_args(parser, argv)
