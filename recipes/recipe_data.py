"""What the recipes do alike with their data once it is loaded: the ``--max_*_samples`` cut (:func:`limit`)
and, in the fine-tuning recipes (``run_glue.py``, ``run_qa.py``), the window length the tokenizer allows
(:func:`window_length`) and the collator ``--pad_to_max_length`` asks for (:func:`padding_collator`)."""

from __future__ import annotations

import logging
from typing import Optional

from transformers import DataCollatorWithPadding, default_data_collator


def window_length(max_seq_length: int, tokenizer, logger: logging.Logger) -> int:
    """``--max_seq_length``, capped at what the model takes (with a warning, not an error, as transformers'
    examples do)."""
    length = min(max_seq_length, tokenizer.model_max_length)
    if max_seq_length > tokenizer.model_max_length:
        logger.warning(
            f"max_seq_length {max_seq_length} > the model's maximum {tokenizer.model_max_length}; "
            f"using {length}."
        )
    return length


def limit(dataset, n: Optional[int]):
    """The first ``n`` examples of ``dataset`` (all of them when ``n`` is ``None``)."""
    return dataset.select(range(min(len(dataset), n))) if n is not None else dataset


def padding_collator(tokenizer, pad_to_max_length: bool, fp16: bool):
    """Inputs padded already (``--pad_to_max_length``) are only stacked; otherwise each batch is padded to its
    longest input, to a multiple of 8 under fp16 (what tensor cores want)."""
    if pad_to_max_length:
        return default_data_collator
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if fp16 else None)
