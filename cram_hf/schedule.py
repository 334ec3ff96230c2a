"""Which optimizer steps take the CrAM update: the cost-saving schedules.

A CrAM step costs two forward-backward passes; a plain step one. Two schedules run the two-pass update on a
share ``f`` of the optimizer steps only, so training costs about ``1 + f`` plain steps per step instead of 2:

* ``cram_interval = k`` — the CrAM update on every ``k``-th optimizer step (steps ``0, k, 2k, ...``), the plain
  update on the others (Composer's SAM ``interval``); ``f = 1/k``.
* ``cram_probability = p`` — each optimizer step is a CrAM step with probability ``p``, independently
  (G-RST's random mix of two-pass and plain steps); ``f ≈ p``.

Both are functions of ``(seed, step)`` only, like the level drawn for a step (:meth:`CrAM.level_at`): every
DDP rank makes the same choice without talking to the others, and a resumed run makes the choices the
uninterrupted run would have made. The draw uses its own stream, so switching a schedule on does not change
which level a CrAM step gets. ``cram_interval = 1`` and ``cram_probability = 1`` (the defaults) are the paper's
CrAM: every step.

A plain step is the stock ``Trainer.training_step``: no ranking, no copy, no mask.
"""

from __future__ import annotations

import numpy as np

# Mixed into the generator's seed so the schedule's draws are not the level draws of the same (seed, step).
_SCHEDULE_STREAM = 0x5C4ED


def cram_step_due(step: int, *, seed: int, interval: int = 1, probability: float = 1.0) -> bool:
    """Whether optimizer step ``step`` (``state.global_step`` before the step, counted from 0) takes the CrAM
    update under the schedule; the same answer on every rank and after a resume."""
    if interval > 1:
        return step % interval == 0
    if probability < 1:
        return bool(np.random.default_rng([seed, int(step), _SCHEDULE_STREAM]).random() < probability)
    return True
