"""Report figures and training curves: files written, readable, sized for the class count."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from artlens.evaluate import plots
from artlens.evaluate.calibration import reliability_bins
from artlens.evaluate.curves import CurvesError, curve_groups, find_metrics_csv, read_epoch_metrics, summarise

LIGHTNING_CSV = """epoch,step,train_loss_step,train_loss_epoch,train_acc_epoch,val_loss,val_acc
0,9,1.40,,,,
0,19,1.20,,,0.95,0.55
0,19,,1.30,0.50,,
1,29,0.90,,,,
1,39,0.70,,,0.70,0.71
1,39,,0.80,0.68,,
2,49,0.55,,,0.72,0.74
2,49,,0.60,0.80,,
"""


def _png(path):
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as im:
        im.verify()
    return Image.open(path).size


def test_confusion_matrix_grows_with_classes(tmp_path):
    rng = np.random.default_rng(0)
    small = _png(plots.confusion_matrix_png(np.eye(3), ["a", "b", "c"], tmp_path / "s.png"))
    labels = [f"Style_Name_Number_{i}" for i in range(27)]
    m = rng.random((27, 27))
    big = _png(plots.confusion_matrix_png(m / m.sum(1, keepdims=True), labels, tmp_path / "b.png",
                                          counts=rng.integers(1, 9, (27, 27))))
    assert big[0] > 1.8 * small[0] and big[1] > 1.8 * small[1]


def test_f1_reliability_and_robustness_plots(tmp_path):
    pc = {f"class_{i}": {"precision": 0.5, "recall": 0.5, "f1": i / 10, "support": i + 1} for i in range(10)}
    pc["absent"] = {"precision": 0, "recall": 0, "f1": 0, "support": 0}
    _png(plots.per_class_f1_png(pc, tmp_path / "f1.png"))
    rel = reliability_bins(np.linspace(0.3, 1, 50), np.arange(50) % 3 > 0)
    _png(plots.reliability_png(rel, tmp_path / "rel.png", ece=0.12))
    conds = {"original": {"auc": 0.99, "accuracy": 0.95, "fpr_human": 0.02},
             "jpeg_q50": {"auc": 0.8, "accuracy": 0.7, "fpr_human": None}}
    _png(plots.robustness_png(conds, tmp_path / "rob.png"))


def test_gallery_tiles_images_and_unreadable_files(tmp_path, image_factory):
    good = image_factory("g.png", size=(60, 30), seed=3)
    bad = tmp_path / "bad.jpg"
    bad.write_text("hello")
    items = [{"path": str(good), "caption": "true: a\npred: a (90%)", "ok": True},
             {"path": str(bad), "caption": "true: b\npred: a (80%)", "ok": False}]
    w, h = _png(plots.gallery_png(items, tmp_path / "gal.png", title="t", ncols=6))
    assert w > h  # two tiles side by side (ncols shrinks to the item count)
    assert plots.gallery_png([], tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()


def test_read_lightning_csv(tmp_path):
    (tmp_path / "metrics.csv").write_text(LIGHTNING_CSV)
    per_epoch = read_epoch_metrics(tmp_path / "metrics.csv")
    assert list(per_epoch.index) == [0, 1, 2]
    # step values are dropped in favour of the *_epoch aggregate, whose suffix goes
    assert "train_loss_step" not in per_epoch.columns
    assert per_epoch.loc[1, "train_loss"] == pytest.approx(0.80)
    assert per_epoch.loc[2, "val_acc"] == pytest.approx(0.74)
    groups = curve_groups(per_epoch)
    assert set(groups["loss"]) == {"train_loss", "val_loss"}
    assert set(groups["score"]) == {"train_acc", "val_acc"}
    s = summarise(per_epoch)
    assert s["best_epoch_val_loss"] == 1 and s["series"]["val_loss"] == [0.95, 0.7, 0.72]
    _png(plots.curves_png(per_epoch, groups, tmp_path / "curves.png"))


def test_plain_step_logs_are_averaged(tmp_path):
    p = tmp_path / "metrics.csv"
    p.write_text("epoch,step,train_loss\n0,0,1.0\n0,1,0.5\n1,2,0.25\n")
    assert read_epoch_metrics(p)["train_loss"].tolist() == [0.75, 0.25]


def test_find_and_reject_logs(tmp_path):
    import os

    old = tmp_path / "lightning_logs" / "version_0" / "metrics.csv"
    new = tmp_path / "lightning_logs" / "version_1" / "metrics.csv"
    for p in (old, new):
        p.parent.mkdir(parents=True)
        p.write_text(LIGHTNING_CSV)
    os.utime(old, (1, 1))
    assert find_metrics_csv(tmp_path) == new
    assert find_metrics_csv(tmp_path / "nothing") is None
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(CurvesError, match="no 'epoch' column"):
        read_epoch_metrics(bad)


def test_curves_command(tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import app

    (tmp_path / "metrics.csv").write_text(LIGHTNING_CSV)
    out = tmp_path / "c.png"
    res = CliRunner().invoke(app, ["curves", str(tmp_path), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["epochs"] == [0, 1, 2]
    _png(out)
    res = CliRunner().invoke(app, ["curves", str(tmp_path / "missing")])
    assert res.exit_code == 1
