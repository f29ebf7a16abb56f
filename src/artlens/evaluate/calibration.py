"""Calibration: expected calibration error and the data of a reliability diagram.

Equal-width confidence bins over [0, 1], the definition torchmetrics uses (checked against it in
the tests).
"""

from __future__ import annotations

import numpy as np

DEFAULT_BINS = 15


def expected_calibration_error(proba: np.ndarray, y_true: np.ndarray, n_bins: int = DEFAULT_BINS) -> float:
    """Top-label ECE: sum over confidence bins of |accuracy - mean confidence| weighted by bin size.

    Same definition and bins as torchmetrics' `multiclass_calibration_error(norm="l1")` (the unit
    tests compare the two); computed here from the reliability bins so the number and the diagram
    agree, without importing torchmetrics' whole tree (seconds) on every evaluation.
    """
    proba = np.asarray(proba, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    if len(y) == 0:
        return float("nan")
    conf = proba.max(axis=1)
    bins = reliability_bins(conf, proba.argmax(axis=1) == y, n_bins)
    n = len(y)
    return float(sum(
        c / n * abs(a - m) for a, m, c in zip(bins["accuracy"], bins["confidence"], bins["count"]) if c
    ))


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = DEFAULT_BINS) -> dict:
    """Per-bin mean confidence, accuracy and count (empty bins give None), for the diagram and JSON."""
    conf = np.asarray(confidence, dtype=np.float64)
    ok = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Bin i holds [edges[i], edges[i+1]) as in torchmetrics; confidence 1 joins the last bin.
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
