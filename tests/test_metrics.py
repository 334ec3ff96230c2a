"""Local metrics against hand-computed values: the library's, and the recipes' GLUE and SQuAD ones."""

import math

import pytest

import task_metrics as T
from cram_hf import metrics as M


def test_accuracy_f1_matthews_by_hand():
    assert M.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    # preds 1,1,0,1 vs labels 1,0,0,1: TP 2, FP 1, FN 0, TN 1.
    assert M.f1([1, 1, 0, 1], [1, 0, 0, 1]) == pytest.approx(0.8)
    assert M.matthews_correlation([1, 1, 0, 1], [1, 0, 0, 1]) == pytest.approx(2 / math.sqrt(12))
    # Macro F1 over three classes: 1, 2/3, 2/3.
    assert M.f1([0, 1, 2, 2], [0, 1, 1, 2], average="macro") == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)


def test_correlations_by_hand():
    assert M.pearson([1, 2, 3], [2, 4, 7]) == pytest.approx(15 / math.sqrt(228))
    assert M.spearman([1, 2, 3], [2, 4, 7]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)  # 1 - 6·2 / (4·15)
    r = M.regression_metrics([1.0, 2.0, 3.0], [1.5, 2.0, 2.5])
    assert r["mse"] == pytest.approx((0.25 + 0 + 0.25) / 3)


def test_glue_task_mapping():
    assert set(T.glue_metrics("cola", [1, 1, 0, 1], [1, 0, 0, 1])) == {"matthews_correlation"}
    mrpc = T.glue_metrics("mrpc", [1, 1, 0, 1], [1, 0, 0, 1])
    assert mrpc == pytest.approx({"accuracy": 0.75, "f1": 0.8})
    assert set(T.glue_metrics("stsb", [1.0, 2.0, 3.0], [2.0, 4.0, 7.0])) == {"pearson", "spearmanr"}
    assert T.glue_metrics("SST2", [0, 1], [0, 0]) == {"accuracy": 0.5}
    assert T.glue_metrics("mnli_mismatched", [0, 2], [0, 2]) == {"accuracy": 1.0}
    with pytest.raises(ValueError, match="not a GLUE task"):
        T.glue_metrics("imdb", [0], [0])
    with pytest.raises(ValueError, match="same shape"):
        M.accuracy([0, 1], [0])


def test_squad_normalisation():
    assert T.normalize_answer("The  Cat's, hat!") == "cats hat"
    assert T.normalize_answer("an apple a day") == "apple day"
    assert T.normalize_answer("Theatre") == "theatre"  # articles only as whole words


def test_squad_em_f1_single_and_max_over_golds():
    assert T.f1_score("the cat sat", "cat sat on mat") == pytest.approx(2 / 3)
    assert T.exact_match_score("The Cat sat.", "cat sat") == 1
    out = T.squad_metrics(
        {"q1": "Paris", "q2": "in 1990"},
        {
            "q1": {"text": ["Paris, France", "paris"], "answer_start": [0, 0]},
            "q2": {"text": ["1990"], "answer_start": [3]},
        },
    )
    # q1: exact via the second gold; q2: EM 0, F1 = 2·(1/2·1)/(1/2+1) = 2/3.
    assert out == pytest.approx({"exact_match": 50.0, "f1": 100 * (1 + 2 / 3) / 2})
    with pytest.raises(ValueError, match="no answer for 1"):
        T.squad_metrics({}, {"q": ["x"]})
    with pytest.raises(ValueError, match="no gold answer"):
        T.squad_metrics({"q": ""}, {"q": {"text": [], "answer_start": []}})


V2_REFS = {
    "q1": {"text": ["Paris"], "answer_start": [0]},
    "q2": {"text": ["1990"], "answer_start": [0]},
    "q3": {"text": [], "answer_start": []},
    "q4": {"text": [], "answer_start": []},
}
V2_PREDS = {"q1": "paris", "q2": "in 1990", "q3": "", "q4": "something"}


def test_squad_v2_has_and_no_answer_split():
    out = T.squad_v2_metrics(V2_PREDS, V2_REFS)
    assert out["total"] == 4 and out["HasAns_total"] == 2 and out["NoAns_total"] == 2
    assert out["exact"] == pytest.approx(50.0)
    assert out["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert out["HasAns_exact"] == pytest.approx(50.0)
    assert out["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert out["NoAns_exact"] == pytest.approx(50.0) and out["NoAns_f1"] == pytest.approx(50.0)
    assert "best_exact" not in out


def test_squad_v2_no_answer_probabilities_and_best_threshold():
    probs = {"q1": 0.1, "q2": 0.8, "q3": 0.7, "q4": 0.9}
    out = T.squad_v2_metrics(V2_PREDS, V2_REFS, probs, no_answer_threshold=0.85)
    # q4 (prob 0.9 > 0.85) now abstains, which is right for a no-answer question.
    assert out["NoAns_exact"] == pytest.approx(100.0)
    # Official sweep: abstaining on everything above 0.1 gets q1, q3, q4 right -> 75 %.
    assert out["best_exact"] == pytest.approx(75.0) and out["best_exact_thresh"] == pytest.approx(0.1)
    assert T.qa_metrics(V2_PREDS, V2_REFS, version_2_with_negative=True)["NoAns_total"] == 2
