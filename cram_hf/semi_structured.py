"""2:4 checkpoints that run on 2:4 kernels: target Linear weights swapped to PyTorch's semi-structured sparse
tensors (``torch.sparse.to_sparse_semi_structured``: cuSPARSELt, or CUTLASS on sm8x), for inference.

The kernels exist only on CUDA GPUs (compute capability 8.0 and newer), for fp16 / bf16 (and int8, or fp32 with
CUTLASS) weights whose shape is a multiple of the kernel's tile. Anywhere else the model stays as it is —
dense weights with exact zeros, outputs unchanged — and one warning says why. The speed-up is the kernels'
(reported for BERT-base on an A100: 1.1-1.2x at batch >= 16, slower at batch 4); ``benchmarks/bench_inference.py``
measures it on the card at hand.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Optional

import torch
from torch import nn

from .pruning import satisfies_nm
from .targets import Patterns, target_names

logger = logging.getLogger(__name__)


def _why_not(weight: torch.Tensor) -> Optional[str]:
    """Why ``weight`` cannot become a semi-structured tensor here, or ``None`` when it can."""
    if not weight.is_cuda:
        return f"2:4 kernels need a CUDA GPU (the weights are on {weight.device.type})"
    major, _ = torch.cuda.get_device_capability(weight.device)
    if major < 8:
        return (
            f"2:4 kernels need compute capability 8.0 or newer ({torch.cuda.get_device_name(weight.device)})"
        )
    from torch.sparse import SparseSemiStructuredTensor

    constraints = SparseSemiStructuredTensor._DTYPE_SHAPE_CONSTRAINTS.get(weight.dtype)
    if constraints is None:
        return f"no 2:4 kernel for {weight.dtype} weights (use fp16 or bf16)"
    rows, cols = weight.shape
    if rows % constraints.sparse_min_rows or cols % constraints.sparse_min_cols:
        return (
            f"shape {tuple(weight.shape)} is not a multiple of the kernel tile "
            f"({constraints.sparse_min_rows}, {constraints.sparse_min_cols})"
        )
    return None


@torch.no_grad()
def to_semi_structured(model: nn.Module, targets: Patterns = None) -> int:
    """Swap the 2:4 target weights of ``model`` (default targets, or regexes) to semi-structured sparse tensors
    where the kernels run, in place, for inference; returns how many were swapped. Weights that cannot be
    swapped stay dense (one warning with the reasons). A target that is not exactly 2:4 is refused
    (``ValueError``): the conversion would silently drop its extra nonzeros."""
    from torch.sparse import to_sparse_semi_structured

    params = dict(model.named_parameters())
    names = target_names(model, targets, name="targets")
    broken = [n for n in names if not satisfies_nm(params[n], 2, 4)]
    if broken:
        raise ValueError(
            f"semi_structured: {broken[0]!r} (and {len(broken) - 1} more) is not 2:4 sparse; prune it to '2:4' first."
        )
    modules = dict(model.named_modules())
    reasons: Counter = Counter()
    swapped = 0
    for name in names:
        why = _why_not(params[name])
        if why is not None:
            reasons[why] += 1
            continue
        owner = modules[name.rsplit(".", 1)[0]]
        owner.weight = nn.Parameter(to_sparse_semi_structured(params[name].detach()), requires_grad=False)
        swapped += 1
    if reasons:
        logger.warning(
            "semi_structured: %d of %d target weights stay dense with their zeros (outputs unchanged): %s.",
            sum(reasons.values()),
            len(names),
            "; ".join(f"{why} ({count})" for why, count in reasons.items()),
        )
    return swapped
