"""Metrics of artlens.evaluate against values worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from artlens.evaluate.calibration import expected_calibration_error, reliability_bins
from artlens.evaluate.metrics import binary_detection, confusion, task_metrics, text_report

LABELS = ["a", "b", "c", "d"]  # d never occurs in the truth
Y = np.array([0, 0, 1, 1, 2, 2])
P = np.array([
    [0.70, 0.10, 0.10, 0.10],  # a ok, conf .70
    [0.25, 0.50, 0.10, 0.15],  # a -> b, conf .50 (a is 2nd: top-3 hit)
    [0.10, 0.80, 0.05, 0.05],  # b ok, conf .80
    [0.04, 0.06, 0.10, 0.80],  # b -> d, conf .80 (b is 3rd: top-3 hit)
    [0.10, 0.10, 0.60, 0.20],  # c ok, conf .60
    [0.30, 0.10, 0.05, 0.55],  # c -> d, conf .55 (c is last: top-3 miss)
])


@pytest.fixture(scope="module")
def m():
    return task_metrics(Y, P, LABELS, threshold=0.6)


def test_accuracy_and_balanced_accuracy(m):
    assert m["n"] == 6
    assert m["accuracy"] == pytest.approx(3 / 6)
    # recall a = b = c = 1/2; d is not in the truth
    assert m["balanced_accuracy"] == pytest.approx(0.5)


def test_per_class_precision_recall_f1(m):
    pc = m["per_class"]
    assert pc["a"] == {"precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3, abs=1e-6), "support": 2}
    assert pc["b"]["precision"] == 0.5 and pc["b"]["recall"] == 0.5 and pc["b"]["f1"] == 0.5
    assert pc["c"]["precision"] == 1.0 and pc["c"]["f1"] == pytest.approx(2 / 3, abs=1e-6)
    assert pc["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}


def test_macro_and_weighted_averages(m):
    # d was predicted, so it counts in the macro average (sklearn's default label set)
    assert m["macro_precision"] == pytest.approx((1 + 0.5 + 1 + 0) / 4, abs=1e-6)
    assert m["macro_recall"] == pytest.approx((0.5 + 0.5 + 0.5 + 0) / 4, abs=1e-6)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 2 / 3 + 0) / 4, abs=1e-6)
    assert m["weighted_f1"] == pytest.approx((2 / 3 + 0.5 + 2 / 3) / 3, abs=1e-6)


def test_top_k_only_where_classes_allow(m):
    assert m["top_k_accuracy"] == {"1": 0.5, "3": pytest.approx(5 / 6, abs=1e-6)}  # no top-5 with 4 classes


def test_calibration_coverage_and_log_loss(m):
    # bins of width 1/15: .50, .55, .60, .70 alone; the two .80 together (one right, one wrong)
    ece = (0.5 + 0.55 + 0.4 + 0.3 + 2 * 0.3) / 6
    assert m["ece"] == pytest.approx(ece, abs=1e-6)
    assert m["coverage"] == pytest.approx(4 / 6)  # .70 .80 .80 .60 reach the 0.6 threshold
    assert m["selective_accuracy"] == pytest.approx(3 / 4)
    expect = -np.mean(np.log([0.70, 0.25, 0.80, 0.06, 0.60, 0.05]))
    assert m["log_loss"] == pytest.approx(expect, abs=1e-5)
    assert sum(m["reliability"]["count"]) == 6


def test_ece_matches_torchmetrics():
    torch = pytest.importorskip("torch")
    tm = pytest.importorskip("torchmetrics.functional.classification")
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 5)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = rng.integers(0, 5, 400)
    ref = float(tm.multiclass_calibration_error(torch.tensor(p), torch.tensor(y), num_classes=5, n_bins=15, norm="l1"))
    assert expected_calibration_error(p, y) == pytest.approx(ref, abs=1e-5)


def test_reliability_bins():
    r = reliability_bins(np.array([0.05, 0.15, 0.18, 0.95, 1.0]), np.array([1, 0, 1, 1, 0]), n_bins=10)
    assert r["count"] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 2]
    assert r["accuracy"][1] == 0.5 and r["accuracy"][2] is None
    assert r["confidence"][9] == pytest.approx(0.975)


def test_binary_auc_probability():
    m = task_metrics([0, 0, 1, 1], np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.8, 0.2]]), ["human", "ai"])
    # positives .7 .2 vs negatives .1 .6: .7 beats both, .2 beats .1 -> 3/4
    assert m["roc_auc"] == pytest.approx(0.75)
    assert m["top_k_accuracy"] == {"1": 0.5}


def test_binary_detection():
    d = binary_detection(np.array([0.9, 0.8, 0.3, 0.6, 0.2, 0.1]), np.array([1, 1, 1, 0, 0, 0], bool))
    assert d["auc"] == pytest.approx(8 / 9, abs=1e-6)
    assert d["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert d["fpr_human"] == pytest.approx(1 / 3, abs=1e-6)
    assert d["tpr_ai"] == pytest.approx(2 / 3, abs=1e-6)
    assert binary_detection(np.array([0.9]), np.array([True]))["auc"] is None  # one class: no AUC


def test_confusion_rows_normalised():
    counts, norm = confusion([0, 0, 1], [0, 1, 1], 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert norm[0].tolist() == [0.5, 0.5, 0.0] and norm[2].tolist() == [0, 0, 0]


def test_text_report_names_every_label():
    rep = text_report(Y, P.argmax(1), LABELS)
    assert all(lab in rep for lab in LABELS) and "macro avg" in rep


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="proba must be"):
        task_metrics([0, 1], np.ones((2, 3)) / 3, ["a", "b"])
    assert math.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0)))
