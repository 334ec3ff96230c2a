"""The recipes' one-shot table after fine-tuning: :func:`evaluate_sparsities` prunes a copy of the model at each
``--eval_sparsities`` level (:func:`cram_hf.pruning.one_shot`), evaluates it, prints the table and writes
``eval_sparsities.json``."""

from __future__ import annotations

import logging
import os
from typing import Callable, Optional, Sequence

from torch import nn

from cram_hf.compression import level_name, parse_levels
from cram_hf.files import write_json
from cram_hf.pruning import format_one_shot_table, one_shot, reachable, target_zeros
from cram_hf.pruning_spec import PruningSpec
from cram_hf.targets import target_names

logger = logging.getLogger(__name__)

EVAL_SPARSITIES_FILE = "eval_sparsities.json"
# Trainer bookkeeping that is not a quality metric; left out of the one-shot table.
_NOT_METRICS = (
    "runtime",
    "samples_per_second",
    "steps_per_second",
    "epoch",
    "model_preparation_time",
    "_samples",
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
    spec: Optional[PruningSpec] = None,
    calibration=None,
    output_dir: Optional[str] = None,
    dense_metrics: Optional[dict] = None,
    write: bool = True,
) -> dict:
    """One-shot results after fine-tuning (:func:`cram_hf.pruning.one_shot`: prune in place with ``spec``,
    ``evaluate()``, restore; default: global magnitude on the default targets): prints the table and writes ``eval_sparsities.json`` in ``output_dir``.
    ``calibration``: the batches of a calibrated pruner. ``dense_metrics`` saves re-evaluating the unpruned
    model."""
    spec = spec if spec is not None else PruningSpec()
    dense = quality_metrics(dense_metrics if dense_metrics is not None else evaluate())
    zeros, numel = target_zeros(model, target_names(model, spec.targets, name="cram_targets"))
    kept, skipped = [], []
    for level in parse_levels(levels, "eval_sparsities"):
        (kept if reachable(level, zeros, numel) else skipped).append(level)
    if skipped:  # after training, a table without them beats no table
        logger.warning(
            "eval_sparsities: %s skipped, below the sparsity the fine-tuned model has (%.4f); pruning never "
            "revives a weight.",
            ", ".join(level_name(lv) for lv in skipped),
            zeros / numel,
        )
    rows = one_shot(
        model,
        kept,
        lambda _: quality_metrics(evaluate()),
        spec=spec,
        calibration=calibration,
        on_row=lambda row: logger.info("one-shot %s: %s", row["level"], {k: row.get(k) for k in dense}),
    )
    result = {
        "scope": spec.scope,
        "targets": list(spec.targets) if spec.targets is not None else None,
        "method": spec.method,
        "dense": dense,
        "levels": rows,
    }
    metrics = [k for k in dense if not k.endswith("_loss")] or list(dense)
    print(format_one_shot_table(rows, metrics, dense=dense))
    if write and output_dir:
        write_json(os.path.join(output_dir, EVAL_SPARSITIES_FILE), result)
    return result


def finetune_one_shot_table(
    evaluate: Callable[[], dict], trainer, sparse_args, training_args, tokenizer, max_seq_length: int, dense
) -> dict:
    """The fine-tuning recipes' table after ``--do_eval``: ``trainer.model`` at ``--eval_sparsities``, pruned
    as ``--eval_pruning_method`` & co. say, on ``--cram_targets`` ranked by ``--eval_sparsity_scope``
    (``sparse_args``: the recipe's :class:`~recipe_arguments.SparseTransferArguments`)."""
    return evaluate_sparsities(
        evaluate,
        trainer.model,
        sparse_args.eval_sparsities,
        output_dir=training_args.output_dir,
        dense_metrics=dense,
        write=trainer.is_world_process_zero(),
        **sparse_args.one_shot_pruning(
            tokenizer, max_seq_length, training_args.cram_targets, sparse_args.eval_sparsity_scope
        ),
    )
