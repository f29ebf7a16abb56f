"""Classification metrics and the small numeric ops behind them, in one place for every stage.

`artlens train`, `artlens evaluate`, the artist task and the benchmarks all score through these
functions, so the same model on the same data gets the same numbers everywhere. This module sits
below every other artlens package: it imports numpy (and scikit-learn lazily), nothing from artlens.

Conventions:

- Labels are integer class indices `0..n_classes-1`; `proba` / `scores` are `(N, n_classes)`.
- Averages over classes (macro / weighted precision, recall, F1) run over the classes *present in
  `y_true` or `y_pred`* (scikit-learn's default label set). A class that neither occurs in the truth
  nor is ever predicted does not count as F1 = 0; a class that is predicted but never true does
  (precision 0). Per-class arrays cover all `n_classes`, absent ones as 0.
- Balanced accuracy is the mean recall over the classes in `y_true` (scikit-learn's).
- Calibration: top-label ECE over `n_bins` equal-width confidence bins; bin `i` holds confidences
  in `[i/n_bins, (i+1)/n_bins)` and confidence 1 joins the last bin (torchmetrics' bins).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

DEFAULT_BINS = 15
_EPS = 1e-12


# ----------------------------------------------------------------------------- numeric ops
def softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along `axis`, shifted by the maximum so large logits do not overflow; keeps the dtype."""
    z = np.asarray(z)
    z = z - z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), _EPS)


# ----------------------------------------------------------------------------- label metrics
def _labels(y_true, y_pred) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(y_true, dtype=np.int64).ravel(), np.asarray(y_pred, dtype=np.int64).ravel()


def present_classes(y_true: Sequence[int], y_pred: Sequence[int]) -> np.ndarray:
    """The classes averages run over: those occurring in the truth or the predictions."""
    y, p = _labels(y_true, y_pred)
    return np.union1d(y, p)


def accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    y, p = _labels(y_true, y_pred)
    return float((y == p).mean()) if len(y) else float("nan")


def balanced_accuracy(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Mean recall over the classes in `y_true`."""
    from sklearn.metrics import balanced_accuracy_score

    y, p = _labels(y_true, y_pred)
    if not len(y):
        return float("nan")
    with warnings.catch_warnings():
        # classes predicted but absent from the truth are normal on small sets; sklearn warns about them
        warnings.simplefilter("ignore", UserWarning)
        return float(balanced_accuracy_score(y, p))


def averaged_prf(y_true: Sequence[int], y_pred: Sequence[int], average: str = "macro") -> tuple[float, float, float]:
    """(precision, recall, F1) averaged (`macro` or `weighted`) over the present classes."""
    from sklearn.metrics import precision_recall_fscore_support

    y, p = _labels(y_true, y_pred)
    if not len(y):
        return float("nan"), float("nan"), float("nan")
    pr, rc, f1, _ = precision_recall_fscore_support(
        y, p, labels=present_classes(y, p), average=average, zero_division=0
    )
    return float(pr), float(rc), float(f1)


def macro_f1(y_true: Sequence[int], y_pred: Sequence[int]) -> float:
    """Unweighted mean F1 over the classes present in `y_true` or `y_pred`."""
    return averaged_prf(y_true, y_pred, "macro")[2]


def per_class_prf(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int):
    """(precision, recall, F1, support) arrays over all `n_classes` (absent classes 0)."""
    from sklearn.metrics import precision_recall_fscore_support

    y, p = _labels(y_true, y_pred)
    return precision_recall_fscore_support(y, p, labels=np.arange(n_classes), average=None, zero_division=0)


def top_k_accuracy(y_true: Sequence[int], scores: np.ndarray, k: int) -> float:
    """Share of rows whose true class is among the `k` highest scores; k = 1 is `accuracy` of the argmax."""
    from sklearn.metrics import top_k_accuracy_score

    scores = np.asarray(scores)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    if k <= 1:
        return accuracy(y, scores.argmax(axis=1))
    n_classes = scores.shape[1]
    if k >= n_classes:
        return 1.0 if len(y) else float("nan")
    return float(top_k_accuracy_score(y, scores, k=k, labels=np.arange(n_classes)))


def log_loss(proba: np.ndarray, y_true: Sequence[int]) -> float:
    """Mean negative log-probability of the true class (probabilities clipped at 1e-12)."""
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    if not len(y):
        return float("nan")
    return float(-np.mean(np.log(np.clip(proba[np.arange(len(y)), y], _EPS, None)))) + 0.0  # no -0.0



def closed_set_metrics(proba: np.ndarray, y_true: Sequence[int], n_classes: int | None = None) -> dict:
    """`{"n", "accuracy", "macro_f1", "top3_accuracy", "top5_accuracy"}` (rounded to 4 decimals; top-k
    only when k < n_classes): the compact table of a head's answers, e.g. the artist head's."""
    proba = np.asarray(proba)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    if len(y) == 0:
        return {"n": 0}
    n_classes = proba.shape[1] if n_classes is None else n_classes
    out = {"n": int(len(y)), "accuracy": round(accuracy(y, proba.argmax(axis=1)), 4),
           "macro_f1": round(macro_f1(y, proba.argmax(axis=1)), 4)}
    for k in (3, 5):
        if k < n_classes:
            out[f"top{k}_accuracy"] = round(top_k_accuracy(y, proba, k), 4)
    return out


def auroc(positive: np.ndarray, negative: np.ndarray) -> float:
    """ROC AUC of a score that should be higher on `positive` rows than on `negative` ones (1 = always,
    0.5 = chance; NaN when a side is empty), e.g. known vs unknown artists' paintings."""
    from sklearn.metrics import roc_auc_score

    positive, negative = np.asarray(positive, np.float64).ravel(), np.asarray(negative, np.float64).ravel()
    if len(positive) == 0 or len(negative) == 0:
        return float("nan")
    return float(roc_auc_score(np.r_[np.ones(len(positive)), np.zeros(len(negative))], np.r_[positive, negative]))

# ----------------------------------------------------------------------------- calibration
def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict:
    """Per-bin mean confidence, accuracy and count (empty bins give None), for the diagram and JSON."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.floor(conf * n_bins).astype(int), 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=ok.astype(float), minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = conf_sum / counts
        acc = acc_sum / counts
    return {
        "edges": [round(float(e), 6) for e in edges],
        "confidence": [None if c == 0 else float(v) for v, c in zip(mean_conf, counts)],
        "accuracy": [None if c == 0 else float(v) for v, c in zip(acc, counts)],
        "count": [int(c) for c in counts],
    }


def expected_calibration_error(proba: np.ndarray, y_true: Sequence[int], n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE: sum over confidence bins of |accuracy - mean confidence| weighted by bin size.

    Computed from `reliability_bins`, so the number and the diagram agree; matches torchmetrics'
    `multiclass_calibration_error(norm="l1")` (the unit tests compare the two).
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).ravel()
    if len(y) == 0:
        return float("nan")
    bins = reliability_bins(proba.max(axis=1), proba.argmax(axis=1) == y, n_bins)
    n = len(y)
    return float(sum(
        c / n * abs(a - m) for a, m, c in zip(bins["accuracy"], bins["confidence"], bins["count"]) if c
    ))
