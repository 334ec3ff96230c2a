"""Calibrated one-shot pruners: Wanda (Sun et al., 2023) and SparseGPT (Frantar & Alistarh, 2023).

Both look at what each target matrix ``W[out, in]`` is fed. For every Linear, from the calibration tokens
(padding excluded) that reach it:

- **Wanda** scores each weight by ``|W_ij| · ‖X_j‖₂`` (``‖X_j‖`` the norm of input feature j over all tokens)
  and prunes the lowest scores of each output row (N:M: the lowest in each group of M inputs). No update.
- **SparseGPT** prunes column by column with the optimal-brain-surgeon update of the remaining columns,
  using the Hessian ``H = X Xᵀ`` of the layer inputs (damped by ``damping · mean(diag H)``)::

      Hinv = chol(H⁻¹)ᵀ (upper)            for each block of B columns, for each column j in it:
      mask = the k lowest  w²/Hinv_jj²      (per block; N:M: per group of M columns, per row)
      err  = (w_j − mask·0 …) / Hinv_jj    w_j := pruned w_j;  W[:, j:] −= err ⊗ Hinv[j, j:]
      after the block: W[:, rest] −= Err_block · Hinv[block, rest]   (lazy batch update)

Layer by layer: the calibration batches are run up to the first transformer layer; each layer then collects
its statistics, is pruned, and is run again to give the next layer its inputs from the model pruned so far.

Exactly ``k`` weights are zeroed per matrix (``round(s·n)`` for a uniform sparsity, or the allocation of
global magnitude ranking: :func:`prune_layer_by_layer`); N:M patterns are exact. Nothing is read back to the
host.
"""

from __future__ import annotations

from typing import Iterable, Optional, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from .compression import Level, compression_mask_stream, num_pruned

# ------------------------------------------------------------------------------------------- the pruners


