"""Sparse fine-tuning: keep the zeros of a pruned model exactly zero while it trains.

A pruned weight must stay zero through any optimizer. Masking only the weights after each step is not
enough on its own to keep the *optimizer* honest (momentum and second moments of pruned entries would build
up from their gradients and distort later steps if a mask were ever lifted), and masking only the gradients
is not enough either for optimizers whose update is not element-wise zero for a zero gradient. So the
:class:`KeepSparsityCallback` does all three, each where the Trainer loop allows it:

1. backward: a hook on every masked parameter multiplies its incoming gradient by the mask, so gradient
   clipping, the logged gradient norm and a CrAM perturbation (``θ + ρ·g``) never see pruned entries;
2. ``on_pre_optimizer_step`` (after clipping, before ``optimizer.step()``): pruned gradient entries are set
   to zero again — a guarantee independent of hooks and of what else wrote into ``.grad``;
3. ``on_optimizer_step``: pruned weights are set to zero and the element-wise optimizer state of pruned
   entries (AdamW's ``exp_avg``/``exp_avg_sq``, SGD's momentum buffer, ...) is zeroed.

AdamW's decoupled weight decay multiplies by ``1 - lr·wd`` and leaves an exact zero at zero, so with zero
gradients and zero state the weights do not even move before step 3 re-applies the mask.

Gradient accumulation needs nothing special: the callback acts once per optimizer step, on the accumulated
gradient. DDP needs nothing either: the masks come from the weights, which are identical on every rank, so
every rank masks the same entries and the replicas stay identical. CrAM (``CrAMTrainer``) perturbs and
restores the weights inside ``training_step``, before any of the steps above, so both compose.
"""

from __future__ import annotations

import logging
from typing import Mapping, Optional

import torch
from torch import nn
from transformers import TrainerCallback

from .checkpoint import read_sparsity_config
from .targets import Patterns, resolve_parameter_names, target_names

logger = logging.getLogger(__name__)

# Below this fraction of exact zeros in the target matrices a model is treated as dense: trained float
# weights are essentially never exactly zero, while any pruned model is far above it.
MIN_SPARSITY = 0.01


def masks_from_zeros(model: nn.Module, targets: Patterns = None, names=None) -> dict[str, torch.Tensor]:
    """Keep-masks (``True`` = weight may train) from the exact zeros of the target matrices.

    ``names`` (parameter names) takes precedence over ``targets`` (regexes, ``None`` = default targets).
    """
    params = dict(model.named_parameters())
    names = list(names) if names is not None else target_names(model, targets)
    return {n: params[n].detach() != 0 for n in names}


def target_sparsity(model: nn.Module, names) -> float:
    """Fraction of exact zeros over the named matrices together."""
    params = dict(model.named_parameters())
    zeros = total = 0
    for n in names:
        zeros += int((params[n].detach() == 0).sum())
        total += params[n].numel()
    return zeros / total if total else 0.0


def _unwrap_optimizer(optimizer):
    """The torch optimizer inside accelerate's / the Trainer's wrappers (they keep it in ``.optimizer``)."""
    seen = set()
    while hasattr(optimizer, "optimizer") and id(optimizer) not in seen:
        seen.add(id(optimizer))
        optimizer = optimizer.optimizer
    return optimizer


