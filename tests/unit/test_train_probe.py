"""Probe training on fake embeddings: masking, selection on validation, merging, calibration, export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from artlens.train.calibrate import choose_threshold, fit_temperature, softmax
from artlens.train.config import load_recipe
from artlens.train.fitting import fit_linear, merge_heads
from artlens.train.probe import train_probe
from artlens.train.search import expand_candidates

torch.set_num_threads(1)

PCFG_FAST = {
    "standardize": True, "metric": "macro_f1", "max_iter": 100, "epochs": 10, "eval_every": 5, "lr": 1e-2,
    "batch_size": 64, "ensemble": 1, "threads": 1,
    "candidates": [{"type": "linear", "weight_decay": [1e-3, 1e-1]}],
}
CAL = {"temperature": True, "threshold": {"rule": "precision", "target": 0.9, "min_coverage": 0.5}}


def blobs(n=300, d=16, c=3, sep=2.0, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(c, d)) * sep
    y = rng.integers(0, c, n)
    x = (centers[y] + rng.normal(size=(n, d))).astype(np.float32)
    split = np.array(["train", "val", "test"])[rng.choice(3, n, p=[0.6, 0.2, 0.2])]
    return x, y, split


def _task(name, c):
    return {"name": name, "labels": [f"{name}{i}" for i in range(c)], "column": name}


def test_missing_labels_are_masked_out_of_a_task():
    x, y, split = blobs()
    # extra rows labelled only for another task, with wild features: they must not move task a
    rng = np.random.default_rng(1)
    extra = (rng.normal(size=(200, 16)) * 5 + 3).astype(np.float32)
    xa = np.concatenate([x, extra])
    ya = np.concatenate([y, np.full(200, -1)])
    yb = np.concatenate([np.full(len(y), -1), rng.integers(0, 2, 200)])
    sa = np.concatenate([split, np.array(["train", "val", "test"])[rng.choice(3, 200, p=[0.6, 0.2, 0.2])]])
    pcfg = {**PCFG_FAST, "standardize": False}
    both = train_probe(xa, {"a": ya, "b": yb}, sa, [_task("a", 3), _task("b", 2)], pcfg, CAL)
    alone = train_probe(x, {"a": y}, split, [_task("a", 3)], pcfg, CAL)
    wa = both.heads.heads["a"][0].weight
    assert torch.allclose(wa, alone.heads.heads["a"][0].weight, atol=1e-5)
    assert both.metrics["val"]["a"]["n"] == alone.metrics["val"]["a"]["n"] == int(((split == "val")).sum())
    assert both.metrics["val"]["b"]["n"] == int((sa[len(y):] == "val").sum())


def test_probe_learns_and_reports_val_and_test():
    x, y, split = blobs()
    res = train_probe(x, {"style": y}, split, [_task("style", 3)], PCFG_FAST, CAL)
    assert res.metrics["test"]["style"]["macro_f1"] > 0.9
    assert set(res.metrics) >= {"train", "val", "test", "selected", "trials"}
    assert len(res.metrics["trials"]["style"]) == 2
    tc = res.tasks[0]
    assert tc.temperature > 0 and 0.0 <= tc.threshold <= 1.0
    # the stored standardisation is the training rows' statistics
    tr = split == "train"
    assert np.allclose(res.mean, x[tr].mean(0), atol=1e-5)


def test_selection_uses_validation_not_test(monkeypatch):
    """Poison the test rows: selection and everything but the test metrics must not change."""
    x, y, split = blobs(seed=3)
    r1 = train_probe(x, {"s": y}, split, [_task("s", 3)], PCFG_FAST, CAL)
    y2 = y.copy()
    y2[split == "test"] = (y2[split == "test"] + 1) % 3
    r2 = train_probe(x, {"s": y2}, split, [_task("s", 3)], PCFG_FAST, CAL)
    assert r1.metrics["selected"]["s"]["head"] == r2.metrics["selected"]["s"]["head"]
    assert torch.allclose(r1.heads.heads["s"][0].weight, r2.heads.heads["s"][0].weight)
    assert r1.metrics["test"]["s"]["accuracy"] != r2.metrics["test"]["s"]["accuracy"]


def test_linear_fit_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y, _ = blobs(n=200, d=6, sep=1.0)
    wd = 0.05
    head = fit_linear(x, y, 3, wd, max_iter=500)
    # sklearn minimises C * sum CE + 1/2 ||W||^2; ours mean CE + wd/2 ||W||^2  =>  C = 1 / (wd * n)
    lr = LogisticRegression(C=1.0 / (wd * len(y)), max_iter=5000, tol=1e-10).fit(x, y)
    ours = softmax(head(torch.from_numpy(x)).detach().numpy())
    assert np.abs(ours - lr.predict_proba(x)).max() < 2e-3


def test_mlp_candidates_and_merged_ensemble_equal_mean_of_members():
    cands = expand_candidates([{"type": "mlp", "hidden": [[8, 4]], "dropout": 0.1, "weight_decay": [0.0, 1e-2]}])
    assert len(cands) == 2 and cands[0]["hidden"] == [8, 4]
    from artlens.models.heads import build_head

    torch.manual_seed(0)
    members = [build_head(5, 3, [8, 4], 0.1).eval() for _ in range(3)]
    merged = merge_heads(members)
    x = torch.randn(10, 5)
    expect = torch.stack([m(x) for m in members]).mean(0)
    assert torch.allclose(merged(x), expect, atol=1e-5)
    assert [m.out_features for m in merged if isinstance(m, torch.nn.Linear)] == [24, 12, 3]


def test_mlp_probe_with_ensemble_trains(tmp_path):
    x, y, split = blobs(n=240, d=8)
    pcfg = {**PCFG_FAST, "candidates": [{"type": "mlp", "hidden": [[16]], "dropout": 0.2, "weight_decay": 1e-3}],
            "ensemble": 2}
    res = train_probe(x, {"s": y}, split, [_task("s", 3)], pcfg, CAL)
    assert res.metrics["val"]["s"]["accuracy"] > 0.8
    assert res.tasks[0].hidden in ([16], [32])  # the ensemble is kept only if validation prefers it


def test_temperature_scaling_recovers_known_temperature():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    y = np.array([rng.choice(5, p=p) for p in softmax(true_logits)])
    t = fit_temperature(true_logits * 3.0, y)  # overconfident by 3x
    assert t == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(true_logits, np.full(4000, -1)) == 1.0


def test_threshold_rule():
    # 10 predictions, confidences descending; the 3 least confident are wrong
    conf = np.linspace(0.95, 0.5, 10)
    probs = np.stack([conf, 1 - conf], 1)
    y = np.array([0] * 7 + [1] * 3)
    th = choose_threshold(probs, y, target=0.9, min_coverage=0.5)
    # accepting the top 7 gives precision 1.0, the top 8 gives 0.875 (< 0.9): threshold = 7th confidence
    assert th == pytest.approx(conf[6])
    assert choose_threshold(probs, np.zeros(10, int), target=0.9) == 0.0  # already precise: never unsure
    # unreachable target: keep exactly min_coverage
    th = choose_threshold(probs, y, target=0.99, min_coverage=0.8)
    assert th == pytest.approx(conf[7])
    assert choose_threshold(probs, y, rule="fixed", value=0.4) == 0.4
    assert choose_threshold(probs, y, rule="none") == 0.0


def test_probe_export_round_trip_equal_logits(tmp_path):
    from artlens.models.artmodel import ArtModel
    from artlens.models.preprocessing import Preprocessing
    from artlens.train.export import save_run

    x, y, split = blobs(n=200, d=12)
    pcfg = {**PCFG_FAST, "candidates": [{"type": "mlp", "hidden": [[16, 8]], "dropout": 0.1, "weight_decay": 1e-3}]}
    res = train_probe(x, {"style": y}, split, [_task("style", 3)], pcfg, CAL)

    class Spec:
        weights_id = "fake"
        feature_dim = 12
        preprocessing = Preprocessing(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")

    recipe = load_recipe(None, {"backbone.name": "fake"})
    save_run(recipe, res.tasks, res.heads, res.metrics, tmp_path / "m", mode="probe", spec=Spec())
    model = ArtModel.load(tmp_path / "m")
    with torch.no_grad():
        expect = res.heads(torch.from_numpy(x))["style"].numpy()
    assert np.allclose(model.head_logits(x)["style"], expect, atol=1e-4)
    assert model.task("style").temperature == pytest.approx(res.tasks[0].temperature)
    assert model.config["metrics"]["test"]["style"]["macro_f1"] == pytest.approx(res.metrics["test"]["style"]["macro_f1"])
    assert (tmp_path / "m" / "metrics.json").is_file() and (tmp_path / "m" / "recipe.yaml").is_file()


def test_selection_score_is_the_macro_f1_evaluate_reports():
    """The probe picks candidates on artlens.metrics' macro-F1 (classes present in the truth or the
    predictions), the number `artlens evaluate` prints: a class absent from validation does not count
    as F1 = 0."""
    from artlens import metrics as M
    from artlens.evaluate.metrics import task_metrics
    from artlens.train.fitting import _score

    y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
    pred = np.array([0, 0, 1, 1, 0, 2, 2, 1])
    logits = np.eye(4)[pred] * 3.0  # class 3: never true, never predicted
    f1, nll = _score(logits, y, "macro_f1")
    assert f1 == pytest.approx((2 / 3 + 0.4 + 0.8) / 3) and f1 == pytest.approx(M.macro_f1(y, pred))
    assert f1 == pytest.approx(task_metrics(y, softmax(logits), list("abcd"))["macro_f1"], abs=1e-6)
    assert nll == pytest.approx(M.log_loss(softmax(logits), y))
    assert _score(logits, y, "accuracy")[0] == pytest.approx(5 / 8)
