"""Masked-LM data: BERT masking that is a function of (seed, batch), so resumed runs and compared models see
the same masks, and tokenization into blocks or lines as transformers' ``run_mlm.py`` does."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from itertools import chain
from typing import Any, Optional

import numpy as np
import torch


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


def tokenize_for_mlm(
    raw,
    tokenizer,
    *,
    max_seq_length: int,
    line_by_line: bool = False,
    text_column: Optional[str] = None,
    num_proc: Optional[int] = None,
    overwrite_cache: bool = False,
):
    """Tokenize a ``datasets`` dataset (or DatasetDict) of text for MLM, as transformers' ``run_mlm.py``:
    one example per non-empty line (``line_by_line``) or the text concatenated and cut into blocks of
    ``max_seq_length`` tokens."""
    column_names = list(
        raw.column_names if not isinstance(raw.column_names, dict) else next(iter(raw.column_names.values()))
    )
    text_column = text_column or ("text" if "text" in column_names else column_names[0])
    if text_column not in column_names:
        raise ValueError(
            f"text_column: {text_column!r} is not a column of the data (columns: {column_names})."
        )
    common = dict(
        batched=True, num_proc=num_proc, load_from_cache_file=not overwrite_cache, remove_columns=column_names
    )
    if line_by_line:

        def tokenize_lines(examples):
            lines = [line for line in examples[text_column] if line and not line.isspace()]
            return tokenizer(
                lines, truncation=True, max_length=max_seq_length, return_special_tokens_mask=False
            )

        return raw.map(tokenize_lines, desc="Tokenizing lines", **common)

    if tokenizer.cls_token_id is None or tokenizer.sep_token_id is None:
        raise ValueError(
            "tokenizer: needs cls and sep tokens to build MLM blocks; use --line_by_line instead."
        )

    def tokenize(examples):
        return tokenizer(examples[text_column], add_special_tokens=False, return_attention_mask=False)

    def group(examples):
        # Blocks of max_seq_length - 2 word pieces, each wrapped in [CLS] ... [SEP] like the pre-training data.
        body = max_seq_length - 2
        ids = list(chain.from_iterable(examples["input_ids"]))
        total = (len(ids) // body) * body
        cls, sep = tokenizer.cls_token_id, tokenizer.sep_token_id
        return {"input_ids": [[cls] + ids[i : i + body] + [sep] for i in range(0, total, body)]}

    tokenized = raw.map(tokenize, desc="Tokenizing", **common)
    columns = tokenized.column_names
    columns = list(next(iter(columns.values())) if isinstance(columns, dict) else columns)
    return tokenized.map(
        group,
        batched=True,
        num_proc=num_proc,
        load_from_cache_file=not overwrite_cache,
        remove_columns=columns,
        desc=f"Grouping into blocks of {max_seq_length}",
    )