class KeepSparsityCallback(TrainerCallback):
    """Holds pruned weights at exactly zero during training (see the module docstring for how).

    Args:
        masks: parameter name -> bool keep-mask of the parameter's shape (``False`` = pruned, held at zero).
        mask_gradients: also mask gradients in backward (hooks), so clipping and CrAM see only kept entries.

    Build it with :meth:`from_model` (masks from the zeros of the target matrices) or
    :meth:`from_checkpoint` (matrices listed in a ``sparsity_config.json``, masks from their zeros).
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], mask_gradients: bool = True):
        if not masks:
            raise ValueError("masks: KeepSparsityCallback needs at least one masked parameter.")
        for name, mask in masks.items():
            if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
                raise ValueError(
                    f"masks[{name!r}]: must be a bool tensor (True = kept), got "
                    f"{getattr(mask, 'dtype', type(mask).__name__)}."
                )
        self.masks = dict(masks)
        self.mask_gradients = mask_gradients
        self._bound: list[tuple[nn.Parameter, torch.Tensor]] = []
        self._hooks: list = []

    @classmethod
    def from_model(cls, model: nn.Module, targets: Patterns = None, **kwargs) -> "KeepSparsityCallback":
        return cls(masks_from_zeros(model, targets), **kwargs)

    @classmethod
    def from_checkpoint(cls, model: nn.Module, path, **kwargs) -> "KeepSparsityCallback":
        """Masks for the matrices a checkpoint's ``sparsity_config.json`` lists (default targets if it lists
        none), taken from their zeros in ``model`` (loaded from that checkpoint)."""
        config = read_sparsity_config(path, required=False)
        if config is None:
            raise ValueError(f"{path}: no sparsity_config.json found; use KeepSparsityCallback.from_model.")
        names = config.get("targets")
        names = resolve_parameter_names(model, names) if names else target_names(model)
        return cls(masks_from_zeros(model, names=names), **kwargs)

    @property
    def num_pruned(self) -> int:
        return sum(int((~m).sum()) for m in self.masks.values())

    def bind(self, model: nn.Module) -> None:
        """Attach to ``model``'s parameters: move masks to their devices, zero pruned weights, add hooks."""
        self.unbind()
        params = dict(model.named_parameters())
        bound = []
        for name, mask in self.masks.items():
            if name not in params:
                raise ValueError(f"masks: the model has no parameter {name!r}.")
            p = params[name]
            if tuple(mask.shape) != tuple(p.shape):
                raise ValueError(
                    f"masks[{name!r}]: shape {tuple(mask.shape)} != parameter shape {tuple(p.shape)}."
                )
            mask = mask.to(p.device)
            self.masks[name] = mask
            bound.append((p, mask))
        self._bound = bound
        self.apply_to_weights()
        if self.mask_gradients:
            # torch.where, not g * m: an inf (fp16 overflow) at a pruned entry must become 0, not inf * 0 = NaN.
            self._hooks = [
                p.register_hook(lambda g, m=m: torch.where(m, g, g.new_zeros(())))
                for p, m in bound
                if p.requires_grad
            ]

    def unbind(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    @torch.no_grad()
    def apply_to_weights(self) -> None:
        for p, mask in self._bound:
            p.masked_fill_(~mask, 0)

    @torch.no_grad()
    def apply_to_gradients(self) -> None:
        for p, mask in self._bound:
            if p.grad is not None:
                p.grad.masked_fill_(~mask, 0)

    @torch.no_grad()
    def apply_to_optimizer_state(self, optimizer) -> None:
        """Zero the pruned entries of every element-wise floating-point state tensor (same shape as the
        parameter). Factored or quantised states (other shapes, integer dtypes) are left alone; the weights
        are re-masked anyway."""
        optimizer = _unwrap_optimizer(optimizer)
        state = getattr(optimizer, "state", None)
        if not state:
            return
        for p, mask in self._bound:
            for value in state.get(p, {}).values():
                if torch.is_tensor(value) and value.is_floating_point() and value.shape == p.shape:
                    value.masked_fill_(~mask.to(value.device), 0)

    def violations(self) -> int:
        """How many pruned entries are not exactly zero right now (0 while the callback does its job)."""
        return sum(int((p.detach()[~mask] != 0).sum()) for p, mask in self._bound)

    # --- Trainer events ---------------------------------------------------------------------------------

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.bind(model)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.apply_to_gradients()

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.apply_to_weights()
        if optimizer is not None:
            self.apply_to_optimizer_state(optimizer)

    def on_train_end(self, args, state, control, **kwargs):
        self.unbind()


def keep_sparsity_callback(
    model: nn.Module,
    model_path=None,
    targets: Patterns = None,
    keep: Optional[bool] = None,
    min_sparsity: float = MIN_SPARSITY,
) -> Optional[KeepSparsityCallback]:
    """The callback a fine-tuning run needs, or ``None``.

    ``keep=None`` decides from the model: a checkpoint with a ``sparsity_config.json`` (at ``model_path``),
    or target matrices (``targets``: regexes, ``None`` = default) with at least ``min_sparsity`` exact zeros,
    is sparse and gets its mask kept.
    ``keep=False`` never keeps; ``keep=True`` always does (from the zeros, even if there are few).
    """
    if keep is False:
        return None
    # The checkpoint's own record of what was pruned wins over ``targets`` (which only guesses it).
    config = read_sparsity_config(model_path, required=False)
    if config is not None:
        callback = KeepSparsityCallback.from_checkpoint(model, model_path)
        source = f"sparsity_config.json of {model_path}"
    else:
        callback = KeepSparsityCallback.from_model(model, targets)
        source = "zeros of the target matrices"
        if keep is None:
            sparsity = target_sparsity(model, list(callback.masks))
            if sparsity < min_sparsity:
                logger.info("Model is dense (target sparsity %.4f): no mask kept.", sparsity)
                return None
    total = sum(m.numel() for m in callback.masks.values())
    logger.info(
        "Keeping sparsity: %d of %d weights in %d matrices held at zero (%.2f%%; masks from the %s).",
        callback.num_pruned,
        total,
        len(callback.masks),
        100.0 * callback.num_pruned / max(total, 1),
        source,
    )
    return callback
