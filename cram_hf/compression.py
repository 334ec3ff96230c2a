"""Compression operators: magnitude Top-K and N:M masks, pure functions on tensors.

Masks are boolean and ``True`` marks a weight that is *kept*. Nothing here knows about models.

A *level* is either a sparsity ``s`` in ``[0, 1)`` (zero the ``round(s * n)`` smallest magnitudes) or an
``(N, M)`` pattern (keep the ``N`` largest magnitudes in every group of ``M`` consecutive entries along the
input dimension of a ``weight[out, in]`` matrix).
"""

from __future__ import annotations

import math
import re
from typing import Iterator, Sequence, Union

import torch

from .choices import SCOPES, check_choice

Level = Union[float, tuple[int, int]]

_NM_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_level(value, name: str = "sparsity") -> Level:
    """Turn ``0.7``, ``"0.7"`` or ``"2:4"`` into a level; raise ``ValueError`` naming ``name`` otherwise.
    A level parsed already comes back as it is, after a check that costs no more than a comparison."""
    if _is_level(value):
        return value
    if isinstance(value, tuple) and len(value) == 2:
        value = f"{value[0]}:{value[1]}"
    if isinstance(value, str):
        match = _NM_RE.match(value)
        if match:
            n, m = int(match.group(1)), int(match.group(2))
            if not 0 < n < m:
                raise ValueError(
                    f"{name}: N:M pattern {value!r} needs 0 < N < M (e.g. '2:4' or '4:8'); got N={n}, M={m}."
                )
            return (n, m)
        if ":" in value:
            raise ValueError(
                f"{name}: malformed N:M pattern {value!r}; write two integers like '2:4' or '4:8'."
            )
        try:
            value = float(value)
        except ValueError:
            raise ValueError(
                f"{name}: {value!r} is neither a sparsity in [0, 1) nor an N:M pattern such as '2:4'."
            ) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{name}: expected a float in [0, 1) or an 'N:M' string, got {type(value).__name__}."
        )
    value = float(value)
    if not (0.0 <= value < 1.0) or math.isnan(value):
        hint = ""
        if value >= 60 and float(value).is_integer():
            # YAML 1.1 reads an unquoted 2:4 as the base-60 integer 124.
            hint = " In YAML, quote N:M patterns ('2:4'): unquoted, 2:4 is read as the integer 124."
        raise ValueError(f"{name}: sparsity must be in [0, 1), got {value}.{hint}")
    return value


def _is_level(value) -> bool:
    # What parse_level returns: internal code passes such levels along, and they need no second parse.
    if type(value) is float:
        return 0.0 <= value < 1.0
    return (
        type(value) is tuple
        and len(value) == 2
        and all(type(v) is int for v in value)
        and 0 < value[0] < value[1]
    )


NONE = "none"  # how the empty list of levels is spelled on a command line (a list flag needs one value)


def parse_levels(values, name: str = "sparsities", *, required: bool = False) -> list[Level]:
    """The one parser for lists of levels: ``None``, ``[]`` or ``["none"]`` give ``[]``; a single value is a
    list of one; each value goes through :func:`parse_level`; duplicates are dropped, order kept.
    ``required``: an empty result is an error."""
    if values is None:
        values = []
    elif isinstance(values, (str, int, float, tuple)) and not (
        isinstance(values, tuple) and len(values) != 2
    ):
        values = [values]
    values = list(values)
    if len(values) == 1 and str(values[0]).strip().lower() == NONE:
        values = []
    levels: list[Level] = []
    for v in values:
        level = parse_level(v, name)
        if level not in levels:
            levels.append(level)
    if required and not levels:
        raise ValueError(f"{name}: give at least one level, e.g. 0 0.5 0.7 0.9 2:4.")
    return levels


def level_name(level: Level) -> str:
    """``0.7`` -> ``"0.7"``, ``(2, 4)`` -> ``"2:4"``."""
    if isinstance(level, tuple):
        return f"{level[0]}:{level[1]}"
    short = f"{level:g}"
    return short if float(short) == level else repr(float(level))  # never round a level away


def level_sparsity(level: Level) -> float:
    """Fraction of weights a level zeroes: ``s`` itself, or ``1 - N/M`` for a pattern."""
    if isinstance(level, tuple):
        return 1.0 - level[0] / level[1]
    return float(level)


def num_pruned(numel: int, sparsity: float) -> int:
    """How many entries a magnitude level zeroes out of ``numel``: ``round(s * n)``."""
    return int(round(sparsity * numel))


