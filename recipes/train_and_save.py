"""The recipes' training block, shared by the three: the mask-keeping callback for a sparse model
(:func:`setup_keep_sparsity`), then :func:`train_and_save` — train, save the model with its
``sparsity_config.json`` when a mask was kept or made, and the train metrics and state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from torch import nn

from cram_hf.checkpoint import save_finetuned_sparsity_config
from cram_hf.gradual import GradualPruningCallback
from cram_hf.sparse_finetune import KeepSparsityCallback, keep_sparsity_callback
from cram_hf.targets import Patterns
from gradual_pruning import gradual_record

if TYPE_CHECKING:
    from recipe_arguments import SparseTransferArguments


def setup_keep_sparsity(
    model: nn.Module, model_path, args: SparseTransferArguments, targets: Patterns = None
) -> Optional[KeepSparsityCallback]:
    """The mask-keeping callback for ``model`` (loaded from ``model_path``), per ``--keep_sparsity``."""
    return keep_sparsity_callback(model, model_path, targets=targets, keep=args.keep_sparsity)


def train_and_save(
    trainer,
    train_dataset,
    keep_sparsity: Optional[KeepSparsityCallback],
    model_path=None,
    gradual: Optional[GradualPruningCallback] = None,
    resume: Optional[str] = None,
) -> dict:
    """The recipes' training block: train (resuming from ``--resume_from_checkpoint``, else from ``resume``,
    the checkpoint :func:`~preflight.last_checkpoint` found), save the model — with its
    ``sparsity_config.json`` when the mask was kept or gradual pruning made one — and the train metrics and
    state. Returns the metrics, which include how many pruned weights ended non-zero (0 unless something broke
    the mask)."""
    metrics = trainer.train(resume_from_checkpoint=trainer.args.resume_from_checkpoint or resume).metrics
    metrics["train_samples"] = len(train_dataset)
    metrics.update(pruning_metrics(keep_sparsity, gradual))
    trainer.save_model()
    save_sparsity_record(trainer, keep_sparsity, gradual, model_path)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    return metrics


def save_sparsity_record(
    trainer,
    keep_sparsity: Optional[KeepSparsityCallback],
    gradual: Optional[GradualPruningCallback] = None,
    model_path=None,
) -> Optional[dict]:
    """After ``trainer.save_model()``: the saved model's ``sparsity_config.json`` when its mask was kept (a
    sparse input) and/or made (gradual pruning, recorded as such), on the main process; else nothing."""
    names = list(keep_sparsity.masks) if keep_sparsity is not None else []
    pruned = None
    if gradual is not None and gradual.report is not None:
        names += [n for n in gradual.report.targets if n not in names]
        pruned = gradual_record(gradual)
    if not names or not trainer.is_world_process_zero():
        return None
    return save_finetuned_sparsity_config(
        trainer.model, trainer.args.output_dir, names, model_path, pruned=pruned
    )


def pruning_metrics(
    keep_sparsity: Optional[KeepSparsityCallback], gradual: Optional[GradualPruningCallback] = None
) -> dict:
    """How many pruned weights ended non-zero (0 unless something broke the mask) and, with gradual pruning,
    the target sparsity reached."""
    held = [c for c in (keep_sparsity, gradual.keep if gradual is not None else None) if c is not None]
    metrics = {"train_pruned_weights_nonzero": sum(c.violations() for c in held)} if held else {}
    if gradual is not None:
        metrics["train_gradual_sparsity"] = gradual.sparsity
    return metrics