def _lowest_k_per_row(scores: torch.Tensor, k_per_row: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``k_per_row[r]`` lowest scores of each row (ties: lower index first)."""
    order = torch.argsort(scores, dim=1, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(scores.shape[1], device=scores.device).expand_as(order))
    return rank < k_per_row.unsqueeze(1)


def _row_counts(rows: int, cols: int, k: int, device) -> torch.Tensor:
    """``k`` spread over ``rows`` rows as evenly as possible (the first rows take the remainder)."""
    base, extra = divmod(k, rows)
    counts = torch.full((rows,), base, dtype=torch.long, device=device)
    counts[:extra] += 1
    if base + (extra > 0) > cols:
        raise ValueError(f"cannot prune {k} of {rows}x{cols} weights")
    return counts


def _nm_prune_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool mask of the ``m - n`` lowest scores in every group of ``m`` consecutive inputs of each row."""
    groups = scores.reshape(-1, m)
    return _lowest_k_per_row(groups, torch.full((groups.shape[0],), m - n, device=scores.device)).view(
        scores.shape
    )


def wanda_mask(weight: torch.Tensor, input_sq_sum: torch.Tensor, level: Level, k: int) -> torch.Tensor:
    """Bool mask of the weights Wanda prunes (``True`` = pruned): the lowest ``|W_ij| · ‖X_j‖`` per row,
    ``k`` in all (spread evenly over rows), or the N:M pattern of those scores."""
    scores = weight.detach().abs().float() * input_sq_sum.float().sqrt().unsqueeze(0)
    # Weights already zero go first (a dead input scores 0 too), so they count toward the level.
    scores.masked_fill_(weight.detach() == 0, -1.0)
    if isinstance(level, tuple):
        return _nm_prune_mask(scores, *level)
    return _lowest_k_per_row(scores, _row_counts(*scores.shape, k, scores.device))


def _lowest_k(scores: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Bool mask of the ``k`` lowest entries of ``scores`` (any shape; ``k`` a 0-d tensor, so that no count is
    read back to the host; ties: lower index first)."""
    return _lowest_k_per_row(scores.reshape(1, -1), k.reshape(1)).view(scores.shape)


@torch.no_grad()
def sparsegpt_prune_(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    level: Level,
    k: int,
    *,
    damping: float = 0.01,
    block_size: int = 128,
) -> torch.Tensor:
    """Prune ``weight[out, in]`` in place with SparseGPT and return the bool mask of pruned entries.

    ``hessian``: ``X Xᵀ`` of the inputs (``[in, in]``, any positive scale). ``k`` weights are pruned in all
    for an unstructured level.

    Pruning never revives a weight: entries that are already zero (and those of inputs the calibration data
    never feed, zeroed as in the reference implementation) are pruned first and count toward ``k``
    (the OBS update of the other columns would otherwise make them nonzero again). The ``k − zeros`` others
    are spread over the blocks of columns in proportion to their size; with more zeros than ``k``, only the
    zeros are pruned. N:M: the zeros of a group count toward its ``M − N``.
    """
    rows, cols = weight.shape
    if isinstance(level, tuple) and block_size % level[1]:
        raise ValueError(f"block_size: {block_size} is not a multiple of M={level[1]} of the pattern.")
    W = weight.detach().float().clone()
    H = hessian.detach().float().clone()
    dead = torch.diagonal(H) == 0  # inputs that never fire: no information, prune them freely
    H.diagonal().masked_fill_(dead, 1.0)
    W.masked_fill_(dead.unsqueeze(0), 0.0)
    zero = W == 0  # pruned before, or fed by a dead input: they stay pruned
    H.diagonal().add_(damping * torch.diagonal(H).mean())
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
    pruned = torch.zeros_like(W, dtype=torch.bool)
    free = (k - zero.sum()).clamp(min=0)  # weights to prune beyond the zeros (a tensor: no host read)
    done = torch.zeros((), dtype=torch.long, device=W.device)  # of them pruned so far, so the quotas add up
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1, hinv1, zero1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2], zero[:, i1:i2]
        err1 = torch.zeros_like(W1)
        diag = torch.diagonal(hinv1)
        mask1 = zero1.clone()
        if not isinstance(level, tuple):
            quota = torch.div(free * i2 + cols // 2, cols, rounding_mode="floor") - done
            scores = (W1**2 / diag.unsqueeze(0) ** 2).masked_fill(zero1, float("inf"))
            mask1 |= _lowest_k(scores, quota)
            done += (mask1 & ~zero1).sum()
        for j in range(i2 - i1):
            if isinstance(level, tuple) and j % level[1] == 0:
                n, m = level
                scores = (W1[:, j : j + m] ** 2 / diag[j : j + m] ** 2).masked_fill(zero1[:, j : j + m], -1.0)
                mask1[:, j : j + m] |= _nm_prune_mask(scores, n, m)
            w, d = W1[:, j], diag[j]
            q = w.masked_fill(mask1[:, j], 0.0)
            err = (w - q) / d
            W1[:, j:] -= err.unsqueeze(1) * hinv1[j, j:].unsqueeze(0)
            W1[:, j] = q
            err1[:, j] = err
        W[:, i1:i2] = W1
        pruned[:, i1:i2] = mask1
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    W.masked_fill_(pruned, 0.0)
    weight.copy_(W.to(weight.dtype))
    return pruned


# ---------------------------------------------------------------------------------- layer-by-layer driver


class _Stop(Exception):
    """Raised by the hook that captures the first layer's inputs: the rest of the forward is not needed."""


def layer_lists(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """The transformer layers that hold the target matrices, in forward order (children of the model's
    ``nn.ModuleList``s); every target must sit in one of them."""
    layers, owner = [], {}
    for list_name, module in model.named_modules():
        if isinstance(module, nn.ModuleList):
            for i, layer in enumerate(module):
                prefix = f"{list_name}.{i}."
                for n in names:
                    if n.startswith(prefix) and n not in owner:
                        owner[n] = layer
                        if not any(layer is x for x in layers):
                            layers.append(layer)
    missing = [n for n in names if n not in owner]
    if missing:
        raise ValueError(
            f"targets: {missing[0]!r} is not inside a transformer layer (a child of an nn.ModuleList); "
            "calibrated pruning runs layer by layer, so its targets must be the layers' weights."
        )
    return layers


def _first_layer_inputs(model, first_layer, batches) -> list:
    """``(args, kwargs, attention_mask)`` of the first layer for every calibration batch."""
    captured = []

    def catch(module, args, kwargs):
        captured.append((args, kwargs))
        raise _Stop

    handle = first_layer.register_forward_pre_hook(catch, with_kwargs=True)
    device = next(model.parameters()).device
    masks = []
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
            masks.append(batch.get("attention_mask"))
            try:
                model(**batch)
            except _Stop:
                pass
    finally:
        handle.remove()
    return [(a, kw, m) for (a, kw), m in zip(captured, masks)]


class _Statistics:
    """Forward hook on a Linear: accumulates what its pruner needs from the non-padding input tokens."""

    def __init__(self, linear: nn.Linear, method: str):
        self.method = method
        cols = linear.in_features
        device = linear.weight.device
        self.value = (
            torch.zeros(cols, cols, device=device)
            if method == "sparsegpt"
            else torch.zeros(cols, device=device)
        )
        self.token_mask: Optional[torch.Tensor] = None
        self.handle = linear.register_forward_hook(self)

    def __call__(self, module, args, output):
        x = args[0].detach().float()
        if self.token_mask is not None and x.dim() == 3:
            x = x * self.token_mask.to(x.dtype).unsqueeze(-1)  # padding rows add nothing
        x = x.reshape(-1, x.shape[-1])
        if self.method == "sparsegpt":
            self.value.addmm_(x.t(), x)
        else:
            self.value.add_((x * x).sum(0))


def _layer_output(layer, args, kwargs):
    out = layer(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


@torch.no_grad()
def prune_calibrated(
    model: nn.Module,
    names: Sequence[str],
    counts: dict,
    level: Level,
    method: str,
    batches: Iterable[dict],
    *,
    damping: float = 0.01,
    block_size: int = 128,
    progress: bool = True,
) -> None:
    """Prune the target matrices ``names`` of ``model`` in place with ``method`` ("wanda" or "sparsegpt"),
    ``counts[name]`` weights each (ignored for N:M), layer by layer on the calibration ``batches`` (dicts of
    model inputs; an ``attention_mask`` marks the tokens that count)."""
    params = dict(model.named_parameters())
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    missing = [n for n in names if n not in linears]
    if missing:
        raise ValueError(f"targets: {missing[0]!r} is not the weight of an nn.Linear; {method} needs one.")
    layers = layer_lists(model, names)
    was_training = model.training
    model.eval()
    try:
        inputs = _first_layer_inputs(model, layers[0], list(batches))
        if not inputs:
            raise ValueError("calibration: no batch reached the first transformer layer (is it empty?).")
        for layer in tqdm(layers, desc=f"{method} layers", disable=not progress, leave=False):
            mine = [n for n in names if any(p is params[n] for p in layer.parameters())]
            stats = {n: _Statistics(linears[n], method) for n in mine}
            try:
                for args, kwargs, token_mask in inputs:
                    for s in stats.values():
                        s.token_mask = token_mask
                    _layer_output(layer, args, kwargs)
            finally:
                for s in stats.values():
                    s.handle.remove()
            for n in mine:
                weight = params[n]
                if method == "wanda":
                    weight.masked_fill_(wanda_mask(weight, stats[n].value, level, counts.get(n, 0)), 0.0)
                else:
                    sparsegpt_prune_(
                        weight,
                        stats[n].value,
                        level,
                        counts.get(n, 0),
                        damping=damping,
                        block_size=block_size,
                    )
            del stats
            # The next layer sees what this pruned layer now outputs.
            inputs = [((_layer_output(layer, a, kw),) + tuple(a[1:]), kw, m) for a, kw, m in inputs]
    finally:
        model.train(was_training)


def prune_layer_by_layer(model: nn.Module, names, level: Level, spec, calibration, progress=False) -> int:
    """The ``"wanda"`` and ``"sparsegpt"`` pruners (:class:`~cram_hf.pruning_spec.Pruner`): the count of each
    matrix from ``spec.scope``, then :func:`prune_calibrated` on the ``calibration`` batches. Returns the
    number of entries the level removes."""
    params = dict(model.named_parameters())
    tensors = [params[n] for n in names]
    if isinstance(level, tuple):
        counts = {}
        removed = sum(t.numel() * (level[1] - level[0]) // level[1] for t in tensors)
    else:
        if spec.scope == "layer":
            counts = {n: num_pruned(t.numel(), level) for n, t in zip(names, tensors)}
        else:  # the allocation global magnitude ranking makes, matrix by matrix
            masks = compression_mask_stream(tensors, level, "global")
            counts = {n: int((~m).sum()) for n, m in zip(names, masks)}
        removed = sum(counts.values())
    prune_calibrated(
        model,
        names,
        counts,
        level,
        spec.method,
        calibration,
        damping=spec.damping,
        block_size=spec.block_size,
        progress=progress,
    )
    return removed
