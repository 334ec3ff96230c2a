"""What the downstream fine-tuning recipes (``recipes/run_glue.py``, ``recipes/run_qa.py``) share.

* :class:`SparseTransferArguments` — ``--keep_sparsity`` and ``--eval_sparsities``;
* :class:`FinetuneConfig` — ``CrAMConfig`` whose CrAM is *off* unless ``--cram_rho`` or ``--cram_sparsities``
  is given (``CrAMConfig`` itself defaults to CrAM on, which suits pre-training, not a plain fine-tune);
* :func:`setup_keep_sparsity` — the mask-keeping callback when the model is sparse;
* :func:`evaluate_sparsities` — one-shot pruning of the fine-tuned model at several levels, evaluated, as a
  printed table and ``eval_sparsities.json``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass, field, fields
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .arguments import none_to_empty
from .compression import SCOPES, level_name, level_sparsity, parse_level
from .config import DEFAULT_SPARSITIES, CrAMConfig
from .sparse_finetune import KeepSparsityCallback, keep_sparsity_callback
from .targets import Patterns

logger = logging.getLogger(__name__)

EVAL_SPARSITIES_FILE = "eval_sparsities.json"
# Trainer bookkeeping that is not a quality metric; left out of the one-shot table.
_CRAM_DEFAULT_RHO = {f.name: f.default for f in fields(CrAMConfig)}["cram_rho"]
_NOT_METRICS = ("runtime", "samples_per_second", "steps_per_second", "epoch", "model_preparation_time", "_samples")


@dataclass
class SparseTransferArguments:
    """Sparse-transfer flags shared by the fine-tuning recipes."""

    keep_sparsity: Optional[bool] = field(
        default=None,
        metadata={
            "help": "Hold the zeros of a pruned model at exactly zero while fine-tuning. Default: on when the model "
            "is sparse (a sparsity_config.json next to it, or >= 1%% exact zeros in its target matrices); "
            "'--keep_sparsity false' turns it off, '--keep_sparsity true' forces it."
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
        if isinstance(self.eval_sparsities, (str, float, int)):
            self.eval_sparsities = [self.eval_sparsities]
        self.eval_sparsities = none_to_empty(self.eval_sparsities)
        self.eval_sparsities = [level_name(parse_level(v, "eval_sparsities")) for v in self.eval_sparsities or []]
        if self.eval_sparsity_scope not in SCOPES:
            raise ValueError(f"eval_sparsity_scope: must be one of {SCOPES}, got {self.eval_sparsity_scope!r}.")


@dataclass
class FinetuneConfig(CrAMConfig):
    """``CrAMConfig`` for fine-tuning: CrAM is off unless asked for.

    Neither ``cram_rho`` nor ``cram_sparsities`` given: plain fine-tuning (ρ = 0, no levels). Only one given:
    the other takes ``CrAMConfig``'s default (ρ = 0.05, levels 0.5/0.6/0.7/0.8), so ``--cram_rho 0.05`` or
    ``--cram_sparsities 0.5 0.7 2:4`` alone switches CrAM+ on.
    """

    cram_rho: Optional[float] = field(
        default=None,
        metadata={"help": "CrAM perturbation radius ρ >= 0. Not given: CrAM off, unless --cram_sparsities is given "
                          "(then ρ = 0.05)."},
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
        self.cram_sparsities = none_to_empty(self.cram_sparsities)  # "--cram_sparsities none": explicitly none
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


def setup_keep_sparsity(model: nn.Module, model_path, args: SparseTransferArguments,
                        targets: Patterns = None) -> Optional[KeepSparsityCallback]:
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


def save_sparsity_config(model: nn.Module, output_dir: str, callback: KeepSparsityCallback, model_path=None) -> dict:
    """Write ``sparsity_config.json`` for a model fine-tuned with its mask kept, so the output folder is a sparse
    checkpoint like its input (``load_sparse`` verifies it). How it was pruned is carried over from the input's
    config when there is one; the figures are measured on the fine-tuned weights."""
    from .checkpoint import SPARSITY_CONFIG, sparsity_config
    from .pruning import sparsity_report_for
    from .sparse_finetune import read_sparsity_config

    source = read_sparsity_config(model_path) or {}
    how = {k: source.get(k) for k in ("level", "scope")}
    how["method"] = source.get("method") or "measured"
    if how["method"] == "measured":
        how["level"] = how["scope"] = None
    report = sparsity_report_for(model, list(callback.masks), **how)
    config = sparsity_config(report, base_model=str(model_path) if model_path is not None else None)
    config["fine_tuned_with_mask_kept"] = True
    write_json(os.path.join(output_dir, SPARSITY_CONFIG), config)
    return config


@contextlib.contextmanager
def pruned(model: nn.Module, level, scope: str = "global", targets: Patterns = None):
    """Prune ``model`` in place for the duration of the block, then put every weight back bit-exactly.

    Cheaper than a deep copy (only the target matrices are saved) and the Trainer keeps evaluating the very
    module it wraps. Yields the :class:`~cram_hf.pruning.SparsityReport`.
    """
    from .pruning import prune, validate_pruning

    _, names = validate_pruning(model, level, scope, targets)
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names}
    try:
        yield prune(model, level, scope=scope, targets=targets)
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)


def quality_metrics(metrics: dict) -> dict:
    """Drop the Trainer's timing and bookkeeping entries."""
    return {
        k: v for k, v in metrics.items()
        if isinstance(v, (int, float)) and not k.removesuffix("_mm").endswith(_NOT_METRICS)  # _mm: MNLI mismatched
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
) -> dict:
    """One-shot results after fine-tuning: for each level, prune ``model`` (in place, restored afterwards),
    call ``evaluate()`` and keep its metrics. Prints a table and writes ``eval_sparsities.json`` in
    ``output_dir``. ``dense_metrics`` saves re-evaluating the unpruned model."""
    dense = quality_metrics(dense_metrics if dense_metrics is not None else evaluate())
    rows = []
    for level in levels:
        with pruned(model, level, scope, targets) as report:
            metrics = quality_metrics(evaluate())
        rows.append({
            "level": report.level,
            "requested_sparsity": level_sparsity(parse_level(level)),
            "achieved_sparsity": report.target_sparsity,
            "metrics": metrics,
        })
        logger.info("one-shot %s: %s", report.level, metrics)
    result = {"scope": scope, "targets": targets, "dense": dense, "levels": rows}
    print(format_table(result))
    if write and output_dir:
        write_json(os.path.join(output_dir, EVAL_SPARSITIES_FILE), result)
    return result


