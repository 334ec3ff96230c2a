"""Classification and regression metrics computed locally: accuracy, F1, Matthews correlation, Pearson and
Spearman, through scikit-learn / scipy, with the key names and scales of the ``evaluate`` metrics (in
``[0, 1]``) so results stay comparable. ``evaluate.load`` downloads metric scripts from the Hub, which is not
always reachable. The GLUE and SQuAD metrics of the recipes are in ``recipes/task_metrics.py``.
"""

from __future__ import annotations

import numpy as np


def _as_arrays(predictions, labels):
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if predictions.shape != labels.shape:
        raise ValueError(
            f"predictions {predictions.shape} and labels {labels.shape} must have the same shape."
        )
    if predictions.size == 0:
        raise ValueError("metrics need at least one example.")
    return predictions, labels


def accuracy(predictions, labels) -> float:
    from sklearn.metrics import accuracy_score

    predictions, labels = _as_arrays(predictions, labels)
    return float(accuracy_score(labels, predictions))


def f1(predictions, labels, average: str = "binary") -> float:
    """F1 of the positive class (``average="binary"``, labels 0/1) or the unweighted class mean ("macro")."""
    from sklearn.metrics import f1_score

    predictions, labels = _as_arrays(predictions, labels)
    return float(f1_score(labels, predictions, average=average, zero_division=0))


def matthews_correlation(predictions, labels) -> float:
    from sklearn.metrics import matthews_corrcoef

    predictions, labels = _as_arrays(predictions, labels)
    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions, labels) -> float:
    from scipy.stats import pearsonr

    predictions, labels = _as_arrays(predictions, labels)
    return float(pearsonr(predictions.astype(np.float64), labels.astype(np.float64))[0])


def spearman(predictions, labels) -> float:
    from scipy.stats import spearmanr

    predictions, labels = _as_arrays(predictions, labels)
    return float(spearmanr(predictions, labels)[0])


def classification_metrics(predictions, labels, num_labels: int) -> dict:
    """Accuracy plus F1: binary F1 of class 1 for two classes, macro F1 for more."""
    average = "binary" if num_labels == 2 else "macro"
    return {"accuracy": accuracy(predictions, labels), "f1": f1(predictions, labels, average=average)}


def regression_metrics(predictions, labels) -> dict:
    predictions, labels = _as_arrays(
        np.asarray(predictions, dtype=np.float64), np.asarray(labels, dtype=np.float64)
    )
    return {
        "mse": float(np.mean((predictions - labels) ** 2)),
        "pearson": pearson(predictions, labels),
        "spearmanr": spearman(predictions, labels),
    }
