"""Extractive question answering (SQuAD v1.1 / v2.0) for ``run_qa.py``: data loading, features,
post-processing (the Trainer is in ``trainer_qa.py``).

The steps follow transformers' ``examples/pytorch/question-answering`` so results are comparable:

* long contexts are split into overlapping windows (``doc_stride``) of ``max_seq_length`` tokens;
* training labels are the token positions of the answer's first character span inside a window, or the
  ``[CLS]`` position when the answer is not in that window (or the question has none);
* predictions take the ``n_best_size`` best start and end logits of every window of an example, score spans
  ``start + end`` up to ``max_answer_length`` tokens, map the best one back to characters with the offset
  mapping (hence the need for a fast tokenizer) and, for v2, answer ``""`` when the null score beats the best
  span by more than ``null_score_diff_threshold``.
"""

from __future__ import annotations

import collections
import json
import math
from typing import Optional

import numpy as np

QUESTION, CONTEXT, ANSWERS = "question", "context", "answers"


# --- data ------------------------------------------------------------------------------------------------


def _answers(raw) -> dict:
    """``{"text": [...], "answer_start": [...]}`` from that same dict or from a list of answer dicts."""
    if isinstance(raw, dict):
        return {
            "text": list(raw.get("text", [])),
            "answer_start": [int(s) for s in raw.get("answer_start", [])],
        }
    raw = raw or []
    return {"text": [a["text"] for a in raw], "answer_start": [int(a["answer_start"]) for a in raw]}


def flatten_squad(data: list) -> list[dict]:
    """The original nested SQuAD layout (``data[].paragraphs[].qas[]``) as flat records
    ``id, title, context, question, answers``. Unanswerable v2 questions get empty answers."""
    records = []
    for article in data:
        title = article.get("title", "")
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                answers = [] if qa.get("is_impossible") else qa.get("answers", [])
                records.append(
                    {
                        "id": str(qa["id"]),
                        "title": title,
                        "context": context,
                        "question": qa["question"],
                        "answers": _answers(answers),
                    }
                )
    return records


def read_squad_records(path: str) -> list[dict]:
    """Records from a SQuAD-format file: nested SQuAD json, the Hugging Face flat json (``{"data": [records]}``
    or a list of records) or json lines of records."""
    with open(path) as f:
        text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        obj = [json.loads(line) for line in text.splitlines() if line.strip()]
    data = obj.get("data") if isinstance(obj, dict) else obj
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected SQuAD json ({{'data': [...]}}), a list of records or json lines.")
    if data and isinstance(data[0], dict) and "paragraphs" in data[0]:
        return flatten_squad(data)
    records = []
    for i, r in enumerate(data):
        missing = [k for k in ("id", QUESTION, CONTEXT, ANSWERS) if k not in r]
        if missing:
            raise ValueError(
                f"{path}: record {i} lacks {', '.join(missing)} (needs id, question, context, answers)."
            )
        records.append(
            {
                "id": str(r["id"]),
                "title": r.get("title", ""),
                "context": r[CONTEXT],
                "question": r[QUESTION],
                "answers": _answers(r[ANSWERS]),
            }
        )
    return records


def squad_features():
    from datasets import Features, List, Value

    return Features(
        {
            "id": Value("string"),
            "title": Value("string"),
            "context": Value("string"),
            "question": Value("string"),
            "answers": {"text": List(Value("string")), "answer_start": List(Value("int32"))},
        }
    )


def load_squad_file(path: str):
    """A ``datasets.Dataset`` of flat SQuAD records from a local file (see :func:`read_squad_records`)."""
    from datasets import Dataset

    return Dataset.from_list(read_squad_records(path), features=squad_features())


# --- features --------------------------------------------------------------------------------------------


def check_fast_tokenizer(tokenizer) -> None:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(
            f"tokenizer: {type(tokenizer).__name__} is a slow (pure-Python) tokenizer; question answering needs a "
            "fast tokenizer (backed by the `tokenizers` library) for the offset mapping that turns token "
            "positions back into answer text. Use a model whose tokenizer has a tokenizer.json / fast class."
        )


def _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length):
    pad_on_right = tokenizer.padding_side == "right"
    # Leading spaces in questions waste window room and break some tokenizers' truncation.
    questions = [q.lstrip() for q in examples[QUESTION]]
    first, second = (questions, examples[CONTEXT]) if pad_on_right else (examples[CONTEXT], questions)
    return tokenizer(
        first,
        second,
        truncation="only_second" if pad_on_right else "only_first",
        max_length=max_seq_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if pad_to_max_length else False,
    ), (1 if pad_on_right else 0)


def prepare_train_features(
    examples, tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length=False
):
    """Windows with ``start_positions``/``end_positions`` (``[CLS]`` when the answer is not inside)."""
    enc, context_id = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    sample_mapping = enc.pop("overflow_to_sample_mapping")
    offset_mapping = enc.pop("offset_mapping")
    starts, ends = [], []
    for i, offsets in enumerate(offset_mapping):
        input_ids = enc["input_ids"][i]
        cls_index = input_ids.index(tokenizer.cls_token_id) if tokenizer.cls_token_id in input_ids else 0
        sequence_ids = enc.sequence_ids(i)
        answers = examples[ANSWERS][sample_mapping[i]]
        if not answers["answer_start"]:
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        context_tokens = [t for t, s in enumerate(sequence_ids) if s == context_id]
        first, last = context_tokens[0], context_tokens[-1]
        if not (offsets[first][0] <= start_char and offsets[last][1] >= end_char):
            starts.append(cls_index)
            ends.append(cls_index)
            continue
        # First token whose span starts after the answer start, minus one; same from the right for the end.
        token_start = first
        while token_start <= last and offsets[token_start][0] <= start_char:
            token_start += 1
        token_end = last
        while token_end >= first and offsets[token_end][1] >= end_char:
            token_end -= 1
        starts.append(token_start - 1)
        ends.append(token_end + 1)
    enc["start_positions"] = starts
    enc["end_positions"] = ends
    return enc


