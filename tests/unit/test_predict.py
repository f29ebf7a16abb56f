"""Predictor: top-k, unsure, open-set rules, and bad files in a batch."""

from __future__ import annotations

import numpy as np
import pytest

from artlens.models.artmodel import ArtModel
from artlens.predict import Predictor, expand_inputs


class MeanColourEncoder:
    """A stand-in encoder: the mean RGB of the image (so colour decides the class)."""

    backbone_id = "mean-colour"
    dim = 3

    def preprocess(self, img):
        return (np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def embed_batch(self, batch):
        return batch.mean(axis=(2, 3))


def _colour_model(threshold=0.0, unknown=None) -> ArtModel:
    # logits = 10 * (rgb) -> red images are "red", blue ones "blue"
    w = np.eye(3, dtype=np.float32) * 10
    b = np.zeros(3, np.float32)
    cfg = {
        "format": "artlens-model", "version": 1, "mode": "probe",
        "backbone": {"name": "mean-colour", "feature_dim": 3},
        "tasks": [{"name": "colour", "labels": ["red", "green", "blue"], "threshold": threshold, "unknown": unknown}],
    }
    return ArtModel(cfg, {"heads.colour.0.weight": w, "heads.colour.0.bias": b})


def test_predicts_colours_and_keeps_going_past_bad_files(image_factory, tmp_path):
    red = image_factory("a/red.png", color=(250, 5, 5))
    blue = image_factory("a/sub/blue.jpg", color=(5, 5, 250))
    (tmp_path / "a/broken.jpg").write_bytes(b"this is text, not a jpeg")
    (tmp_path / "a/empty.png").write_bytes(b"")
    (tmp_path / "a/notes.txt").write_text("ignored: not an image suffix")
    files = expand_inputs([tmp_path / "a"])
    assert len(files) == 4 and not any(f.endswith(".txt") for f in files)
    p = Predictor(_colour_model(), encoder=MeanColourEncoder(), top_k=2)
    rows = {r["path"]: r for r in p.predict_paths(files, batch_size=3)}
    assert rows[str(red)]["tasks"]["colour"]["label"] == "red"
    assert rows[str(blue)]["tasks"]["colour"]["label"] == "blue"
    assert len(rows[str(blue)]["tasks"]["colour"]["top"]) == 2
    assert "not an image" in rows[str(tmp_path / "a/broken.jpg")]["error"]
    assert "empty" in rows[str(tmp_path / "a/empty.png")]["error"]


def test_unsure_threshold_and_override(image_factory):
    grey = image_factory("grey.png", color=(128, 128, 128))
    p = Predictor(_colour_model(threshold=0.6), encoder=MeanColourEncoder())
    res = p.predict_paths([grey])[0]["tasks"]["colour"]
    assert res["label"] == "unsure" and res["unsure"]
    p2 = Predictor(_colour_model(threshold=0.6), encoder=MeanColourEncoder(), thresholds={"colour": 0.1})
    assert p2.predict_paths([grey])[0]["tasks"]["colour"]["label"] != "unsure"
    with pytest.raises(ValueError, match="tasks the model does not have"):
        Predictor(_colour_model(), encoder=MeanColourEncoder(), thresholds={"style": 0.1})


def test_open_set_max_prob_rule(image_factory):
    grey = image_factory("grey.png", color=(120, 130, 125))
    red = image_factory("red.png", color=(250, 0, 0))
    rule = {"method": "max_prob", "threshold": 0.8, "label": "unknown colour"}
    p = Predictor(_colour_model(unknown=rule), encoder=MeanColourEncoder())
    out = p.predict_paths([grey, red])
    assert out[0]["tasks"]["colour"]["label"] == "unknown colour"
    assert out[1]["tasks"]["colour"]["label"] == "red"
