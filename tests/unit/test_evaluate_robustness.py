"""Robustness conditions: what each transform does to a picture, and the detection table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artlens.evaluate import robustness as rb
from artlens.models.artmodel import ArtModel


@pytest.fixture
def photo():
    # smooth gradients + noise: JPEG loses detail on it, as on a painting
    rng = np.random.default_rng(1)
    x = np.linspace(0, 255, 120)
    arr = np.stack([np.add.outer(x[:90] / 2, x / 2), np.tile(x, (90, 1)), np.tile(x[:90, None], (1, 120))], -1)
    arr = np.clip(arr + rng.normal(0, 25, arr.shape), 0, 255).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def _err(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


def test_jpeg_loses_more_at_lower_quality(photo):
    e90, e70, e50 = (_err(photo, rb.CONDITIONS[f"jpeg_q{q}"](photo)) for q in (90, 70, 50))
    assert 0 < e90 < e70 < e50
    assert rb.CONDITIONS["jpeg_q50"](photo).size == photo.size


def test_png_resave_is_lossless(photo):
    out = rb.CONDITIONS["png_resave"](photo)
    assert out.mode == "RGB" and np.array_equal(np.asarray(out), np.asarray(photo))


def test_downscale_and_center_crop_geometry(photo):
    assert rb.CONDITIONS["downscale_0.5x"](photo).size == (60, 45)
    crop = rb.CONDITIONS["center_crop_80%"](photo)
    assert crop.size == (96, 72)
    # the crop is the middle: its top-left pixel is the original's pixel (12, 9)
    assert np.asarray(crop)[0, 0].tolist() == np.asarray(photo)[9, 12].tolist()


def _model(tasks, dim=3):
    tensors = {}
    for t in tasks:
        tensors[f"heads.{t['name']}.0.weight"] = np.zeros((len(t["labels"]), dim), np.float32)
        tensors[f"heads.{t['name']}.0.bias"] = np.arange(len(t["labels"]), dtype=np.float32)
    cfg = {"format": "artlens-model", "version": 1, "mode": "probe",
           "backbone": {"name": "x", "feature_dim": dim}, "tasks": tasks}
    return ArtModel(cfg, tensors)


def test_origin_scorer_direct_and_joint():
    m = _model([{"name": "style", "labels": ["a", "b"]}, {"name": "origin", "labels": ["human", "ai"]}])
    name, f = rb.origin_scorer(m)
    assert name == "origin"
    proba = m.predict_proba(np.zeros((2, 3)))
    assert np.allclose(f(proba), proba["origin"][:, 1])

    joint = _model([{"name": "os", "column": "origin+style", "labels": ["human_a", "ai_a", "ai_b"]}])
    name, f = rb.origin_scorer(joint)
    p = joint.predict_proba(np.zeros((1, 3)))["os"]
    assert name == "os" and f({"os": p})[0] == pytest.approx(p[0, 1] + p[0, 2])

    with pytest.raises(ValueError, match="no human-vs-AI task"):
        rb.origin_scorer(_model([{"name": "style", "labels": ["a", "b"]}]))


def test_sample_rows_keeps_strata_shares():
    df = pd.DataFrame({"origin": ["human"] * 80 + ["ai"] * 20, "generator": [None] * 80 + ["g1", "g2"] * 10})
    s = rb.sample_rows(df, 50)
    assert len(s) == 50
    assert (s["origin"] == "human").sum() == 40 and (s["generator"] == "g1").sum() == 5
    assert list(s.index) == sorted(s.index)
    assert rb.sample_rows(df, None) is df


def test_detection_table_by_group():
    is_ai = np.array([1, 1, 1, 1, 0, 0, 0], bool)
    groups = np.array(["g1", "g1", "g2", "g2", None, None, None], dtype=object)
    p = {"original": np.array([0.9, 0.8, 0.4, 0.3, 0.1, 0.35, 0.2])}
    t = rb.detection_table(p, is_ai, groups)
    assert t["conditions"]["original"]["n"] == 7
    g1, g2 = t["by_group"]["g1"]["original"], t["by_group"]["g2"]["original"]
    assert g1["n_ai"] == 2 and g1["n_human"] == 3 and g1["auc"] == 1.0
    # g2's .4 beats all three humans, .3 beats .1 and .2 only: 5/6
    assert g2["auc"] == pytest.approx(5 / 6, abs=1e-6) and g2["tpr_ai"] == 0.0


class _MeanEncoder:
    dim = 3

    def preprocess(self, img):
        return np.asarray(img.resize((8, 8)), np.float32).transpose(2, 0, 1) / 255

    def embed_batch(self, b):
        return b.mean(axis=(2, 3))


def test_embed_conditions_reports_bad_files(tmp_path, photo):
    good = tmp_path / "a.png"
    photo.save(good)
    bad = tmp_path / "b.jpg"
    bad.write_bytes(b"\xff\xd8 broken")
    conds = {k: v for k, v in rb.CONDITIONS.items() if v is not None}
    feats, ok, reasons = rb.embed_conditions([str(good), str(bad)], _MeanEncoder(), conds)
    assert ok.tolist() == [True, False] and 1 in reasons
    assert set(feats) == set(conds)
    assert np.isfinite(feats["jpeg_q50"][0]).all() and np.isnan(feats["jpeg_q50"][1]).all()
