"""Calibration data for the calibrated pruners: a few hundred text samples, tokenized into padded batches.

Sources: a ``.txt`` file with one sample per line (any model), a csv/json/jsonl file with a text column, a
``datasets`` dataset, or a list of strings. Samples are drawn with a fixed seed, so the same call gives the
same calibration set; padding is marked by the attention mask, which the pruners use to ignore it.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Optional, Sequence

from .choices import TABLE_EXTENSIONS, TEXT_EXTENSIONS, extension

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "sentence", "sentence1", "question", "content")


def check_calibration_file(path: str, name: str = "calibration_file") -> None:
    """The one check of a calibration file, made before any model loads: it exists, is a file (not a folder),
    has an extension :func:`calibration_batches` reads, and holds some text. Errors name ``name``."""
    from .files import check_not_empty

    if os.path.isdir(path):
        raise IsADirectoryError(f"{name}: {path!r} is a folder; give one text file (a sample per line).")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{name}: no such file {path!r}.")
    if extension(path) not in TEXT_EXTENSIONS + TABLE_EXTENSIONS:
        raise ValueError(
            f"{name}: needs a {'/'.join(TEXT_EXTENSIONS + TABLE_EXTENSIONS)} file, got {path!r}."
        )
    check_not_empty(path, name)


def _texts_from_file(path: str, text_column: Optional[str]) -> list[str]:
    check_calibration_file(path)
    ext = extension(path)
    if ext in TEXT_EXTENSIONS:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    from datasets import load_dataset

    data = load_dataset("csv" if ext == ".csv" else "json", data_files=path, split="train")
    return _texts_from_dataset(data, text_column, "calibration_file")


def _texts_from_dataset(data, text_column: Optional[str], name: str) -> list[str]:
    columns = list(data.column_names)
    column = text_column or next((c for c in TEXT_COLUMNS if c in columns), None)
    if column is None or column not in columns:
        raise ValueError(
            f"{name}: no text column {text_column or TEXT_COLUMNS} (columns: {columns}); pass text_column."
        )
    return [str(t) for t in data[column] if t is not None and str(t).strip()]


def fit_seq_length(requested: int, config, name: str = "max_seq_length") -> int:
    """``requested``, or the model's maximum input length (``max_position_embeddings``) if that is shorter, with
    a warning: longer inputs would fail inside the model's embeddings with a shape error."""
    limit = getattr(config, "max_position_embeddings", None)
    if isinstance(limit, int) and 0 < limit < requested:
        logger.warning(
            "%s: %d is longer than the model takes (%d positions); using %d.", name, requested, limit, limit
        )
        return limit
    return requested


def calibration_batches(
    source,
    tokenizer,
    *,
    num_samples: int = 128,
    max_seq_length: int = 128,
    batch_size: int = 16,
    text_column: Optional[str] = None,
    seed: int = 0,
) -> list[dict]:
    """``num_samples`` samples of ``source`` (drawn with ``seed``; all of them if there are fewer),
    tokenized with truncation to ``max_seq_length`` and padded per batch: a list of ``{"input_ids",
    "attention_mask", ...}`` tensor dicts for :func:`cram_hf.prune` with a calibrated method."""
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_calibration_samples: must be a positive integer, got {num_samples!r}.")
    if not isinstance(max_seq_length, int) or max_seq_length < 2:
        raise ValueError(f"max_seq_length: must be an integer >= 2, got {max_seq_length!r}.")
    if isinstance(source, (str, os.PathLike)):
        texts = _texts_from_file(os.fspath(source), text_column)
    elif isinstance(source, Sequence) and all(isinstance(t, str) for t in source):
        texts = [t for t in source if t.strip()]
    elif hasattr(source, "column_names"):
        texts = _texts_from_dataset(source, text_column, "calibration")
    else:
        raise ValueError(
            "calibration: give a file path, a datasets dataset or a list of strings, got "
            f"{type(source).__name__}."
        )
    if not texts:
        raise ValueError("calibration: no non-empty text sample found.")
    if len(texts) > num_samples:
        texts = random.Random(seed).sample(texts, num_samples)
    elif len(texts) < num_samples:
        logger.warning(
            "num_calibration_samples: %d asked for, the calibration data has %d; using all %d.",
            num_samples,
            len(texts),
            len(texts),
        )
    return [
        dict(
            tokenizer(
                texts[i : i + batch_size],
                padding=True,
                truncation=True,
                max_length=max_seq_length,
                return_tensors="pt",
            )
        )
        for i in range(0, len(texts), batch_size)
    ]
