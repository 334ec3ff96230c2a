"""One-shot pruning of a model's target weights, the one-shot loop (prune → evaluate → restore at each
level, one record per level, one table), and the sparsity figures of any model.

``prune`` zeroes target weights in place with magnitude Top-K (ranked over all targets together or per
matrix) or an N:M pattern, using the operators of :mod:`cram_hf.compression`; every other parameter and
every kept weight stays bit-for-bit what it was, or with a calibrated pruner (:mod:`cram_hf.calibrated`).
How to prune is a :class:`~cram_hf.pruning_spec.PruningSpec`, and the pruners are the registry
:data:`~cram_hf.pruning_spec.PRUNERS`. Levels are parsed once, where they come in; ``sparsity_report`` reads the
same figures off a model.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .compression import (
    Level,
    check_nm_shape,
    compression_mask_stream,
    level_name,
    level_sparsity,
    parse_level,
)
from .compression import num_pruned as num_pruned_of
from .pruning_spec import PRUNERS, PruningSpec  # noqa: F401 - the registry lives next to prune
from .targets import Patterns, target_names, validate_patterns

logger = logging.getLogger(__name__)


@dataclass
class SparsityReport:
    """What was pruned and how sparse the model is.

    ``per_matrix`` maps each target name to ``{"shape", "zeros", "sparsity"}``. Sparsity counts entries
    equal to zero; model figures count every parameter once (tied weights once).
    """

    method: str  # "magnitude", "n:m", "wanda", "sparsegpt" or "measured" (read off a model, how unknown)
    level: Optional[str]  # "0.7", "2:4"; None when measured
    scope: Optional[str]  # "global" / "layer" for magnitude; None for N:M and measured
    target_patterns: Optional[list[str]]  # the regexes given; None = default rule
    targets: list[str]
    per_matrix: dict[str, dict]
    target_zeros: int
    target_numel: int
    model_zeros: int
    model_numel: int
    num_pruned: int = 0  # entries the mask removed (round(s*n) for magnitude); 0 when measured
    seconds: dict = field(default_factory=dict)  # time spent per phase of prune()
    method_params: dict = field(default_factory=dict)  # calibrated methods: damping, block size, calibration

    @property
    def target_sparsity(self) -> float:
        return self.target_zeros / max(self.target_numel, 1)

    @property
    def model_sparsity(self) -> float:
        return self.model_zeros / max(self.model_numel, 1)

    @property
    def pattern(self) -> Optional[str]:
        return self.level if self.level is not None and ":" in self.level else None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["target_sparsity"] = self.target_sparsity
        d["model_sparsity"] = self.model_sparsity
        return d

    def summary(self) -> str:
        how = {
            "magnitude": f"magnitude {self.level} ({self.scope})",
            "n:m": f"{self.level} pattern",
            "measured": "measured",
        }.get(self.method, f"{self.method} {self.level}" + (f" ({self.scope})" if self.scope else ""))
        return (
            f"{how}: {len(self.targets)} target matrices, {self.target_zeros:,}/{self.target_numel:,} zero "
            f"({100 * self.target_sparsity:.2f} %); whole model {100 * self.model_sparsity:.2f} % zero"
            f" ({self.model_zeros:,}/{self.model_numel:,})"
        )


def _zeros(t: torch.Tensor) -> int:
    return int((t.detach() == 0).sum())


def _measure(model: nn.Module, names: Sequence[str]) -> tuple[dict, int, int, int, int]:
    # One count per parameter (named_parameters() already skips tied duplicates); targets reuse it.
    params = dict(model.named_parameters())
    zeros = {n: _zeros(p) for n, p in params.items()}
    per_matrix = {}
    for n in names:
        p = params[n]
        per_matrix[n] = {"shape": list(p.shape), "zeros": zeros[n], "sparsity": zeros[n] / max(p.numel(), 1)}
    target_zeros = sum(v["zeros"] for v in per_matrix.values())
    target_numel = sum(params[n].numel() for n in names)
    model_zeros = sum(zeros.values())
    model_numel = sum(p.numel() for p in params.values())
    return per_matrix, target_zeros, target_numel, model_zeros, model_numel


def sparsity_report_for(model: nn.Module, names: Sequence[str], **fields) -> SparsityReport:
    """Sparsity figures of ``model`` over the exact parameter ``names`` (no regex matching)."""
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in params]
    if missing:
        raise ValueError(f"targets: the model has no parameter named {missing[0]!r}.")
    per_matrix, tz, tn, mz, mn = _measure(model, names)
    fields.setdefault("method", "measured")
    fields.setdefault("level", None)
    fields.setdefault("scope", None)
    fields.setdefault("target_patterns", None)
    return SparsityReport(
        targets=list(names),
        per_matrix=per_matrix,
        target_zeros=tz,
        target_numel=tn,
        model_zeros=mz,
        model_numel=mn,
        **fields,
    )


def sparsity_report(model: nn.Module, targets: Patterns = None) -> SparsityReport:
    """Per-matrix and overall sparsity of the targets (default rule or regexes) and of the whole model."""
    patterns = validate_patterns(targets, "targets") or None
    names = target_names(model, patterns, name="targets")
    return sparsity_report_for(model, names, target_patterns=patterns)


def _spec_of(spec: Optional[PruningSpec], **loose) -> PruningSpec:
    """``spec``, or the spec the loose keyword arguments of the older signatures describe."""
    if spec is None:
        return PruningSpec(**loose)
    if not isinstance(spec, PruningSpec):
        raise ValueError(f"spec: must be a PruningSpec, got {type(spec).__name__}.")
    given = [k for k, v in loose.items() if v != getattr(_DEFAULT_SPEC, k)]
    if given:
        raise ValueError(f"spec: give the settings in the spec or as {', '.join(given)}, not both.")
    return spec


_DEFAULT_SPEC = PruningSpec()


def _resolved(model, levels, spec, scope, targets, method: dict, levels_name: str):
    """``one_shot``/``pruned``'s arguments, checked once: ``(spec, calibration, progress, levels, names)``,
    the spec given or the one the loose ``scope``, ``targets`` and ``**method`` (prune's keywords) describe."""
    settings = dict(method)
    calibration, progress = settings.pop("calibration", None), settings.pop("progress", False)
    spec = _spec_of(spec, scope=scope, targets=targets, **settings)
    parsed, names = _checked(model, levels, spec, calibration is not None, levels_name)
    return spec, calibration, progress, parsed, names


def validate_pruning(
    model: nn.Module,
    sparsity,
    scope: str = "global",
    targets: Patterns = None,
    *,
    spec: Optional[PruningSpec] = None,
):
    """Check every argument against the model without touching it; return ``(level, target names)``."""
    (level,), names = _checked(
        model, [sparsity], _spec_of(spec, scope=scope, targets=targets), None, "sparsity"
    )
    return level, names


def reachable(level, zeros: int, numel: int) -> bool:
    """Whether pruning can reach ``level`` on targets of ``numel`` weights of which ``zeros`` are zero
    already: pruning never revives a weight, so an unstructured level must zero at least that many (0,
    "prune nothing", and N:M patterns always can)."""
    return isinstance(level, tuple) or level == 0 or num_pruned_of(numel, level) >= zeros


def target_zeros(model: nn.Module, names: Sequence[str]) -> tuple[int, int]:
    """``(zeros, numel)`` of the target matrices ``names``."""
    params = dict(model.named_parameters())
    return sum(_zeros(params[n]) for n in names), sum(params[n].numel() for n in names)


def _checked(
    model: nn.Module,
    levels: Sequence,
    spec: PruningSpec,
    calibration: Optional[bool],
    levels_name: str,
    targets_name: str = "targets",
) -> tuple[list[Level], list[str]]:
    """What every entry point checks, once, before any weight changes: the levels parsed (they come in
    here), the spec's one validation, and that they fit the model. Returns the levels and target names."""
    parsed = [parse_level(v, levels_name) for v in levels]
    spec.validate(parsed, calibration=calibration, names={"levels": levels_name, "targets": targets_name})
    return parsed, _check_fits(model, parsed, spec.targets, levels_name, targets_name)


def _check_fits(
    model: nn.Module, levels: Sequence[Level], targets: Patterns, levels_name: str, targets_name: str
) -> list[str]:
    """The one check that parsed ``levels`` fit ``model``; returns the target names. The targets match, each
    N:M pattern divides every target's input dimension, and no unstructured level is below the zeros the
    targets hold (pruning never revives a weight; a skeleton on the meta device has no values to count)."""
    names = target_names(model, targets, name=targets_name)
    params = dict(model.named_parameters())
    for level in dict.fromkeys(levels):
        for n in names:
            try:
                check_nm_shape(params[n].shape, level, n)
            except ValueError as err:
                raise ValueError(f"{levels_name}: {err}") from None
    unstructured = [lv for lv in dict.fromkeys(levels) if not isinstance(lv, tuple) and lv != 0]
    if not unstructured or any(p.is_meta for p in model.parameters()):
        return names
    zeros, numel = target_zeros(model, names)
    for level in unstructured:
        if not reachable(level, zeros, numel):
            current = zeros / numel
            raise ValueError(
                f"{levels_name}: {level_name(level)} is below the sparsity the target weights already have "
                f"({current:.4f}: {zeros:,} of {numel:,} are zero). Pruning never revives a weight; give a "
                f"level >= {current:.4f}, an N:M pattern, or 0 to leave the model as it is."
            )
    return names


def check_levels_fit(
    model: nn.Module,
    levels: Sequence,
    targets: Patterns = None,
    *,
    levels_name: str = "sparsities",
    targets_name: str = "targets",
) -> None:
    """Check that every level can prune ``model`` (a :func:`~cram_hf.checkpoint.meta_model` skeleton
    does): the targets match, each N:M pattern divides every target's input dimension, and no level is
    below the zeros the targets already hold. The messages name the arguments, so a bad level fails before
    any model is loaded or evaluated."""
    _checked(model, levels, PruningSpec(targets=targets), None, levels_name, targets_name)


@torch.no_grad()
def prune(
    model: nn.Module,
    sparsity,
    spec: Optional[PruningSpec] = None,
    *,
    scope: str = "global",
    targets: Patterns = None,
    method: str = "magnitude",
    calibration=None,
    damping: float = 0.01,
    block_size: int = 128,
    progress: bool = False,
) -> SparsityReport:
    """Prune ``model`` in place, one shot, and return a :class:`SparsityReport`.

    ``sparsity``: a float in ``[0, 1)`` (zero exactly ``round(s*n)`` target weights) or ``"N:M"`` (keep
    ``N`` of every ``M`` consecutive inputs of each ``weight[out, in]``). ``spec``: a :class:`PruningSpec`
    (method, scope, targets, settings), or the same as the keyword arguments ``scope``, ``targets``
    (``None`` for the default rule, Linear weights of the transformer layers, or regexes on parameter names),
    ``method``, ``damping``, ``block_size``.

    ``method`` (:data:`~cram_hf.pruning_spec.PRUNERS`):

    - ``"magnitude"`` (no calibration): the smallest ``|w|``, ranked over all targets together
      (``scope="global"``) or per matrix (``"layer"``); N:M keeps the largest ``|w|`` of each group.
    - ``"wanda"`` / ``"sparsegpt"`` (:mod:`cram_hf.calibrated`): ``calibration`` is an iterable of model input
      batches (see :func:`cram_hf.calibration.calibration_batches`); the model is pruned layer by layer.
      ``scope="layer"``: every matrix gets the sparsity ``s`` (uniform); ``"global"``: each matrix gets the
      count global magnitude ranking would prune in it, then the calibrated method picks which weights.
      ``damping`` (fraction of the mean Hessian diagonal) and ``block_size`` are SparseGPT's.

    Every argument is validated before any weight changes; kept weights and non-targets are untouched by
    magnitude pruning (SparseGPT updates the kept weights of the targets, by design).
    """
    t0 = time.perf_counter()
    spec = _spec_of(spec, scope=scope, targets=targets, method=method, damping=damping, block_size=block_size)
    (level,), names = _checked(model, [sparsity], spec, calibration is not None, "sparsity")
    return _prune_checked(model, names, level, spec, calibration, progress, t0)


def _prune_checked(model, names, level, spec, calibration, progress, t0) -> SparsityReport:
    """:func:`prune` once its arguments are checked: run the spec's pruner and report."""
    pruner = spec.pruner
    batches = list(calibration) if pruner.calibrated else None
    t1 = time.perf_counter()
    # 0 prunes nothing, whatever the method.
    num_pruned = 0 if level == 0 else pruner.function()(model, names, level, spec, batches, progress)
    t2 = time.perf_counter()
    is_nm = isinstance(level, tuple)
    report = sparsity_report_for(
        model,
        names,
        # Magnitude pruning to a pattern has always been recorded as "n:m" (checkpoints, model cards).
        method="n:m" if is_nm and spec.method == "magnitude" else spec.method,
        level=level_name(level),
        scope=None if is_nm else spec.scope,
        target_patterns=list(spec.targets) if spec.targets else None,
        num_pruned=num_pruned,
    )
    report.method_params = {p: getattr(spec, p) for p in pruner.params}
    if batches is not None:
        report.method_params["calibration_batches"] = len(batches)
    report.seconds = {"validate": t1 - t0, "prune": t2 - t1, "total": time.perf_counter() - t0}
    _state_zeros_kept(report, level)
    return report


def prune_magnitude(model, names, level, spec, calibration=None, progress=False) -> int:
    """The ``"magnitude"`` pruner (:class:`~cram_hf.pruning_spec.Pruner`): the masks of
    :func:`~cram_hf.compression.compression_masks`, applied in place one matrix at a time (a bool mask of
    every target at once would cost a quarter of their float32 bytes)."""
    params = dict(model.named_parameters())
    tensors = [params[n] for n in names]
    num_pruned = 0
    for p, keep in zip(tensors, compression_mask_stream(tensors, level, spec.scope)):
        drop = ~keep
        num_pruned += int(drop.sum())
        # masked_fill writes exact +0.0 where pruned and leaves kept entries bit-identical.
        p.data.masked_fill_(drop, 0)
    return num_pruned


def _state_zeros_kept(report: SparsityReport, level) -> None:
    """Say so when the targets end sparser than the level: zeros they held before were kept (never revived),
    e.g. a matrix already sparser than a per-matrix level, or groups with more zeros than N:M asks for."""
    s = level_sparsity(level)
    # The larger of the global and the per-matrix count: the two roundings differ by a few weights.
    level_zeros = max(
        num_pruned_of(report.target_numel, s),
        sum(num_pruned_of(math.prod(m["shape"]), s) for m in report.per_matrix.values()),
    )
    if report.target_zeros > level_zeros:
        logger.warning(
            "%s: %s target weights were zero beyond what the level prunes (zeros are never revived): the targets "
            "are %.2f %% sparse.",
            level_name(level),
            f"{report.target_zeros - level_zeros:,}",
            100 * report.target_sparsity,
        )


def satisfies_nm(weight: torch.Tensor, n: int, m: int) -> bool:
    """True when every group of ``m`` consecutive inputs of ``weight[out, in]`` has at most ``n`` nonzeros."""
    if weight.dim() != 2 or weight.shape[1] % m:
        return False
    nonzero = (weight.detach() != 0).reshape(-1, m).sum(1)
    return bool((nonzero <= n).all())


@contextlib.contextmanager
def pruned(
    model: nn.Module,
    level,
    scope: str = "global",
    targets: Patterns = None,
    *,
    spec: Optional[PruningSpec] = None,
    **method,
):
    """Prune ``model`` in place for the duration of the block, then put every weight back bit-exactly.

    Cheaper than a deep copy (only the target matrices are saved — the only weights any method changes) and
    a Trainer keeps evaluating the very module it wraps. ``spec`` / ``method``: as for :func:`prune`
    (``method``, ``damping``, ``block_size``; and ``calibration``, ``progress``). Yields the
    :class:`SparsityReport`.
    """
    t0 = time.perf_counter()
    spec, calibration, progress, (level,), names = _resolved(
        model, [level], spec, scope, targets, method, "sparsity"
    )
    with _restoring(model, names):
        yield _prune_checked(model, names, level, spec, calibration, progress, t0)


@contextlib.contextmanager
def _restoring(model: nn.Module, names: Sequence[str]):
    params = dict(model.named_parameters())
    saved = {n: params[n].detach().clone() for n in names}
    try:
        yield
    finally:
        with torch.no_grad():
            for n, value in saved.items():
                params[n].copy_(value)


def one_shot(
    model: nn.Module,
    levels: Sequence,
    evaluate: Callable[[nn.Module], dict],
    *,
    scope: str = "global",
    targets: Patterns = None,
    label: Optional[str] = None,
    on_row: Optional[Callable[[dict], None]] = None,
    spec: Optional[PruningSpec] = None,
    **method,
) -> list[dict]:
    """The one-shot loop: for each level, prune ``model`` in place, call ``evaluate(model)`` (a dict of
    metrics), and put every weight back bit-exactly. Returns one record per level::

        {"model": label, "level": "0.7", "pattern": None, "sparsity": 0.7, "achieved_sparsity": ...,
         "model_sparsity": ..., <metric>: ..., "prune_seconds": ..., "eval_seconds": ...}

    (``pattern`` is ``"2:4"`` for N:M levels; ``method`` is added when ``spec`` or ``method=`` is given).
    ``spec`` / ``method``: as for :func:`prune` (``method``, ``damping``, ``block_size``; and ``calibration``,
    ``progress``). Every level is checked against the model before the first is evaluated, once. ``on_row``
    sees each record as soon as it exists.
    """
    named_method = spec is not None or "method" in method
    spec, calibration, progress, parsed, names = _resolved(
        model, levels, spec, scope, targets, method, "levels"
    )
    # The checks hold at every level: each starts from the model as it was.
    rows = []
    for level in parsed:
        t0 = time.perf_counter()
        with _restoring(model, names):
            report = _prune_checked(model, names, level, spec, calibration, progress, t0)
            t1 = time.perf_counter()
            metrics = evaluate(model)
            t2 = time.perf_counter()
        name = level_name(level)
        rows.append(
            {
                "model": label,
                **({"method": spec.method} if named_method else {}),
                "level": name,
                "pattern": name if isinstance(level, tuple) else None,
                "sparsity": level_sparsity(level),
                "achieved_sparsity": report.target_sparsity,
                "model_sparsity": report.model_sparsity,
                **metrics,
                "prune_seconds": t1 - t0,
                "eval_seconds": t2 - t1,
            }
        )
        if on_row is not None:
            on_row(rows[-1])
    return rows


def one_shot_table_header(metrics: Sequence[str], with_model: bool = False) -> str:
    """The header lines of the one-shot table (Markdown), for printing rows as they come."""
    cols = (["model"] if with_model else []) + ["level", "target sparsity"] + list(metrics)
    return "| " + " | ".join(cols) + " |\n|" + "---|" * len(cols)


def one_shot_table_row(row: dict, metrics: Sequence[str], with_model: bool = False) -> str:
    """One record of :func:`one_shot` (or a dense row: ``achieved_sparsity`` None) as a table row."""
    sparsity = row.get("achieved_sparsity")
    cells = ([str(row.get("model"))] if with_model else []) + [
        str(row["level"]),
        "—" if sparsity is None else f"{sparsity:.4f}",
    ]
    cells += [_metric_cell(m, row.get(m)) for m in metrics]
    return "| " + " | ".join(cells) + " |"


def _metric_cell(metric: str, value) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    # "kept": a share of the dense metric, read as a percentage.
    return f"{100 * value:.1f} %" if metric == "kept" else f"{value:.4f}"


def format_one_shot_table(
    rows: Sequence[dict], metrics: Sequence[str], dense: Optional[dict] = None, with_model: bool = False
) -> str:
    """The one table of one-shot results: ``dense`` metrics first (if given), then one row per record."""
    lines = [one_shot_table_header(metrics, with_model)]
    if dense is not None:
        lines.append(
            one_shot_table_row({"level": "dense", "achieved_sparsity": None, **dense}, metrics, with_model)
        )
    lines += [one_shot_table_row(r, metrics, with_model) for r in rows]
    return "\n".join(lines)
