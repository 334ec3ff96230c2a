"""Which weights get compressed: the default rule and regex selection."""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence, Union

from torch import nn

Patterns = Optional[Union[str, Sequence[str]]]


def default_target_names(model: nn.Module) -> list[str]:
    """The 2-D ``weight`` of every ``nn.Linear`` inside the model's repeated transformer blocks.

    A block is a child of an ``nn.ModuleList`` (``bert.encoder.layer.3``, ``model.layers.0``, ...), so
    embeddings, pooler, MLM/classification heads — which sit outside the layer stack — are never picked.
    For bert-base: query, key, value, attention output, intermediate and output of each of the 12 layers.
    """
    names = []
    seen = set()
    for list_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        for sub_name, sub in module.named_modules(prefix=list_name):
            if isinstance(sub, nn.Linear) and sub.weight.dim() == 2 and id(sub.weight) not in seen:
                seen.add(id(sub.weight))
                names.append(f"{sub_name}.weight")
    return names


def _as_patterns(targets: Patterns) -> list[str]:
    if targets is None:
        return []
    if isinstance(targets, str):
        return [targets]
    return list(targets)


def validate_patterns(targets: Patterns, name: str = "cram_targets") -> list[str]:
    """Compile-check regexes; raise ``ValueError`` naming the bad one."""
    patterns = _as_patterns(targets)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise ValueError(f"{name}: each target must be a non-empty regex string, got {p!r}.")
        try:
            re.compile(p)
        except re.error as err:
            raise ValueError(f"{name}: {p!r} is not a valid regular expression ({err}).") from None
    return patterns


def target_names(model: nn.Module, targets: Patterns = None, name: str = "cram_targets") -> list[str]:
    """Names of the parameters to compress, in ``named_parameters`` order.

    ``targets=None`` applies :func:`default_target_names`; otherwise each regex is searched
    (``re.search``) in every parameter name. A regex that matches nothing, a match that is not a 2-D
    tensor, or an empty result is an error.
    """
    params = dict(model.named_parameters())
    patterns = validate_patterns(targets, name)
    if not patterns:
        chosen = default_target_names(model)
        if not chosen:
            raise ValueError(
                f"{name}: the model has no nn.Linear inside an nn.ModuleList, so the default rule finds no "
                f"target; pass regexes on parameter names, e.g. {name}=[r'encoder\\.layer\\.\\d+\\..*weight$']."
            )
        return chosen
    chosen = []
    for p in patterns:
        hits = [n for n in params if re.search(p, n)]
        if not hits:
            sample = ", ".join(list(params)[:6])
            raise ValueError(f"{name}: regex {p!r} matches no parameter (names look like: {sample}, ...).")
        for n in hits:
            if params[n].dim() != 2:
                raise ValueError(
                    f"{name}: regex {p!r} matches {n!r} of shape {tuple(params[n].shape)}; only 2-D weight "
                    f"matrices can be compressed (tighten the regex, e.g. end it with 'weight$')."
                )
        chosen.extend(hits)
    order = {n: i for i, n in enumerate(params)}
    return sorted(set(chosen), key=order.__getitem__)


def named_targets(model: nn.Module, targets: Patterns = None, name: str = "cram_targets") -> list[tuple[str, nn.Parameter]]:
    params = dict(model.named_parameters())
    return [(n, params[n]) for n in target_names(model, targets, name)]


def unique_trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Trainable parameters without duplicates (tied weights appear once)."""
    out, seen = [], set()
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
