"""The masked-LM loss at masked positions only: logits and loss, the trainer that trains on it, and the
evaluation (loss, perplexity, masked-token accuracy). The data side — reproducible masking, tokenization —
is :mod:`cram_hf.mlm_data`."""

from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from .distillation import Distiller
from .mlm_data import ReproducibleMLMCollator, tokenize_for_mlm  # noqa: F401 - cram_hf 0.1 imported them here
from .trainer import CrAMTrainer


class _MaskedPositions:
    """Forward pre-hook on the output embedding (the vocabulary projection): keep only the hidden states
    at masked positions, so the ``hidden x vocab`` product — more than half the FLOPs of a small BERT such
    as MiniLM — runs on the ~15 % of tokens that carry a label."""

    def __init__(self, select):
        self.select = select

    def __call__(self, module, args):
        return (args[0][self.select],) + tuple(args[1:])


def _uncompiled(module):
    """The module ``torch.compile`` wrapped (an ``OptimizedModule`` keeps it in ``_orig_mod``), else
    ``module`` itself."""
    while True:
        inner = getattr(module, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner


def masked_lm_logits(model, inputs, select, unwrapped=None):
    """Logits ``[n_selected, vocab]`` at the positions where ``select`` is true. ``model`` may be a DDP
    wrapper or a ``torch.compile``d module; the hook goes on ``unwrapped``'s (else ``model``'s) output
    embedding, on the real module under any compile wrapper."""
    # `is not None`, not `or`: truth-testing a compiled module calls len(), which models do not support.
    head = _uncompiled(unwrapped if unwrapped is not None else model).get_output_embeddings()
    if head is None:
        raise ValueError("model: has no output embeddings (vocabulary projection); is it a masked-LM model?")
    handle = head.register_forward_pre_hook(_MaskedPositions(select))
    try:
        return model(**{k: v for k, v in inputs.items() if k != "labels"}).logits
    finally:
        handle.remove()


def masked_lm_loss(model, inputs, unwrapped=None, return_logits=False):
    """The MLM loss of ``inputs`` (mean over labelled tokens), identical to the model's own but with logits
    computed at the labelled positions only; with ``return_logits``, ``(loss, logits [n_labelled, vocab])``."""
    labels = inputs["labels"]
    select = labels != -100
    logits = masked_lm_logits(model, inputs, select, unwrapped)
    loss = torch.nn.functional.cross_entropy(logits.float(), labels[select])
    return (loss, logits) if return_logits else loss


class MaskedLMDistiller(Distiller):
    """A :class:`~cram_hf.distillation.Distiller` whose teacher projects only the masked positions (those with a
    label) onto the vocabulary: the rows the loss distils, and nothing else."""

    def run_teacher(self, inputs) -> tuple:
        if "labels" not in inputs:
            return super().run_teacher(inputs)
        return (masked_lm_logits(self.teacher, inputs, inputs["labels"] != -100),)


class CrAMTrainerForMaskedLM(CrAMTrainer):
    """``CrAMTrainer`` whose training loss skips the vocabulary projection at unmasked positions.

    Same loss value and gradients as the model's own loss; evaluation and prediction are the stock ones.
    With a teacher, both the student's and the teacher's logits are computed at the masked positions only."""

    distiller_class = MaskedLMDistiller

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if (
            return_outputs
            or "labels" not in inputs
            or self.label_smoother is not None
            or self.compute_loss_func is not None
        ):
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # unwrap_model keeps a torch.compile wrapper by default; masked_lm_logits strips it, so the hook
        # lands on the real output embedding.
        unwrapped = self.accelerator.unwrap_model(model)
        if self.distiller is None:
            return masked_lm_loss(model, inputs, unwrapped)
        teacher = self.distiller.teacher_rows(inputs, self.model)
        loss, logits = masked_lm_loss(model, inputs, unwrapped, return_logits=True)
        steps, scaled = self._accumulation(model, num_items_in_batch)
        return self.distiller.loss(loss, (logits,), teacher, accumulation_steps=steps, task_scaled=scaled)


@torch.no_grad()
def evaluate_mlm(
    model,
    dataset,
    collator,
    *,
    batch_size: int = 32,
    device=None,
    progress: bool = False,
    desc: str = "MLM eval",
) -> dict:
    """MLM loss (mean over masked tokens), perplexity and masked-token accuracy of ``model`` on a
    tokenized ``dataset``; logits are computed at masked positions only."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    try:
        batches = range(0, len(dataset), batch_size)
        for start in tqdm(batches, desc=desc, disable=not progress, leave=False):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: v.to(device) for k, v in collator(rows).items()}
            select = batch["labels"] != -100
            if not select.any():
                continue
            logits = masked_lm_logits(model, batch, select)
            target = batch["labels"][select]
            total_loss += float(torch.nn.functional.cross_entropy(logits.float(), target, reduction="sum"))
            correct += int((logits.argmax(-1) == target).sum())
            count += int(target.numel())
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("dataset: no token was masked; is the evaluation set empty?")
    loss = total_loss / count
    return {
        "loss": loss,
        "perplexity": math.exp(min(loss, 700.0)),
        "accuracy": correct / count,
        "masked_tokens": count,
    }
