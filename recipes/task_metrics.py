"""The metrics GLUE and SQuAD report, computed locally for ``run_glue.py`` and ``run_qa.py``.

``evaluate.load("glue" | "squad" | "squad_v2")`` downloads metric scripts from the Hub, which is not always
reachable, so the same numbers are computed here: GLUE's through :mod:`cram_hf.metrics`, SQuAD exact match and
F1 with the official answer normalisation. Key names and scales follow the ``evaluate`` metrics (GLUE in
``[0, 1]``, SQuAD in ``[0, 100]``) so results stay comparable.
"""

from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Optional

from cram_hf.metrics import accuracy, f1, matthews_correlation, pearson, spearman

GLUE_TASKS = ("cola", "mnli", "mrpc", "qnli", "qqp", "rte", "sst2", "stsb", "wnli")


def glue_metrics(task_name: str, predictions, labels) -> dict:
    """The metrics GLUE reports for ``task_name``: Matthews correlation for CoLA, Pearson/Spearman for STS-B,
    accuracy and F1 for MRPC and QQP, accuracy otherwise. ``predictions`` are class ids (scores for STS-B)."""
    task = task_name.lower()
    if task in ("mnli_matched", "mnli_mismatched", "mnli-mm"):
        task = "mnli"
    if task not in GLUE_TASKS:
        raise ValueError(
            f"task_name: {task_name!r} is not a GLUE task; choose one of {', '.join(GLUE_TASKS)}."
        )
    if task == "cola":
        return {"matthews_correlation": matthews_correlation(predictions, labels)}
    if task == "stsb":
        return {"pearson": pearson(predictions, labels), "spearmanr": spearman(predictions, labels)}
    if task in ("mrpc", "qqp"):
        return {"accuracy": accuracy(predictions, labels), "f1": f1(predictions, labels)}
    return {"accuracy": accuracy(predictions, labels)}


# --- SQuAD -----------------------------------------------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalisation: lower case, drop punctuation, drop the articles a/an/the, collapse
    whitespace (in that order, as in the v1.1 and v2.0 evaluation scripts)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split() if text else []


def exact_match_score(prediction: str, gold: str) -> int:
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    """Token-overlap F1 between normalised answers. If either side is empty (a no-answer), F1 is 1 when both
    are empty and 0 otherwise, as in the v2.0 script."""
    pred_tokens, gold_tokens = _tokens(prediction), _tokens(gold)
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_tokens), same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _gold_texts(answers) -> list[str]:
    """Gold answer strings from ``{"text": [...]}``, a list of strings, or a list of ``{"text": ...}``."""
    if isinstance(answers, Mapping):
        texts = list(answers.get("text", []))
    else:
        texts = [a["text"] if isinstance(a, Mapping) else a for a in answers]
    return texts


def _check_ids(predictions: Mapping[str, str], references: Mapping) -> None:
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(f"predictions: no answer for {len(missing)} question(s), e.g. id {missing[0]!r}.")


def squad_metrics(predictions: Mapping[str, str], references: Mapping) -> dict:
    """SQuAD v1.1: ``{"exact_match", "f1"}`` in percent, each the best over a question's gold answers.

    ``predictions`` maps question id to predicted text; ``references`` maps id to its answers
    (``{"text": [...], "answer_start": [...]}`` as in the HF datasets, or a list of strings).
    """
    _check_ids(predictions, references)
    em = f1_total = 0.0
    for qid, answers in references.items():
        golds = _gold_texts(answers)
        if not golds:
            raise ValueError(
                f"references: question {qid!r} has no gold answer (SQuAD v1.1 needs one; use "
                "squad_v2_metrics for unanswerable questions)."
            )
        em += max(exact_match_score(predictions[qid], g) for g in golds)
        f1_total += max(f1_score(predictions[qid], g) for g in golds)
    n = len(references)
    return {"exact_match": 100.0 * em / n, "f1": 100.0 * f1_total / n}


def squad_v2_metrics(
    predictions: Mapping[str, str],
    references: Mapping,
    no_answer_probabilities: Optional[Mapping[str, float]] = None,
    no_answer_threshold: float = 1.0,
) -> dict:
    """SQuAD v2.0, as its official script: ``exact``, ``f1``, ``total`` and the same split into questions with
    an answer (``HasAns_*``) and without (``NoAns_*``; gold is the empty string, predict ``""`` to abstain).

    With ``no_answer_probabilities`` a prediction whose probability exceeds ``no_answer_threshold`` counts as
    abstaining, and ``best_exact``/``best_f1`` with their thresholds are added (the best threshold over the
    given probabilities).
    """
    _check_ids(predictions, references)
    exact, f1s, has_answer = {}, {}, {}
    for qid, answers in references.items():
        texts = _gold_texts(answers)
        has_answer[qid] = bool(texts)
        # As the official script: golds that normalise to nothing are dropped; none left means "no answer".
        golds = [g for g in texts if normalize_answer(g)] or [""]
        pred = predictions[qid]
        exact[qid] = max(exact_match_score(pred, g) for g in golds)
        f1s[qid] = max(f1_score(pred, g) for g in golds)
    if no_answer_probabilities is not None:
        raw_exact, raw_f1 = dict(exact), dict(f1s)
        for qid in references:
            if no_answer_probabilities[qid] > no_answer_threshold:
                exact[qid] = f1s[qid] = float(not has_answer[qid])

    def summary(ids, prefix=""):
        n = len(ids)
        out = {f"{prefix}total": n}
        if n:
            out[f"{prefix}exact"] = 100.0 * sum(exact[i] for i in ids) / n
            out[f"{prefix}f1"] = 100.0 * sum(f1s[i] for i in ids) / n
        return out

    ids = list(references)
    result = summary(ids)
    result.update(summary([i for i in ids if has_answer[i]], "HasAns_"))
    result.update(summary([i for i in ids if not has_answer[i]], "NoAns_"))
    if no_answer_probabilities is not None:
        for name, raw in (("exact", raw_exact), ("f1", raw_f1)):
            best, thresh = _best_threshold(raw, no_answer_probabilities, has_answer, predictions)
            result[f"best_{name}"], result[f"best_{name}_thresh"] = best, thresh
    return result


def _best_threshold(scores, na_probs, has_answer, predictions) -> tuple[float, float]:
    """The official ``find_best_thresh``: sweep the no-answer threshold over the sorted probabilities."""
    score = current = float(sum(not has for has in has_answer.values()))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda q: na_probs[q]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            diff = scores[qid]
        elif predictions[qid]:
            diff = -1
        else:
            diff = 0
        current += diff
        if current > score:
            score, best_thresh = current, na_probs[qid]
    return 100.0 * score / len(scores), float(best_thresh)


def qa_metrics(
    predictions: Mapping[str, str],
    references: Mapping,
    version_2_with_negative: bool,
    no_answer_probabilities: Optional[Mapping[str, float]] = None,
) -> dict:
    """SQuAD v1.1 or v2.0 metrics, whichever the data is."""
    if version_2_with_negative:
        return squad_v2_metrics(predictions, references, no_answer_probabilities)
    return squad_metrics(predictions, references)
