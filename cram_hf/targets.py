"""Which weights get compressed: the default rule and regex selection."""

from __future__ import annotations

import re
from typing import Iterable, Optional, Sequence, Union

from torch import nn

Patterns = Optional[Union[str, Sequence[str]]]


def _is_peft_tuner_layer(module: nn.Module) -> bool:
    """Whether ``module`` is a peft adapter layer (a subclass of ``peft.tuners.tuners_utils.BaseTunerLayer``:
    LoRA, DoRA, AdaLoRA, IA3, ... wrappers). Tested on the class hierarchy, so peft need not be installed."""
    return any(
        c.__name__ == "BaseTunerLayer" and c.__module__.startswith("peft.") for c in type(module).__mro__
    )


def _adapter_module_ids(model: nn.Module) -> set[int]:
    """Ids of the modules that belong to a peft adapter: everything under a tuner layer except its
    ``base_layer`` (the wrapped original module, whose weight is the one deployed)."""
    out: set[int] = set()
    for module in model.modules():
        if _is_peft_tuner_layer(module):
            for child_name, child in module.named_children():
                if child_name != "base_layer":
                    out.update(id(m) for m in child.modules())
    return out


def default_target_names(model: nn.Module) -> list[str]:
    """The 2-D ``weight`` of every ``nn.Linear`` inside the model's repeated transformer blocks.

    A block is a child of an ``nn.ModuleList`` (``bert.encoder.layer.3``, ``model.layers.0``, ...), so
    embeddings, pooler, MLM/classification heads — which sit outside the layer stack — are never picked.
    For bert-base: query, key, value, attention output, intermediate and output of each of the 12 layers.

    On a PEFT model (``peft.get_peft_model``) the adapters' own Linears (``lora_A``, ``lora_B``, ...) are
    skipped and the wrapped ``base_layer.weight`` is kept: CrAM targets the weights that are deployed pruned,
    and the adapters are merged into those (``merge_and_unload``) or dropped, never pruned on their own.
    """
    names = []
    seen = set()
    adapters = _adapter_module_ids(model)
    for list_name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        for sub_name, sub in module.named_modules(prefix=list_name):
            if (
                isinstance(sub, nn.Linear)
                and id(sub) not in adapters
                and sub.weight.dim() == 2
                and id(sub.weight) not in seen
            ):
                seen.add(id(sub.weight))
                names.append(f"{sub_name}.weight")
    return names


def _suggested_regex(model: nn.Module, limit: int = 3) -> tuple[Optional[str], list[str]]:
    """A regex :func:`target_names` accepts for ``model``, naming up to ``limit`` of its 2-D weights
    (``nn.Linear`` weights first, else any 2-D parameter called ``*weight``), and all the candidates."""
    params = dict(model.named_parameters())
    adapters = _adapter_module_ids(model)
    linear_ids = {
        id(m.weight)
        for m in model.modules()
        if isinstance(m, nn.Linear) and id(m) not in adapters and m.weight.dim() == 2
    }
    candidates = [n for n, p in params.items() if id(p) in linear_ids]
    if not candidates:
        candidates = [n for n, p in params.items() if p.dim() == 2 and n.endswith("weight")]
    if not candidates:
        return None, []
    alternatives = "|".join(re.escape(n) for n in candidates[:limit])
    return f"^(?:{alternatives})$", candidates


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
            regex, candidates = _suggested_regex(model)
            head = (
                f"{name}: the model has no nn.Linear inside an nn.ModuleList, so the default rule finds "
                f"no target"
            )
            if regex is None:
                raise ValueError(f"{head}, and it has no 2-D weight matrix that could be compressed.")
            shown = ", ".join(candidates[:3]) + (", ..." if len(candidates) > 3 else "")
            raise ValueError(
                f"{head}; pass regexes on parameter names (searched with re.search; every match must be a "
                f"2-D weight), e.g. {name}=[r'{regex}'] (2-D weights of this model: {shown}; "
                f"{len(candidates)} in all)."
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


def named_targets(
    model: nn.Module, targets: Patterns = None, name: str = "cram_targets"
) -> list[tuple[str, nn.Parameter]]:
    params = dict(model.named_parameters())
    return [(n, params[n]) for n in target_names(model, targets, name)]


def check_trainable_targets(targets: Sequence[tuple[str, nn.Parameter]], name: str = "cram_targets") -> None:
    """Raise ``ValueError`` when every chosen target is frozen (``requires_grad=False``).

    ``targets`` is what :func:`named_targets` returns. CrAM makes the targets robust to pruning by training
    them; frozen ones never move, so a run whose targets are all frozen — typically a LoRA/PEFT model,
    where peft freezes the base weights — would train the adapters and leave the weights to be pruned
    exactly as they were. An empty list passes (:func:`target_names` refuses an empty selection itself).
    """
    targets = list(targets)
    if not targets or any(p.requires_grad for _, p in targets):
        return
    more = len(targets) - 3
    sample = ", ".join(n for n, _ in targets[:3]) + (f" and {more} more" if more > 0 else "")
    raise ValueError(
        f"{name}: all {len(targets)} target weights are frozen (requires_grad=False), e.g. {sample}. "
        f"CrAM on a LoRA/PEFT model whose base weights are frozen cannot make them robust to pruning: it "
        f"only trains what has a gradient. Merge the adapters first and train the merged weights with CrAM "
        f"(model = model.merge_and_unload(); model.requires_grad_(True) — peft leaves the merged weights "
        f"frozen), or unfreeze (train) the base weights, or pass {name} explicitly naming trainable 2-D "
        f"weights."
    )


def resolve_parameter_names(model: nn.Module, names) -> list[str]:
    """Map parameter names recorded with one model class onto ``model``.

    A checkpoint pruned as ``BertForMaskedLM`` names ``bert.encoder.layer.0...``; a bare ``BertModel`` names
    ``encoder.layer.0...``. A name matches exactly, or as a dotted suffix in either direction, and must match
    exactly one parameter.
    """
    params = list(dict(model.named_parameters()))
    available = set(params)
    resolved = []
    for name in names:
        if name in available:
            resolved.append(name)
            continue
        hits = [p for p in params if p.endswith("." + name) or name.endswith("." + p)]
        if len(hits) != 1:
            what = "no parameter" if not hits else f"{len(hits)} parameters ({', '.join(hits[:3])})"
            raise ValueError(
                f"sparsity_config targets: {name!r} matches {what} of the model "
                f"({type(model).__name__}); the checkpoint and the model disagree on the pruned matrices."
            )
        resolved.append(hits[0])
    return resolved


def unique_trainable(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    """Trainable parameters without duplicates (tied weights appear once)."""
    out, seen = [], set()
    for p in params:
        if p.requires_grad and id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out
