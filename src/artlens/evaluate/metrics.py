"""Classification metrics for one task, from integer true labels and predicted probabilities.

Everything comes from scikit-learn (and torchmetrics for calibration); this module only decides which
numbers a report carries and keeps them JSON-ready.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from artlens.evaluate.calibration import DEFAULT_BINS, expected_calibration_error, reliability_bins

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
    n_bins: int = DEFAULT_BINS,
) -> dict:
    """Metrics of one task. `y_true[i]` indexes `labels`; `proba` is `(N, len(labels))`.

    Macro and weighted averages run over the classes that occur in the truth or the predictions
    (scikit-learn's default), so a class absent from a small test set does not count as F1 = 0.
    `threshold` is the task's "unsure" threshold: `coverage` is the share of answers at or above it
    and `selective_accuracy` their accuracy.
    """
    from sklearn.metrics import (
        accuracy_score,
        balanced_accuracy_score,
        log_loss,
        precision_recall_fscore_support,
        roc_auc_score,
        top_k_accuracy_score,
    )

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
    present = np.union1d(y, pred)
    all_idx = np.arange(n_classes)

    out: dict = {"n": int(len(y)), "n_classes": n_classes, "n_classes_present": int(len(np.unique(y)))}
    with warnings.catch_warnings():
        # Classes predicted but absent from the truth are normal on small sets; sklearn warns about them.
        warnings.simplefilter("ignore", UserWarning)
        out["accuracy"] = _f(accuracy_score(y, pred))
        out["balanced_accuracy"] = _f(balanced_accuracy_score(y, pred))
        for avg in ("macro", "weighted"):
            p, r, f1, _ = precision_recall_fscore_support(y, pred, labels=present, average=avg, zero_division=0)
            out[f"{avg}_precision"], out[f"{avg}_recall"], out[f"{avg}_f1"] = _f(p), _f(r), _f(f1)
        out["top_k_accuracy"] = {
            str(k): _f(top_k_accuracy_score(y, proba, k=k, labels=all_idx)) if k > 1 else out["accuracy"]
            for k in TOP_K
            if k == 1 or k < n_classes  # top-k over all classes is always 1: not worth a number
        }
        clipped = np.clip(proba, 1e-12, 1.0)
        out["log_loss"] = _f(log_loss(y, clipped / clipped.sum(axis=1, keepdims=True), labels=all_idx))
        if n_classes == 2 and len(np.unique(y)) == 2:
            out["roc_auc"] = _f(roc_auc_score(y, proba[:, 1]))
        p, r, f1, s = precision_recall_fscore_support(y, pred, labels=all_idx, average=None, zero_division=0)
    out["per_class"] = {
        lab: {"precision": _f(p[i]), "recall": _f(r[i]), "f1": _f(f1[i]), "support": int(s[i])}
        for i, lab in enumerate(labels)
    }
    out["ece"] = _f(expected_calibration_error(proba, y, n_bins=n_bins))
    sure = conf >= threshold
    out["threshold"] = float(threshold)
    out["coverage"] = _f(sure.mean())
    out["selective_accuracy"] = _f(correct[sure].mean()) if sure.any() else None
    out["mean_confidence"] = _f(conf.mean())
    out["reliability"] = reliability_bins(conf, correct, n_bins=n_bins)
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
