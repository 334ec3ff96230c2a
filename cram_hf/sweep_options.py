"""What ``cram-hf sweep`` offers — tasks, their metrics, default levels — and its options, as plain Python
importable without torch so that ``cram-hf --help`` does not pay for it. How to prune comes from the pruning
side (:mod:`cram_hf.pruning_spec`); this module only spells it as the CLI's flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

from .choices import EVAL_MASK_SEED
from .pruning_spec import PruningSpec

TASKS = ("mlm", "classification")
METRICS = {"mlm": ("accuracy", "loss", "perplexity"), "classification": ("accuracy", "f1", "loss")}
HIGHER_IS_BETTER = {"accuracy": True, "f1": True, "loss": False, "perplexity": False}
DEFAULT_LEVELS = ("0", "0.5", "0.6", "0.7", "0.8", "0.9", "2:4")


def flag_names(**overrides: str) -> dict:
    """How :meth:`PruningSpec.validate`'s messages name its arguments on the command line: ``--<field>``,
    the calibration data ``--calibration_file``, and ``overrides`` (e.g. ``levels="--sparsity"``)."""
    fields = ("method", "scope", "targets", "damping", "block_size", "num_calibration_samples")
    return {**{f: f"--{f}" for f in fields}, "calibration": "--calibration_file", **overrides}


@dataclass
class SweepOptions:
    """How :func:`cram_hf.sweep.run_sweep` prunes and evaluates. ``levels`` are parsed once, here (at least
    one; sparsities in [0, 1) and/or "N:M" patterns, duplicates dropped); the CLI builds this from its flags.

    Parameters:
        levels: the one-shot levels, e.g. ``["0", "0.5", "0.7", "2:4"]``.
        task: ``"mlm"`` (loss, perplexity, masked-token accuracy on text) or ``"classification"`` (accuracy,
            macro-F1, loss on csv/json with text and label columns).
        validation_file: the evaluation data.
        scope / targets: the ranking (``"global"`` / ``"layer"``) and target regexes, as for ``prune``; ``scope``
            may also list one scope per ``methods`` entry (e.g. magnitude global, SparseGPT per matrix).
        metric: the plotted metric (default: accuracy).
        model_names: labels for the models in tables and plot (default: folder names).
        max_eval_samples, max_seq_length, batch_size: evaluation size.
        line_by_line, text_column, text_pair_column, label_column: how the data is read.
        mlm_probability, seed: the fixed MLM masks every model and level is scored on.
        methods: pruners to compare, one curve per model and method ("magnitude", "wanda", "sparsegpt").
        calibration_file, num_calibration_samples: the calibration text for wanda / sparsegpt (the
            sequences are cut to ``max_seq_length``).

    ``specs`` then maps each method to its :class:`~cram_hf.pruning_spec.PruningSpec`, checked against the
    levels.
    """

    levels: Sequence
    task: str
    validation_file: str
    scope: Union[str, Sequence[str]] = "global"
    targets: Optional[Sequence[str]] = None
    metric: Optional[str] = None
    model_names: Optional[Sequence[str]] = None
    max_eval_samples: Optional[int] = None
    max_seq_length: int = 128
    batch_size: int = 32
    line_by_line: bool = False
    text_column: Optional[str] = None
    text_pair_column: Optional[str] = None
    label_column: str = "label"
    mlm_probability: float = 0.15
    seed: int = EVAL_MASK_SEED
    methods: Sequence[str] = ("magnitude",)
    calibration_file: Optional[str] = None
    num_calibration_samples: int = 128

    def __post_init__(self):
        from .compression import parse_levels

        self.levels = parse_levels(self.levels, "--sparsities", required=True)
        self.methods = list(dict.fromkeys(self.methods or ["magnitude"]))
        scopes = [self.scope] if isinstance(self.scope, str) else list(self.scope)
        if len(scopes) not in (1, len(self.methods)):
            raise ValueError(
                f"--scope: one scope for every method, or one per --methods entry ({len(self.methods)}), got "
                f"{len(scopes)}: {' '.join(scopes)}."
            )
        self.scope = scopes[0] if len(scopes) == 1 else scopes
        self.scopes = dict(zip(self.methods, scopes * len(self.methods) if len(scopes) == 1 else scopes))
        names = flag_names(method="--methods", levels="--sparsities")
        # One spec per curve, each checked once against every level; the sweep prunes with them as they are.
        self.specs = {
            m: PruningSpec(
                m,
                self.scopes[m],
                self.targets,
                num_calibration_samples=self.num_calibration_samples,
            ).validate(self.levels, calibration=self.calibration_file is not None, names=names)
            for m in self.methods
        }
        if self.calibration_file is not None:
            from .calibration import check_calibration_file

            check_calibration_file(self.calibration_file, "--calibration_file")
