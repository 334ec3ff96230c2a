"""Masked-LM data and evaluation: reproducible masking and metrics computed at masked positions only."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from itertools import chain
from typing import Any, Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from .trainer import CrAMTrainer


@dataclass
class ReproducibleMLMCollator:
    """BERT masking (15 %: 80 % [MASK], 10 % random token, 10 % unchanged) drawn from a generator seeded
    by ``(seed, content of the batch)``.

    The stock ``DataCollatorForLanguageModeling`` draws from the global RNG, which a resumed run does not
    restore, so a resumed MLM run diverges. Here the masks depend only on the seed and the batch itself:
    the Trainer restores the data order on resume, hence the masks too; and an evaluation set gets the
    same masks for every model compared on it.
    """

    tokenizer: Any
    mlm_probability: float = 0.15
    seed: int = 0
    pad_to_multiple_of: Optional[int] = None

    def __post_init__(self):
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability: must be in (0, 1), got {self.mlm_probability}.")
        if self.tokenizer.mask_token is None:
            raise ValueError("tokenizer: has no mask token, so it cannot be used for masked-LM training.")

    def __call__(self, examples):
        batch = self.tokenizer.pad(examples, return_tensors="pt", pad_to_multiple_of=self.pad_to_multiple_of)
        batch.pop("labels", None)
        inputs = batch["input_ids"].clone()
        key = zlib.crc32(inputs.numpy().astype(np.int64).tobytes())
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + key) % (2**63))
        labels = inputs.clone()
        special = torch.tensor(
            [
                self.tokenizer.get_special_tokens_mask(row, already_has_special_tokens=True)
                for row in inputs.tolist()
            ],
            dtype=torch.bool,
        )
        if self.tokenizer.pad_token_id is not None:
            special |= inputs == self.tokenizer.pad_token_id
        prob = torch.full(inputs.shape, self.mlm_probability).masked_fill(special, 0.0)
        masked = torch.bernoulli(prob, generator=gen).bool()
        labels[~masked] = -100
        replaced = torch.bernoulli(torch.full(inputs.shape, 0.8), generator=gen).bool() & masked
        inputs[replaced] = self.tokenizer.mask_token_id
        randomized = torch.bernoulli(torch.full(inputs.shape, 0.5), generator=gen).bool() & masked & ~replaced
        inputs[randomized] = torch.randint(len(self.tokenizer), inputs.shape, generator=gen)[randomized]
        batch["input_ids"] = inputs
        batch["labels"] = labels
        return batch


def tokenize_for_mlm(raw, tokenizer, *, max_seq_length: int, line_by_line: bool = False,
                     text_column: Optional[str] = None, num_proc: Optional[int] = None,
                     overwrite_cache: bool = False):
    """Tokenize a ``datasets`` dataset (or DatasetDict) of text for MLM, as transformers' ``run_mlm.py``:
    one example per non-empty line (``line_by_line``) or the text concatenated and cut into blocks of
    ``max_seq_length`` tokens."""
    column_names = list(raw.column_names if not isinstance(raw.column_names, dict)
                        else next(iter(raw.column_names.values())))
    text_column = text_column or ("text" if "text" in column_names else column_names[0])
    if text_column not in column_names:
        raise ValueError(f"text_column: {text_column!r} is not a column of the data (columns: {column_names}).")
    common = dict(batched=True, num_proc=num_proc, load_from_cache_file=not overwrite_cache,
                  remove_columns=column_names)
    if line_by_line:
        def tokenize_lines(examples):
            lines = [line for line in examples[text_column] if line and not line.isspace()]
            return tokenizer(lines, truncation=True, max_length=max_seq_length,
                             return_special_tokens_mask=False)
        return raw.map(tokenize_lines, desc="Tokenizing lines", **common)

    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError("tokenizer: needs cls and sep tokens to build MLM blocks; use --line_by_line instead.")

    def tokenize(examples):
        return tokenizer(examples[text_column], add_special_tokens=False, return_attention_mask=False)

    def group(examples):
        # Blocks of max_seq_length - 2 word pieces, each wrapped in [CLS] ... [SEP] like the pre-training data.
        body = max_seq_length - 2
        ids = list(chain.from_iterable(examples["input_ids"]))
        total = (len(ids) // body) * body
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        return {"input_ids": [[cls] + ids[i:i + body] + [sep] for i in range(0, total, body)]}

    tokenized = raw.map(tokenize, desc="Tokenizing", **common)
    columns = tokenized.column_names
    columns = list(next(iter(columns.values())) if isinstance(columns, dict) else columns)
    return tokenized.map(group, batched=True, num_proc=num_proc, load_from_cache_file=not overwrite_cache,
                         remove_columns=columns, desc=f"Grouping into blocks of {max_seq_length}")


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


def masked_lm_loss(model, inputs, unwrapped=None):
    """The MLM loss of ``inputs`` (mean over labelled tokens), identical to the model's own but with logits
    computed at the labelled positions only."""
    labels = inputs["labels"]
    select = labels != -100
    logits = masked_lm_logits(model, inputs, select, unwrapped)
    return torch.nn.functional.cross_entropy(logits.float(), labels[select])


class CrAMTrainerForMaskedLM(CrAMTrainer):
    """``CrAMTrainer`` whose training loss skips the vocabulary projection at unmasked positions.

    Same loss value and gradients as the model's own loss; evaluation and prediction are the stock ones."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or "labels" not in inputs or self.label_smoother is not None \
                or self.compute_loss_func is not None:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        # unwrap_model keeps a torch.compile wrapper by default; masked_lm_logits strips it, so the hook
        # lands on the real output embedding.
        return masked_lm_loss(model, inputs, self.accelerator.unwrap_model(model))


@torch.no_grad()
def evaluate_mlm(model, dataset, collator, *, batch_size: int = 32, device=None,
                 progress: bool = False, desc: str = "MLM eval") -> dict:
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
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "accuracy": correct / count,
            "masked_tokens": count}