def format_table(result: dict) -> str:
    """Markdown table: one row per level (dense first), one column per metric."""
    keys = [k for k in result["dense"] if not k.endswith("_loss")] or list(result["dense"])
    header = "| level | target sparsity | " + " | ".join(keys) + " |"
    lines = [header, "|" + "---|" * (2 + len(keys))]
    lines.append("| dense | — | " + " | ".join(_fmt(result["dense"].get(k)) for k in keys) + " |")
    for row in result["levels"]:
        cells = " | ".join(_fmt(row["metrics"].get(k)) for k in keys)
        lines.append(f"| {row['level']} | {row['achieved_sparsity']:.4f} | {cells} |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "—" if value is None else f"{value:.4f}"


def _atomic_write(path: str, text: str) -> None:
    """Write ``text`` to a temporary file next to ``path``, then move it into place, so a reader never sees
    half a file. The file gets the usual permissions (``mkstemp`` would leave it private)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def write_json(path: str, obj) -> None:
    """``obj`` as indented JSON at ``path``, written atomically."""
    _atomic_write(path, json.dumps(obj, indent=2, default=float) + "\n")


def write_text(path: str, text: str) -> None:
    """``text`` at ``path``, written atomically."""
    _atomic_write(path, text)


def train_and_save(trainer, train_dataset, keep_sparsity: Optional[KeepSparsityCallback], model_path=None) -> dict:
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
        save_sparsity_config(trainer.model, args.output_dir, keep_sparsity, model_path)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics
