"""The CrAM update (Peste et al., ICLR 2023), independent of the Trainer.

One optimizer step, for a batch with clean gradient ``g`` already in ``.grad``::

    θ̃ = θ + ρ·g            (ρ·g/‖g‖ with grad_norm)      every trainable parameter
    m = mask(|θ̃|, level)   Top-K (global / per layer) or N:M     target weights only
    θ̂ = m ⊙ θ̃ on targets, θ̃ elsewhere
    g' = ∇L(θ̂)             second pass, same batch
    d = m ⊙ g' (sparse_grad) or g';   d += g (CrAM+)
    θ ← optimizer step with d, from θ (restored bit-exactly)

Use::

    cram = CrAM(model, rho=0.05, levels=[0.5, 0.7, "2:4"])
    loss(model, batch).backward()                      # g in .grad
    with cram.compressed_point(cram.level_at(step)):   # .grad -> g (CrAM+) or 0; weights -> θ̂
        loss(model, batch).backward()                  # .grad += m ⊙ g'
    optimizer.step()                                   # weights are θ again

Memory: besides the model's own gradient, the step keeps one copy of the weights it changes (to restore
them exactly) and a mask per target matrix, packed as bits, while inside the compressed point; the masks are
built one matrix at a time, so no bool mask of every target exists at once. The clean gradient is
not copied: it stays in ``.grad`` (CrAM+) or is dropped before the second pass, which adds into ``.grad``
through hooks that apply the mask to each incoming gradient, so a DDP reducer that runs after them
averages the rank's own ``d``.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .choices import SCOPES, check_choice
from .compression import Level, check_nm_shape, compression_mask_stream, pack_mask, parse_level, unpack_mask
from .targets import Patterns, check_trainable_targets, named_targets, unique_trainable


@dataclass
class PointStats:
    """What happened at one compressed point (read after the ``with`` block)."""

    level: Optional[Level]
    finite: bool = True
    perturbation_norm: Union[float, torch.Tensor] = 0.0  # ‖θ̃ - θ‖, a 0-d tensor when perturbed


class CrAM:
    """CrAM / CrAM+ around any model whose clean gradient sits in ``.grad``.

    Args:
        model: the (unwrapped) model; parameters are read once here.
        rho: perturbation radius ``ρ >= 0``.
        levels: sparsities in ``[0, 1)`` and/or ``"N:M"`` patterns; one is drawn per optimizer step.
            Empty: no compression (SAM-like when ``rho > 0``).
        plus: add the clean gradient ``g`` to the direction (CrAM+).
        sparse_grad: mask the target gradients of the second pass.
        scope: ``"global"`` or ``"layer"`` ranking for magnitude levels.
        targets: ``None`` for the default targets, or regex(es) on parameter names.
        grad_norm: use ``ρ·g/‖g‖`` (SAM-style) instead of ``ρ·g``.
        seed: the level drawn at step ``t`` is a function of ``(seed, t)`` only.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        rho: float = 0.05,
        levels: Sequence = (0.5, 0.7, 0.9),
        plus: bool = True,
        sparse_grad: bool = True,
        scope: str = "global",
        targets: Patterns = None,
        grad_norm: bool = False,
        seed: int = 42,
    ):
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0):
            raise ValueError(f"cram_rho: must be a finite number >= 0, got {rho!r}.")
        check_choice(scope, SCOPES, "cram_scope")
        self.rho = float(rho)
        self.levels = [parse_level(v, "cram_sparsities") for v in levels]
        self.plus, self.sparse_grad, self.scope, self.grad_norm = plus, sparse_grad, scope, grad_norm
        self.seed = int(seed)
        self.params = unique_trainable(model.parameters())
        # Resolved even without levels, so a bad regex fails here rather than when levels are added.
        self.targets = named_targets(model, targets) if (self.levels or targets) else []
        check_trainable_targets(self.targets)  # a LoRA model's frozen base weights: refused with advice
        for name, p in self.targets:
            for level in self.levels:
                check_nm_shape(p.shape, level, name)
        self.timing = False
        self.seconds: dict = {}

    @property
    def active(self) -> bool:
        return self.rho > 0 or bool(self.levels)

    def level_at(self, step: int) -> Optional[Level]:
        """The level for optimizer step ``step``: the same on every rank and after a resume."""
        if not self.levels:
            return None
        return self.levels[int(np.random.default_rng([self.seed, int(step)]).integers(len(self.levels)))]

    def stash_gradients(self) -> list:
        """Take the gradient accumulated so far out of ``.grad`` (no copy) so the next backward
        yields this micro-batch's own clean gradient."""
        stash = [p.grad for p in self.params]
        for p in self.params:
            p.grad = None
        return stash

    def _tick(self, key: str, start: float) -> float:
        now = time.perf_counter()
        if self.timing:
            if self.params and self.params[0].is_cuda:
                torch.cuda.synchronize()
                now = time.perf_counter()
            self.seconds[key] = self.seconds.get(key, 0.0) + now - start
        return now

    @contextlib.contextmanager
    def compressed_point(
        self,
        level: Optional[Level],
        *,
        grad_scale: Union[float, torch.Tensor] = 1.0,
        stash: Optional[list] = None,
        check_finite: bool = False,
    ):
        """Move the weights to θ̂ for the second pass; restore θ on exit.

        On entry ``.grad`` holds this micro-batch's clean gradient times ``grad_scale``: the factor the
        training loop applied to the gradient of the micro-batch's own loss (its accumulation weight times
        the fp16 loss scale; a float or a 0-d tensor, so no scale is read back to the host). The
        perturbation divides it out: ``θ̃ = θ + ρ·.grad/grad_scale``. Inside the block ``.grad`` holds
        ``stash + .grad`` (CrAM+) or ``stash`` (CrAM), ready for the second backward to add the masked
        gradient, which the caller weights the same way.

        ``check_finite`` (for fp16 loss scaling): if the clean gradient is not finite, nothing is perturbed
        or compressed, the gradient stays in ``.grad`` so the scaler skips the step, and the yielded stats
        have ``finite=False``: the caller skips the second pass. This is the step's only host read.

        Whatever happens while entering the block or inside it (an out-of-memory error while ranking or in
        the second pass, an interrupt), every weight is restored bit-exactly and ``.grad`` is put back to the
        ``stash`` tensors. A failure before the clean gradient is folded in leaves them exactly as they were
        before this micro-batch; a later one leaves a partial gradient, which the Trainer zeroes before it
        retries (``auto_find_batch_size``).
        """
        stats = PointStats(level)
        saved: list = []
        hooks: list = []
        try:
            with torch.no_grad():
                self._enter(stats, grad_scale, stash, check_finite, saved, hooks)
            yield stats
        except BaseException:
            self._put_back_gradients(stash)
            raise
        finally:
            with torch.no_grad():
                start = time.perf_counter()
                for h in hooks:
                    h.remove()
                if saved:
                    changed, copies = zip(*saved)
                    torch._foreach_copy_(list(changed), list(copies))
                self._tick("restore", start)

    def _enter(
        self, stats: PointStats, grad_scale, stash, check_finite: bool, saved: list, hooks: list
    ) -> None:
        """Perturb, fold the clean gradient, compress. ``saved`` and ``hooks`` are filled as the weights
        change, so the caller can undo a partial entry."""
        start = time.perf_counter()
        present = [p for p in self.params if p.grad is not None]
        grads = [p.grad for p in present]
        gnorm = _global_norm(grads) / grad_scale if grads else None
        if check_finite and gnorm is not None and not bool(torch.isfinite(gnorm)):
            stats.finite = False
            self._fold_clean_gradient(stash, keep=True)
            return
        compress = stats.level is not None and bool(self.targets)
        target_params = [p for _, p in self.targets] if compress else []
        perturbed = present if self.rho > 0 else []
        changed = list({id(p): p for p in perturbed + target_params}.values())
        saved.extend((p, p.detach().clone()) for p in changed)
        if perturbed:
            step_size = self.rho / grad_scale
            if self.grad_norm:
                step_size = step_size / (gnorm + 1e-12)
            stats.perturbation_norm = step_size * gnorm * grad_scale
            _add_scaled(perturbed, grads, step_size)
        start = self._tick("perturb", start)
        # The ranking over all targets happens here; each mask is built as the loop below reaches it.
        masks = compression_mask_stream(target_params, stats.level, self.scope) if target_params else ()
        start = self._tick("rank", start)
        # Folded only now: until here a failure (say, out of memory while ranking) leaves `stash` intact.
        self._fold_clean_gradient(stash, keep=self.plus)
        if target_params:
            for p, m in zip(target_params, masks):
                p.mul_(m)
                if self.sparse_grad and p.requires_grad:
                    hooks.append(p.register_hook(_MaskedGradient(m)))
            self._tick("mask", start)

    def _fold_clean_gradient(self, stash: Optional[list], keep: bool) -> None:
        """``.grad <- stash + g`` if ``keep`` else ``.grad <- stash`` (in place, no copies)."""
        if stash is None:
            stash = [None] * len(self.params)
        for p, acc in zip(self.params, stash):
            g = p.grad
            if keep and g is not None:
                if acc is not None:
                    acc.add_(g)
                    g = acc
                p.grad = g
            else:
                p.grad = acc

    def _put_back_gradients(self, stash: Optional[list]) -> None:
        if stash is not None:
            for p, acc in zip(self.params, stash):
                p.grad = acc


class _MaskedGradient:
    """The gradient hook ``g -> m ⊙ g`` of one target. It keeps ``m`` packed as bits, an eighth of a bool
    mask: the masks of every target live through the whole second pass."""

    def __init__(self, mask: torch.Tensor):
        self.shape, self.bits = mask.shape, pack_mask(mask)

    def __call__(self, grad: torch.Tensor) -> torch.Tensor:
        return grad * unpack_mask(self.bits, self.shape)


def _global_norm(tensors: list) -> torch.Tensor:
    """The 2-norm of all ``tensors`` together, as a 0-d float32 tensor on the first one's device. Norms are
    taken per device and moved before they are combined, so a model spread over devices works."""
    by_device: dict = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t)
    first = tensors[0].device
    parts = [
        torch.stack(torch._foreach_norm(group, dtype=torch.float32)).to(first) for group in by_device.values()
    ]
    return torch.linalg.vector_norm(torch.cat(parts))


def _add_scaled(params: list, grads: list, step_size) -> None:
    """``params += step_size * grads``; a tensor ``step_size`` stays on the device."""
    if not torch.is_tensor(step_size):
        torch._foreach_add_(params, grads, alpha=step_size)
        return
    per_device: dict = {}
    for p, g in zip(params, grads):
        s = per_device.setdefault(p.device, step_size.to(p.device, p.dtype))
        p.addcmul_(g, s)
