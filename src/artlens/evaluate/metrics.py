"""Classification metrics for one task, from integer true labels and predicted probabilities.

The numbers come from `artlens.metrics` (shared with training, so `artlens train` and `artlens
evaluate` agree); this module only decides which numbers a report carries and keeps them JSON-ready.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from artlens import metrics as M

TOP_K = (1, 3, 5)


def _f(x) -> float | None:
    x = float(x)
    return None if np.isnan(x) else round(x, 6)


def task_metrics(
    y_true: Sequence[int],
    proba: np.ndarray,
    labels: Sequence[str],
    *,
    threshold: float = 0.0,
    n_bins: int = M.DEFAULT_BINS,
) -> dict:
    """Metrics of one task. `y_true[i]` indexes `labels`; `proba` is `(N, len(labels))`.

    Macro and weighted averages run over the classes that occur in the truth or the predictions
    (the rule of `artlens.metrics`), so a class absent from a small test set does not count as F1 = 0.
    `threshold` is the task's "unsure" threshold: `coverage` is the share of answers at or above it
    and `selective_accuracy` their accuracy.
    """
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y_true, dtype=np.int64)
    proba = np.asarray(proba, dtype=np.float64)
    n_classes = len(labels)
    if proba.ndim != 2 or proba.shape != (len(y), n_classes):
        raise ValueError(f"proba must be ({len(y)}, {n_classes}), got {proba.shape}")
    if len(y) == 0:
        return {"n": 0}
    pred = proba.argmax(axis=1)
    conf = proba.max(axis=1)
    correct = pred == y

    out: dict = {"n": int(len(y)), "n_classes": n_classes, "n_classes_present": int(len(np.unique(y)))}
    out["accuracy"] = _f(M.accuracy(y, pred))
    out["balanced_accuracy"] = _f(M.balanced_accuracy(y, pred))
    for avg in ("macro", "weighted"):
        p, r, f1 = M.averaged_prf(y, pred, avg)
        out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = _f(p), _f(r), _f(f1)
    out["top_k_accuracy"] = {
        str(k): _f(M.top_k_accuracy(y, proba, k))
        for k in TOP_K
        if k == 1 or k < n_classes  # top-k over all classes is always 1: not worth a number
    }
    out["log_loss"] = _f(M.log_loss(proba, y))
    if n_classes == 2 and len(np.unique(y)) == 2:
        out["roc_auc"] = _f(roc_auc_score(y, proba[:, 1]))
    p, r, f1, s = M.per_class_prf(y, pred, n_classes)
    out["per_class"] = {
        lab: {"precision": _f(p[i]), "recall": _f(r[i]), "f1": _f(f1[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }
    out["ece"] = _f(M.expected_calibration_error(proba, y, n_bins=n_bins))
    sure = conf >= threshold
    out["threshold"] = float(threshold)
    out["coverage"] = _f(sure.mean())
    out["selective_accuracy"] = _f(correct[sure].mean()) if sure.any() else None
    out["mean_confidence"] = _f(conf.mean())
    out["reliability"] = M.reliability_bins(conf, correct, n_bins=n_bins)
    return out


def confusion(y_true: Sequence[int], pred: Sequence[int], n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Counts and the row-normalised matrix (each true class sums to 1; empty rows stay 0)."""
    from sklearn.metrics import confusion_matrix

    cm = confusion_matrix(np.asarray(y_true), np.asarray(pred), labels=np.arange(n_classes))
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=float), where=rows > 0)
    return cm, norm


def text_report(y_true: Sequence[int], pred: Sequence[int], labels: Sequence[str]) -> str:
    """scikit-learn's classification report over all the task's labels."""
    from sklearn.metrics import classification_report

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return classification_report(
            np.asarray(y_true), np.asarray(pred), labels=np.arange(len(labels)), target_names=list(labels),
            digits=3, zero_division=0,
        )


def binary_detection(p_ai: np.ndarray, is_ai: np.ndarray, threshold: float = 0.5) -> dict:
    """Human-vs-AI numbers from P(ai): AUC, accuracy, false-positive rate on human work, AI recall."""
    from sklearn.metrics import roc_auc_score

    p_ai = np.asarray(p_ai, dtype=np.float64)
    is_ai = np.asarray(is_ai, dtype=bool)
    said_ai = p_ai >= threshold
    human = ~is_ai
    out = {
        "n": int(len(p_ai)),
        "n_ai": int(is_ai.sum()),
        "n_human": int(human.sum()),
        "auc": _f(roc_auc_score(is_ai, p_ai)) if 0 < is_ai.sum() < len(is_ai) else None,
        "accuracy": _f((said_ai == is_ai).mean()) if len(p_ai) else None,
        "fpr_human": _f(said_ai[human].mean()) if human.any() else None,
        "tpr_ai": _f(said_ai[is_ai].mean()) if is_ai.any() else None,
    }
    return out
