"""How to prune, declared once: the registry of one-shot pruners and :class:`PruningSpec`, the value that
names one of them with its settings.

``prune``, ``one_shot``, ``validate_pruning``, the sweep and the CLI all take (or build) a ``PruningSpec`` and
check it with its one :meth:`~PruningSpec.validate`. ``cram_hf.choices.METHODS`` / ``CALIBRATED`` and the
CLI's ``--method`` choices are read off :data:`PRUNERS`, so a pruner added there is offered everywhere.

Plain Python without torch: the CLI offers the choices without paying for the import (a pruner's function
is named by ``"module:function"`` and imported when it first prunes).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable, Mapping, Optional, Sequence, Union

from .choices import SCOPES

LEVEL_KINDS = (
    "sparsity",
    "n:m",
)  # a float in [0, 1) / an (N, M) pattern, as cram_hf.compression.parse_level gives


def level_kind(level) -> str:
    """``"n:m"`` for an ``(N, M)`` pattern, ``"sparsity"`` for a float (a level parsed already)."""
    return "n:m" if isinstance(level, tuple) else "sparsity"


@dataclass(frozen=True)
class Pruner:
    """One entry of :data:`PRUNERS`.

    ``prune(model, names, level, spec, calibration, progress) -> int`` zeroes, in place, the target matrices
    ``names`` of ``model`` to ``level`` (already parsed and checked to fit the model) and returns how many
    entries the level removes; ``calibration`` is the list of batches for a calibrated pruner, else ``None``.
    It may be the function itself or ``"module:function"``.
    """

    prune: Union[str, Callable]
    help: str  # one line for the CLI's --method help
    calibrated: bool = False  # needs calibration batches
    scopes: tuple[str, ...] = SCOPES  # the ``scope`` values it takes
    level_kinds: tuple[str, ...] = LEVEL_KINDS
    params: tuple[str, ...] = ()  # the PruningSpec fields it reads, recorded in the report's method_params

    def function(self) -> Callable:
        if callable(self.prune):
            return self.prune
        module, name = self.prune.split(":")
        return getattr(importlib.import_module(module), name)


# The one place a pruner is declared (see "Adding a pruner" in CONTRIBUTING.md).
PRUNERS: dict[str, Pruner] = {
    "magnitude": Pruner(
        "cram_hf.pruning:prune_magnitude",
        "the smallest |w| (ranked over all targets or per matrix; N:M: per group), no data needed",
    ),
    "wanda": Pruner(
        "cram_hf.calibrated:prune_layer_by_layer",
        "the lowest |w| times input norm per row, on calibration data",
        calibrated=True,
    ),
    "sparsegpt": Pruner(
        "cram_hf.calibrated:prune_layer_by_layer",
        "OBS reconstruction of each layer's output, on calibration data",
        calibrated=True,
        params=("damping", "block_size"),
    ),
}


def calibrated_methods() -> tuple[str, ...]:
    return tuple(name for name, pruner in PRUNERS.items() if pruner.calibrated)


@dataclass(frozen=True)
class PruningSpec:
    """How to prune: which pruner, ranked how, on which matrices, with which settings. The level is not part
    of it (a sweep prunes one spec at many levels).

    Parameters:
        method: a name of :data:`PRUNERS` ("magnitude", "wanda", "sparsegpt").
        scope: ``"global"`` (rank all targets together) or ``"layer"`` (each matrix on its own); calibrated
            pruners get their per-matrix counts from it. Ignored at N:M levels.
        targets: regexes on parameter names, ``None`` for the default rule (Linear weights of the layers).
        damping, block_size: SparseGPT's Hessian damping (a fraction of its mean diagonal) and the columns
            of its lazy-update blocks.
        num_calibration_samples: how many samples the CLI and the sweep draw for a calibrated pruner.
    """

    method: str = "magnitude"
    scope: str = "global"
    targets: Optional[tuple[str, ...]] = None
    damping: float = 0.01
    block_size: int = 128
    num_calibration_samples: int = 128

    def __post_init__(self):
        # A list of regexes, as every caller has passed them, kept hashable.
        if self.targets is not None and not isinstance(self.targets, tuple):
            targets = [self.targets] if isinstance(self.targets, str) else list(self.targets)
            object.__setattr__(self, "targets", tuple(targets))

    @property
    def pruner(self) -> Pruner:
        return PRUNERS[self.method]

    def validate(
        self,
        levels: Sequence = (),
        *,
        calibration: Optional[bool] = None,
        names: Mapping[str, str] = {},
    ) -> PruningSpec:
        """The one check of a spec, before any model work; returns the spec. One-line errors name the
        argument, say what was wrong and what is allowed.

        ``levels``: levels already parsed (:func:`cram_hf.compression.parse_level`) that the spec will prune
        at; the method must take their kind. ``calibration``: whether calibration data is given (``None``:
        not known yet). ``names``: how the caller spells each argument (``"method"``, ``"scope"``,
        ``"targets"``, ``"damping"``, ``"block_size"``, ``"num_calibration_samples"``, ``"levels"``,
        ``"calibration"``) in its messages; the CLI passes its flags."""

        def name(key: str) -> str:
            return names.get(key, key)

        if self.method not in PRUNERS:
            raise ValueError(f"{name('method')}: must be one of {tuple(PRUNERS)}, got {self.method!r}.")
        pruner = self.pruner
        if self.scope not in pruner.scopes:
            raise ValueError(
                f"{name('scope')}: must be one of {pruner.scopes} for method {self.method}, "
                f"got {self.scope!r}."
            )
        if isinstance(self.damping, bool) or not (
            isinstance(self.damping, (int, float)) and self.damping >= 0
        ):
            raise ValueError(f"{name('damping')}: must be a number >= 0, got {self.damping!r}.")
        for key in ("block_size", "num_calibration_samples"):
            value = getattr(self, key)
            if isinstance(value, bool) or not (isinstance(value, int) and value >= 1):
                raise ValueError(f"{name(key)}: must be a positive integer, got {value!r}.")
        from .targets import validate_patterns  # imports torch: not at --help

        validate_patterns(self.targets, name("targets"))
        for level in levels:
            if level_kind(level) not in pruner.level_kinds:
                shown = f"{level[0]}:{level[1]}" if isinstance(level, tuple) else f"{level}"
                raise ValueError(
                    f"{name('levels')}: method {self.method} prunes {' / '.join(pruner.level_kinds)} levels, "
                    f"not {shown}."
                )
        if calibration is False and pruner.calibrated:
            others = [m for m, p in PRUNERS.items() if not p.calibrated]
            raise ValueError(
                f"{name('calibration')}: {name('method')} {self.method} needs calibration data "
                f"({', '.join(others)} {'does' if len(others) == 1 else 'do'} not)."
            )
        return self
