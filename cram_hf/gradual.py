"""Gradual magnitude pruning (GMP) during training: the baseline CrAM is compared with.

The cubic schedule of Zhu & Gupta (2017), as in sparseml's GMP modifier: with ``s_i`` the initial sparsity,
``s_f`` the target and the window ``[t0, t1]`` (``start_step``, ``end_step``), the sparsity at optimizer
step ``t`` is::

    s_t = 0                                                   t < t0   (dense, nothing pruned)
    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (t1 - t0))^3    t0 <= t <= t1
    s_t = s_f                                                 t > t1

It rises fast at first, while many weights are still redundant, and flattens towards the target, so the
network has time to recover from the last, most damaging, pruning steps.

:class:`GradualPruningCallback` prunes at the *events* ``t0, t0 + k, t0 + 2k, ... <= t1`` (``k`` =
``update_every``) and always at ``t1``, so the final sparsity is exactly the target from step ``t1`` on.
Each event zeroes the ``round(s_t·n)`` smallest-magnitude target weights with :func:`cram_hf.pruning.prune`
(over all targets together with ``scope="global"``, per matrix with ``"layer"``). Weights pruned earlier
are exact zeros, the smallest magnitudes there are, and the schedule never decreases, so every event keeps
them pruned: the set of zeros only grows. Between events and after ``t1`` the mask is held exactly by a
:class:`~cram_hf.sparse_finetune.KeepSparsityCallback` (gradients, weights and optimizer state), rebuilt
from the zeros after every event.

Which step: the event for step ``t`` runs in ``on_step_end`` with ``state.global_step == t``, i.e. right
after the ``t``-th optimizer step (and after gradient accumulation: one event per optimizer step at most);
the ``(t + 1)``-th optimizer step is the first to train the pruned model. An event at step 0
(``start_step=0``) runs in ``on_train_begin``, before the first step.

Only sparsities are scheduled: an N:M pattern has no intermediate levels to walk through, so an ``"N:M"``
target is refused (prune it one-shot with :func:`cram_hf.pruning.prune`, e.g. after training).

Resuming from a checkpoint needs no saved state: the schedule is a function of ``state.global_step``, and
``on_train_begin`` re-applies the level held at the resumed step, which on the checkpoint's weights (already
that sparse) prunes nothing new and only rebuilds the mask. DDP needs nothing either: magnitude pruning of
identical weights gives identical masks on every rank.
"""

from __future__ import annotations

import logging
from typing import Optional

from torch import nn
from transformers import TrainerCallback

from .compression import parse_level
from .pruning import SparsityReport, prune, validate_pruning
from .pruning_spec import PruningSpec
from .sparse_finetune import KeepSparsityCallback, masks_from_zeros
from .targets import Patterns

logger = logging.getLogger(__name__)

LOG_KEY = "gradual_sparsity"


def _sparsity(value, name: str) -> float:
    level = parse_level(value, name)
    if isinstance(level, tuple):
        raise ValueError(
            f"{name}: gradual pruning takes a sparsity in [0, 1), not the N:M pattern {value!r} "
            "(it has no intermediate levels); prune N:M one-shot with cram_hf.prune instead."
        )
    return level


def _step(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}: must be an int (an optimizer step), got {value!r}.")
    return value


def _check_schedule(target, start_step, end_step, initial) -> tuple[float, int, int, float]:
    target = _sparsity(target, "target")
    initial = _sparsity(initial, "initial")
    start_step = _step(start_step, "start_step")
    end_step = _step(end_step, "end_step")
    if start_step < 0:
        raise ValueError(f"start_step: must be >= 0, got {start_step}.")
    if end_step <= start_step:
        raise ValueError(f"end_step: must be > start_step ({start_step}), got {end_step}.")
    if initial > target:
        raise ValueError(f"initial: must be <= target ({target}), got {initial}.")
    return target, start_step, end_step, initial


def cubic_sparsity(step: int, *, target, start_step: int, end_step: int, initial=0.0) -> float:
    """The scheduled sparsity at optimizer step ``step`` (see the module docstring for the formula):
    0 before ``start_step``, ``initial`` at it, exactly ``target`` from ``end_step`` on."""
    target, start_step, end_step, initial = _check_schedule(target, start_step, end_step, initial)
    if step < start_step:
        return 0.0
    if step >= end_step:
        return target  # exactly, not target + (initial - target) * 0.0**3 rounded
    remaining = 1.0 - (step - start_step) / (end_step - start_step)
    return target + (initial - target) * remaining**3


