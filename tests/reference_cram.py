"""An independent, deliberately naive implementation of the CrAM direction (docs/design.md, "The update").

It shares no code with cram_hf: masks come from a full stable sort, the passes from torch.func on
copies of the parameters. Used to check the trainer's update."""

import re

import torch
from torch.func import functional_call


def reference_targets(model, patterns=None):
    names = [n for n, _ in model.named_parameters()]
    if patterns is None:
        return [n for n in names if re.search(r"\.layer\.\d+\..*\.weight$", n) and "LayerNorm" not in n]
    return [n for n in names if any(re.search(p, n) for p in patterns)]


def reference_masks(values, level, scope):
    """values: dict name -> tensor (θ̃ of the targets). Returns dict name -> float 0/1 keep-mask."""
    if isinstance(level, str):
        n, m = map(int, level.split(":"))
        out = {}
        for name, v in values.items():
            groups = v.abs().reshape(-1, m)
            order = torch.sort(groups, dim=1, descending=True, stable=True).indices
            keep = torch.zeros_like(groups)
            keep.scatter_(1, order[:, :n], 1.0)
            out[name] = keep.reshape(v.shape)
        return out
    if scope == "layer":
        return {name: reference_masks({name: v}, level, "global")[name] for name, v in values.items()}
    flat = torch.cat([v.abs().reshape(-1) for v in values.values()])
    k = int(round(level * flat.numel()))
    order = torch.sort(flat, stable=True).indices
    keep = torch.ones_like(flat)
    keep[order[:k]] = 0.0
    out, offset = {}, 0
    for name, v in values.items():
        out[name] = keep[offset : offset + v.numel()].reshape(v.shape)
        offset += v.numel()
    return out


def reference_direction(
    model, batch, *, rho, level, plus=True, sparse_grad=True, scope="global", grad_norm=False, targets=None
):
    """d for one micro-batch, as a dict name -> tensor (every trainable parameter)."""
    model.eval()  # dropout off: both passes must see the same function
    theta = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    names = list(theta)

    def grad_at(params):
        params = {n: t.clone().requires_grad_(True) for n, t in params.items()}
        loss = functional_call(model, params, args=(), kwargs=batch).loss
        grads = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True)
        return {n: (g if g is not None else torch.zeros_like(params[n])) for n, g in zip(names, grads)}, loss

    g, _ = grad_at(theta)
    scale = rho
    if grad_norm:
        scale = rho / torch.sqrt(sum((x.double() ** 2).sum() for x in g.values())).item()
    perturbed = {n: theta[n] + scale * g[n] for n in names}
    target_names = reference_targets(model, targets)
    masks = {}
    if level is not None:
        masks = reference_masks({n: perturbed[n] for n in target_names}, level, scope)
    compressed = {n: perturbed[n] * masks[n] if n in masks else perturbed[n] for n in names}
    g2, _ = grad_at(compressed)
    d = {}
    for n in names:
        d[n] = g2[n] * masks[n] if (sparse_grad and n in masks) else g2[n].clone()
        if plus:
            d[n] = d[n] + g[n]
    model.train()
    return d, masks