def _abs_bits(t: torch.Tensor) -> torch.Tensor:
    """Bit patterns of ``|t|`` as int32; for non-negative float32 they sort like the values."""
    a = t.detach().abs()
    if a.dtype != torch.float32:
        a = a.float()
    return a.reshape(-1).view(torch.int32)


def _histogram(keys: torch.Tensor, out: torch.Tensor) -> None:
    """``out[i] += (keys == i).sum()`` for every bin. ``index_add_`` has a fixed output size, unlike
    ``bincount``, whose CUDA kernel reads the largest key back to the host to size its output."""
    out.index_add_(0, keys, torch.ones((), dtype=out.dtype, device=out.device).expand(keys.numel()))


def _count_below(cum: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``cum[index - 1]`` (0 for ``index == 0``) of an inclusive cumulative histogram, on the device."""
    previous = cum.index_select(0, (index - 1).clamp(min=0).reshape(1)).squeeze(0)
    return torch.where(index > 0, previous, torch.zeros_like(previous))


def kth_smallest_abs(tensors: Sequence[torch.Tensor], k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k-th smallest ``|x|`` (1-based) over all ``tensors`` together, and how many entries lie below it.

    A two-round radix select on the float bit patterns: a histogram of the high 16 bits locates the bin
    of the k-th value, a histogram of the low 16 bits inside that bin gives it exactly. Two passes over
    the data instead of a sort; no concatenated copy of the tensors is made. Exact for float32, float16
    and bfloat16 (compared in float32). Both results are 0-d tensors on the first tensor's device, and
    nothing is read back to the host: a GPU's queue never drains here.
    """
    total = sum(t.numel() for t in tensors)
    if not 1 <= k <= total:
        raise ValueError(f"k must be in [1, {total}], got {k}.")
    device = tensors[0].device
    kth = torch.tensor(k, dtype=torch.int64, device=device)
    # Bit patterns are recomputed per tensor in each round rather than kept for all tensors at once:
    # an extra |x| pass is cheap, a second copy of every target weight is not.
    high = torch.zeros(1 << 15, dtype=torch.int64, device=device)
    for t in tensors:
        _histogram((_abs_bits(t) >> 16).to(device), high)
    cum = high.cumsum(0)
    hbin = torch.searchsorted(cum, kth.reshape(1)).squeeze(0)
    below_bin = _count_below(cum, hbin)
    # One extra bin collects every entry outside the located high bin, so the histogram keeps a fixed size.
    low = torch.zeros((1 << 16) + 1, dtype=torch.int64, device=device)
    for t in tensors:
        b = _abs_bits(t).to(device)
        _histogram(torch.where((b >> 16) == hbin, b & 0xFFFF, 1 << 16), low)
    cum_low = low[: 1 << 16].cumsum(0)
    lbin = torch.searchsorted(cum_low, (kth - below_bin).reshape(1)).squeeze(0)
    below = below_bin + _count_below(cum_low, lbin)
    value = ((hbin << 16) | lbin).to(torch.int32).view(torch.float32)
    return value, below


def magnitude_masks(
    tensors: Sequence[torch.Tensor], sparsity: float, scope: str = "global"
) -> list[torch.Tensor]:
    """Keep-masks that zero exactly ``round(s * n)`` smallest-magnitude entries.

    ``scope="global"`` ranks all tensors together (``n`` = total size); ``"layer"`` ranks each tensor on
    its own. Ties at the threshold are broken by position (earlier tensor, then lower flat index, is
    pruned first), so the count is always exact.
    """
    return list(_magnitude_stream(tensors, sparsity, scope))


def _magnitude_stream(tensors: Sequence[torch.Tensor], sparsity: float, scope: str) -> Iterator[torch.Tensor]:
    sparsity = parse_level(sparsity)
    if isinstance(sparsity, tuple):
        raise ValueError("sparsity: magnitude_masks takes a float; use nm_mask for N:M patterns.")
    check_choice(scope, SCOPES, "scope")
    if not tensors:
        return iter(())
    if scope == "layer":
        return (next(_topk_stream([t], num_pruned(t.numel(), sparsity))) for t in tensors)
    return _topk_stream(tensors, num_pruned(sum(t.numel() for t in tensors), sparsity))


def _topk_stream(tensors: Sequence[torch.Tensor], k: int) -> Iterator[torch.Tensor]:
    """The masks of the ``k`` smallest magnitudes, one tensor at a time. The threshold over all tensors is
    found here, before the first mask is asked for; each mask is built when it is asked for."""
    if k == 0:
        return (torch.ones_like(t, dtype=torch.bool) for t in tensors)
    threshold, below = kth_smallest_abs(tensors, k)
    return _tie_broken_masks(tensors, threshold, k - below)


def _tie_broken_masks(
    tensors, threshold: torch.Tensor, ties_to_prune: torch.Tensor
) -> Iterator[torch.Tensor]:
    threshold_bits = threshold.view(torch.int32)
    # Entries equal to the threshold: the first `ties_to_prune` of them (in tensor, then index order) are
    # pruned. A running count of ties gives each its rank without a host-side search for their positions.
    ties_before = torch.zeros((), dtype=torch.int32, device=threshold.device)
    for t in tensors:
        bits = _abs_bits(t)
        tie = bits == threshold_bits.to(bits.device)
        tie_rank = torch.cumsum(tie, 0, dtype=torch.int32) + ties_before.to(bits.device)
        keep = (bits > threshold_bits.to(bits.device)) | (tie & (tie_rank > ties_to_prune.to(bits.device)))
        ties_before = tie_rank[-1].to(threshold.device)
        yield keep.view(t.shape)


def nm_mask(weight: torch.Tensor, n: int, m: int, name: str = "weight") -> torch.Tensor:
    """Keep-mask with the ``n`` largest magnitudes in every group of ``m`` consecutive entries along the
    input dimension (the last one) of a 2-D ``weight[out, in]``. Ties go to the lower index."""
    parse_level((n, m), "pattern")
    if weight.dim() != 2:
        raise ValueError(f"{name}: N:M needs a 2-D weight[out, in], got shape {tuple(weight.shape)}.")
    if weight.shape[1] % m:
        raise ValueError(
            f"{name}: input dimension {weight.shape[1]} is not divisible by M={m} of the {n}:{m} pattern."
        )
    a = weight.detach().abs().reshape(-1, m)
    # rank[j] = number of group members that beat entry j (larger, or equal with a lower index);
    # M*(M-1) elementwise comparisons are cheaper than a sort for the small M of N:M patterns.
    rank = torch.zeros(a.shape, dtype=torch.uint8, device=a.device)
    for i in range(m):
        for j in range(m):
            if i != j:
                beats = a[:, i] >= a[:, j] if i < j else a[:, i] > a[:, j]
                rank[:, j] += beats
    return (rank < n).view(weight.shape)


def check_nm_shape(weight_shape, level: Level, name: str) -> None:
    """Raise if an N:M level cannot apply to a matrix of this shape."""
    if isinstance(level, tuple):
        if len(weight_shape) != 2:
            raise ValueError(f"{name}: N:M needs a 2-D weight, got shape {tuple(weight_shape)}.")
        if weight_shape[1] % level[1]:
            raise ValueError(
                f"{name}: input dimension {weight_shape[1]} is not divisible by M={level[1]} "
                f"of the {level_name(level)} pattern."
            )


def compression_masks(
    tensors: Sequence[torch.Tensor], level: Level, scope: str = "global"
) -> list[torch.Tensor]:
    """Keep-masks for one level: magnitude Top-K (global or per layer) or N:M on every tensor."""
    return list(compression_mask_stream(tensors, level, scope))


def compression_mask_stream(
    tensors: Sequence[torch.Tensor], level: Level, scope: str = "global"
) -> Iterator[torch.Tensor]:
    """:func:`compression_masks` one tensor at a time, in order: a global ranking is done when this is
    called, and each mask is built only when the iterator reaches it — so a caller that applies each mask
    (or packs it) before taking the next never holds a bool mask for every tensor at once."""
    if isinstance(level, tuple):
        return (nm_mask(t, level[0], level[1]) for t in tensors)
    return _magnitude_stream(tensors, level, scope)


_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


def pack_mask(mask: torch.Tensor) -> torch.Tensor:
    """A bool mask as bits: ``uint8[ceil(numel / 8)]``, bit ``j`` of byte ``i`` is entry ``8 i + j`` of the
    flattened mask. An eighth of the bool mask's memory; :func:`unpack_mask` inverts it."""
    flat = mask.reshape(-1)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=mask.device)
    return (flat.view(-1, 8).to(torch.uint8) * weights).sum(-1, dtype=torch.uint8)


def unpack_mask(packed: torch.Tensor, shape) -> torch.Tensor:
    """The bool mask of ``shape`` that :func:`pack_mask` packed."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.view(-1)[: math.prod(shape)].view(shape).bool()
