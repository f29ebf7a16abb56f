"""artlens.metrics: one set of numbers for training, evaluation and the artist task."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artlens import metrics as M
from artlens.evaluate.metrics import task_metrics
from artlens.train.calibrate import classification_metrics

LABELS = ["a", "b", "c", "d"]  # d is neither true nor predicted anywhere
Y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
PRED = np.array([0, 0, 1, 1, 0, 2, 2, 1])
# per class (precision, recall): a (2/3, 2/3), b (1/3, 1/2), c (1, 2/3)
F1_PRESENT = (2 / 3 + 0.4 + 0.8) / 3


def _logits(pred: np.ndarray, n_classes: int = 4, margin: float = 2.0) -> np.ndarray:
    z = np.zeros((len(pred), n_classes))
    z[np.arange(len(pred)), pred] = margin
    return z


def test_macro_f1_counts_only_classes_present():
    assert M.macro_f1(Y, PRED) == pytest.approx(F1_PRESENT)
    assert M.present_classes(Y, PRED).tolist() == [0, 1, 2]
    # a class that is predicted but never true does count (precision 0)
    assert M.macro_f1([0, 0], [0, 1]) == pytest.approx((2 / 3 + 0) / 2)


def test_absent_class_same_macro_f1_through_train_evaluate_and_artist_paths():
    z = _logits(PRED)
    train = classification_metrics(z, Y, LABELS)
    evaluate = task_metrics(Y, M.softmax(z), LABELS)
    artist = M.closed_set_metrics(M.softmax(z), Y, len(LABELS))
    assert train["macro_f1"] == pytest.approx(F1_PRESENT)
    assert evaluate["macro_f1"] == pytest.approx(F1_PRESENT, abs=1e-6)
    assert artist["macro_f1"] == pytest.approx(F1_PRESENT, abs=1e-4)
    assert train["accuracy"] == evaluate["accuracy"] == pytest.approx(5 / 8)
    assert train["per_class_f1"]["d"] == 0.0 and evaluate["per_class"]["d"]["f1"] == 0.0


def test_train_skips_unlabelled_rows():
    z = _logits(np.concatenate([PRED, [3, 3]]))
    train = classification_metrics(z, np.concatenate([Y, [-1, -1]]), LABELS)
    assert train["n"] == len(Y) and train["macro_f1"] == pytest.approx(F1_PRESENT)


def test_ece_bins_agree_between_train_and_evaluate_on_a_bin_edge():
    # Row 0: logits [0, 0, 0] give confidence exactly 1/3 = the edge 5/15, correct.
    # Row 1: confidence 0.36 (same bin [5/15, 6/15)), wrong. One bin: |1/2 - mean confidence|.
    z = np.array([[0.0, 0.0, 0.0], [np.log(1.125), 0.0, 0.0]])
    y = np.array([0, 1])
    p = M.softmax(z)
    assert p[0, 0] == 1 / 3 and p[1, 0] == pytest.approx(0.36)
    expect = abs(0.5 - (1 / 3 + 0.36) / 2)
    labels = ["a", "b", "c"]
    assert M.expected_calibration_error(p, y) == pytest.approx(expect)
    assert classification_metrics(z, y, labels)["ece"] == pytest.approx(expect)
    assert task_metrics(y, p, labels)["ece"] == pytest.approx(expect, abs=1e-6)


def test_ece_and_reliability_bins_agree():
    rng = np.random.default_rng(0)
    p = M.softmax(rng.normal(size=(300, 5)) * 2)
    y = rng.integers(0, 5, 300)
    rel = M.reliability_bins(p.max(1), p.argmax(1) == y)
    assert sum(rel["count"]) == 300 and len(rel["edges"]) == M.DEFAULT_BINS + 1
    ece = sum(c / 300 * abs(a - m) for a, m, c in zip(rel["accuracy"], rel["confidence"], rel["count"]) if c)
    assert M.expected_calibration_error(p, y) == pytest.approx(ece)
    assert classification_metrics(np.log(p), y, list("abcde"))["ece"] == pytest.approx(ece)


def test_softmax_is_stable_and_keeps_dtype():
    z = np.array([[1000.0, 1000.0, -1000.0], [0.0, np.log(3.0), -np.inf]])
    p = M.softmax(z)
    assert np.isfinite(p).all()
    np.testing.assert_allclose(p, [[0.5, 0.5, 0.0], [0.25, 0.75, 0.0]])
    assert M.softmax(np.zeros((2, 3), np.float32)).dtype == np.float32
    np.testing.assert_allclose(M.softmax(np.array([[1.0, 2.0], [3.0, 4.0]]), axis=0).sum(0), [1.0, 1.0])


def test_l2_normalize_rows_and_zero_rows():
    x = M.l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x, [[0.6, 0.8], [0.0, 0.0]], rtol=1e-6)


def test_top_k_and_log_loss():
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.2, 0.7], [0.6, 0.3, 0.1]])
    y = np.array([1, 2, 2])
    assert M.top_k_accuracy(y, p, 1) == pytest.approx(1 / 3)
    assert M.top_k_accuracy(y, p, 2) == pytest.approx(2 / 3)
    assert M.top_k_accuracy(y, p, 3) == 1.0
    assert M.log_loss(p, y) == pytest.approx(-np.mean(np.log([0.3, 0.7, 0.1])))
    assert M.log_loss(np.array([[1.0, 0.0]]), [0]) == 0.0 and not np.signbit(M.log_loss(np.array([[1.0, 0.0]]), [0]))


def test_one_implementation_everywhere():
    from artlens.evaluate import calibration
    from artlens.models import artmodel
    from artlens.train import calibrate, openset

    assert calibration.expected_calibration_error is M.expected_calibration_error
    assert calibration.reliability_bins is M.reliability_bins
    assert calibrate.softmax is M.softmax and artmodel.softmax is M.softmax
    assert openset.l2n is M.l2_normalize
    assert not hasattr(calibrate, "expected_calibration_error")


def test_metrics_module_sits_below_every_artlens_package():
    import artlens.metrics

    tree = ast.parse(Path(artlens.metrics.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert not {m for m in imported if m.split(".")[0] == "artlens"}
    assert imported <= {"__future__", "warnings", "collections.abc", "numpy", "sklearn.metrics"}


# ----------------------------------------------------------------------------- train vs evaluate
COLOURS = {"a": (200, 60, 60), "b": (160, 100, 60), "c": (60, 60, 200), "d": (240, 240, 240)}


def test_train_reports_the_numbers_evaluate_reports(tmp_path):
    """A probe trained on colour features: its test numbers (what `artlens train` reports) equal
    `evaluate()`'s on the same model and images, with class d absent from the test split."""
    import torch

    from artlens.data.images import load_image
    from artlens.evaluate.pipeline import evaluate
    from artlens.models.artmodel import ArtModel
    from artlens.train.probe import train_probe
    from tests.conftest import make_image
    from tests.unit.test_evaluate_pipeline import ColourEncoder

    torch.set_num_threads(1)
    rows = []
    for k, (lab, colour) in enumerate(COLOURS.items()):
        parts = ["train"] * 24 + ["val"] * 10 + ([] if lab == "d" else ["test"] * 12)
        for i, part in enumerate(parts):
            p = make_image(tmp_path / "img" / lab / f"{i}.png", size=(16, 16), color=colour, seed=100 * k + i)
            rows.append({"path": str(p), "style": lab, "split": part})
    df = pd.DataFrame(rows)
    df["sha256"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in df["path"]]
    enc = ColourEncoder()
    x = enc.embed_batch(np.stack([enc.preprocess(load_image(p)) for p in df["path"]]))
    y = df["style"].map({lab: i for i, lab in enumerate(COLOURS)}).to_numpy()
    task = {"name": "style", "labels": list(COLOURS), "column": "style"}
    pcfg = {"standardize": True, "metric": "macro_f1", "max_iter": 100, "epochs": 10, "eval_every": 5, "lr": 1e-2,
            "batch_size": 64, "ensemble": 1, "threads": 1, "candidates": [{"type": "linear", "weight_decay": [1e-3]}]}
    cal = {"temperature": True, "threshold": {"rule": "none"}}
    res = train_probe(x, {"style": y}, df["split"].to_numpy(), [task], pcfg, cal)

    # what `artlens train` prints and saves with the model (metrics.json, config.json)
    trained = res.metrics["test"]["style"]
    model = ArtModel.from_torch({"backbone": {"name": "mean-rgb", "weights_id": "test", "feature_dim": 3},
                                 "tasks": res.tasks}, res.heads)
    ev = evaluate(model, df, tmp_path / "eval", encoder=enc, store_root=tmp_path / "store", split="test",
                  progress=False, workers=0, html=False).metrics["tasks"]["style"]

    assert trained["n"] == ev["n"] == 36
    assert ev["per_class"]["d"]["support"] == 0 and ev["per_class"]["d"]["precision"] == 0  # d absent from test
    assert 0.5 < ev["accuracy"] < 1.0  # a and b overlap: the averages are not trivially 1
    assert trained["accuracy"] == pytest.approx(ev["accuracy"], abs=1e-6)
    assert trained["macro_f1"] == pytest.approx(ev["macro_f1"], abs=1e-6)
    assert trained["ece"] == pytest.approx(ev["ece"], abs=1e-5)
    assert trained["nll"] == pytest.approx(ev["log_loss"], abs=1e-5)