def prepare_validation_features(
    examples, tokenizer, max_seq_length: int, doc_stride: int, pad_to_max_length=False
):
    """Windows with ``example_id`` and an ``offset_mapping`` that is ``None`` outside the context."""
    enc, context_id = _tokenize(examples, tokenizer, max_seq_length, doc_stride, pad_to_max_length)
    sample_mapping = enc.pop("overflow_to_sample_mapping")
    enc["example_id"] = []
    for i in range(len(enc["input_ids"])):
        sequence_ids = enc.sequence_ids(i)
        enc["example_id"].append(examples["id"][sample_mapping[i]])
        enc["offset_mapping"][i] = [
            tuple(o) if sequence_ids[k] == context_id else None
            for k, o in enumerate(enc["offset_mapping"][i])
        ]
    return enc


# --- post-processing -------------------------------------------------------------------------------------


def postprocess_qa_predictions(
    examples,
    features,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    *,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
):
    """Text answers from the start/end logits of every window.

    Returns ``(predictions, nbest, null_score_diffs)``: ``predictions[id]`` is the answer text (``""`` =
    no answer, v2 only), ``nbest[id]`` the ``n_best_size`` best spans with text, logits and softmax
    probability, ``null_score_diffs[id]`` (v2) the null score minus the best span score.
    """
    if len(features) != len(start_logits) or len(features) != len(end_logits):
        raise ValueError(
            f"got {len(start_logits)} start / {len(end_logits)} end logits for {len(features)} features."
        )
    windows = collections.defaultdict(list)
    for i, example_id in enumerate(features["example_id"]):
        windows[example_id].append(i)
    all_offsets = features["offset_mapping"]
    predictions, nbest, null_diffs = {}, {}, {}
    for example in examples:
        qid, context = example["id"], example[CONTEXT]
        spans, null_score = [], None
        for i in windows.get(qid, []):
            s_logits, e_logits, offsets = start_logits[i], end_logits[i], all_offsets[i]
            # The null answer points at [CLS] (position 0); keep the smallest over windows, as the reference.
            score = float(s_logits[0] + e_logits[0])
            if null_score is None or score < null_score:
                null_score = score
            top_starts = np.argsort(s_logits)[-1 : -n_best_size - 1 : -1]
            top_ends = np.argsort(e_logits)[-1 : -n_best_size - 1 : -1]
            for s in top_starts:
                for e in top_ends:
                    if s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None:
                        continue  # outside the context (question, special tokens, padding)
                    if e < s or e - s + 1 > max_answer_length:
                        continue
                    spans.append(
                        {
                            "text": context[offsets[s][0] : offsets[e][1]],
                            "score": float(s_logits[s] + e_logits[e]),
                            "start_logit": float(s_logits[s]),
                            "end_logit": float(e_logits[e]),
                        }
                    )
        if not spans:
            # None of the n-best starts and ends form a valid span (an untrained or heavily pruned model):
            # take the best valid span of all, rather than answering nothing where an answer is required.
            spans = [
                s
                for s in (
                    _best_valid_span(
                        start_logits[i], end_logits[i], all_offsets[i], context, max_answer_length
                    )
                    for i in windows.get(qid, [])
                )
                if s
            ]
        spans.sort(key=lambda p: p["score"], reverse=True)
        spans = spans[:n_best_size]
        best = spans[0] if spans else None
        if version_2_with_negative:
            # A span implies a window, so null_score is set whenever best is.
            diff = math.inf if best is None else null_score - best["score"]
            null_diffs[qid] = float(diff)
            predictions[qid] = "" if best is None or diff > null_score_diff_threshold else best["text"]
        else:
            predictions[qid] = best["text"] if best is not None else ""
        nbest[qid] = _with_probabilities(spans)
    return predictions, nbest, null_diffs


def _best_valid_span(s_logits, e_logits, offsets, context, max_answer_length) -> Optional[dict]:
    """Exhaustive search over spans inside the context of one window, ``max_answer_length`` tokens at most."""
    inside = np.array([o is not None for o in offsets] + [False] * (len(s_logits) - len(offsets)))
    if not inside.any():
        return None
    s_logits, e_logits = np.asarray(s_logits, dtype=np.float64), np.asarray(e_logits, dtype=np.float64)
    n = len(s_logits)
    scores = s_logits[:, None] + e_logits[None, :]
    starts, ends = np.arange(n)[:, None], np.arange(n)[None, :]
    valid = (ends >= starts) & (ends - starts < max_answer_length) & inside[:, None] & inside[None, :]
    scores = np.where(valid, scores, -np.inf)
    s, e = np.unravel_index(int(np.argmax(scores)), scores.shape)
    if not np.isfinite(scores[s, e]):
        return None
    return {
        "text": context[offsets[s][0] : offsets[e][1]],
        "score": float(scores[s, e]),
        "start_logit": float(s_logits[s]),
        "end_logit": float(e_logits[e]),
    }


def _with_probabilities(spans: list[dict]) -> list[dict]:
    if not spans:
        return []
    scores = np.array([p["score"] for p in spans])
    probs = np.exp(scores - scores.max())
    probs /= probs.sum()
    return [{**p, "probability": float(q)} for p, q in zip(spans, probs)]


def references(examples) -> dict:
    """``{id: answers}`` for the metrics."""
    return {qid: answers for qid, answers in zip(examples["id"], examples[ANSWERS])}