class GradualPruningCallback(TrainerCallback):
    """Gradual magnitude pruning on the cubic schedule, the mask held exactly between events.

    Args:
        target: final sparsity ``s_f`` in ``[0, 1)`` of the target weights (N:M patterns are refused).
        start_step, end_step: the window ``[t0, t1]`` in optimizer steps (``0 <= t0 < t1``).
        update_every: optimizer steps between pruning events inside the window (``t1`` is always one).
        initial: sparsity ``s_i`` applied at ``t0`` (``<= target``).
        scope: ``"global"`` (rank all targets together) or ``"layer"`` (each matrix to the same sparsity).
        targets: regexes on parameter names, ``None`` for the default rule (Linear weights of the layers).
        mask_gradients: passed to the :class:`KeepSparsityCallback` (mask gradients in backward too).

    After each event ``history`` has ``{"step", "level", "zeros", "target_sparsity"}``; ``keep`` is the
    current :class:`KeepSparsityCallback` (``None`` before the first event). The achieved target sparsity
    is logged as ``gradual_sparsity``.

    Example::

        callback = GradualPruningCallback(0.8, start_step=100, end_step=900, update_every=50)
        trainer = CrAMTrainer(model=model, args=args, train_dataset=data, callbacks=[callback])
        trainer.train()   # ends with exactly round(0.8·n) zero target weights
    """

    def __init__(
        self,
        target,
        start_step: int,
        end_step: int,
        update_every: int = 1,
        *,
        initial=0.0,
        scope: str = "global",
        targets: Patterns = None,
        mask_gradients: bool = True,
    ):
        self.target, self.start_step, self.end_step, self.initial = _check_schedule(
            target, start_step, end_step, initial
        )
        update_every = _step(update_every, "update_every")
        if update_every < 1:
            raise ValueError(f"update_every: must be >= 1, got {update_every}.")
        # Every event prunes with this one spec, checked here; the levels are floats of the schedule.
        self.spec = PruningSpec("magnitude", scope, targets).validate()
        self.update_every = update_every
        self.scope = scope
        self.targets = list(self.spec.targets) if self.spec.targets else None
        self.mask_gradients = mask_gradients
        self.keep: Optional[KeepSparsityCallback] = None
        self.report: Optional[SparsityReport] = None
        self.history: list[dict] = []

    # --- the schedule ---------------------------------------------------------------------------------------

    def scheduled(self, step: int) -> float:
        """``s_t`` of the cubic schedule (whether or not ``step`` is an event)."""
        return cubic_sparsity(
            step, target=self.target, start_step=self.start_step, end_step=self.end_step, initial=self.initial
        )

    def is_event(self, step: int) -> bool:
        """Whether the callback prunes after optimizer step ``step``."""
        if not self.start_step <= step <= self.end_step:
            return False
        return (step - self.start_step) % self.update_every == 0 or step == self.end_step

    def sparsity_at(self, step: int) -> float:
        """The level held during optimizer step ``step + 1``: ``s`` of the last event at or before ``step``."""
        if step < self.start_step:
            return 0.0
        if step >= self.end_step:
            return self.target
        last = self.start_step + (step - self.start_step) // self.update_every * self.update_every
        return self.scheduled(last)

    @property
    def sparsity(self) -> float:
        """Fraction of zeros over the targets after the last event (0 before the first)."""
        return self.report.target_sparsity if self.report is not None else 0.0

    # --- pruning --------------------------------------------------------------------------------------------

    def _prune(self, model: nn.Module, step: int, level: float, optimizer=None) -> None:
        if level <= 0.0 and self.keep is None:
            return  # nothing to prune and nothing held yet: stay dense (no hooks on a dense model)
        report = prune(model, level, self.spec)
        keep = KeepSparsityCallback(masks_from_zeros(model, names=report.targets), self.mask_gradients)
        if self.keep is not None:
            self.keep.unbind()
        keep.bind(model)
        if optimizer is not None:
            # Momentum / second moments of the newly pruned entries would otherwise still move them at the
            # next step (re-zeroed after it, but a non-element-wise optimizer would leak them into others).
            keep.apply_to_optimizer_state(optimizer)
        self.keep, self.report = keep, report
        self.history.append(
            {
                "step": step,
                "level": level,
                "zeros": report.target_zeros,
                "target_sparsity": report.target_sparsity,
            }
        )
        logger.info("Gradual pruning at step %d: level %.4f, %s", step, level, report.summary())

    # --- Trainer events -------------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        # Fail on targets the model lacks now, not at start_step.
        validate_pruning(model, self.target, spec=self.spec)
        if self.keep is not None:
            self.keep.unbind()
        self.keep, self.report = None, None
        max_steps = getattr(state, "max_steps", 0) or 0
        if 0 < max_steps < self.end_step:
            logger.warning(
                "GradualPruningCallback: training stops at step %d, before end_step=%d; the model will not "
                "reach the target sparsity %s.",
                max_steps,
                self.end_step,
                self.target,
            )
        # A fresh run with start_step=0 prunes to ``initial`` before the first step; a resumed one restores
        # the level held at its step (the checkpoint already has those zeros, so only the mask is rebuilt).
        step = state.global_step
        if step >= self.start_step:
            self._prune(model, step, self.sparsity_at(step), optimizer)

    def on_step_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        step = state.global_step
        if self.is_event(step):
            self._prune(model, step, self.scheduled(step), optimizer)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if self.keep is not None:
            self.keep.on_pre_optimizer_step(args, state, control, **kwargs)

    def on_optimizer_step(self, args, state, control, **kwargs):
        if self.keep is not None:
            self.keep.on_optimizer_step(args, state, control, **kwargs)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None:
            return
        logs[LOG_KEY] = self.sparsity
        # The Trainer appends a copy of ``logs`` to log_history before the callbacks see them; add the value
        # to that record too, so trainer_state.json has it. (Reporting integrations run before user callbacks
        # and do not see it.)
        history = getattr(state, "log_history", None)
        if history and isinstance(history[-1], dict) and all(k in history[-1] for k in logs if k != LOG_KEY):
            history[-1][LOG_KEY] = self.sparsity

    def on_train_end(self, args, state, control, **kwargs):
        if self.keep is not None:
            self.keep.on_train_end(args, state, control, **kwargs)

    def unbind(self) -> None:
        """Take the mask hooks off the model (``CrAMTrainer`` calls it when ``train()`` is interrupted)."""
        if self.keep is not None:
            self.keep.unbind()
