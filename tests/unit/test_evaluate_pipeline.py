"""`evaluate()` and `artlens evaluate` end to end on generated images with a colour "encoder".

The encoder's features are the mean RGB of the picture, and the model's heads read them directly,
so every prediction (and so every number in the report) is known in advance.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re

import numpy as np
import pandas as pd
import pytest

from artlens.data.manifest import write_manifest
from artlens.embed import Encoder
from artlens.evaluate.pipeline import EvaluateError, evaluate, load_rows
from artlens.models.artmodel import ArtModel

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220)}


def _mean_rgb(img):
    return np.asarray(img.convert("RGB").resize((8, 8)), dtype=np.float32).transpose(2, 0, 1) / 255.0


class ColourEncoder(Encoder):
    backbone_id = "test-mean-rgb-v1"
    dim = 3
    name = "mean-rgb"
    preprocess = staticmethod(_mean_rgb)

    def __init__(self):
        self.calls = 0

    def embed_batch(self, batch):
        self.calls += len(batch)
        return batch.mean(axis=(2, 3)).astype(np.float32)


def colour_model() -> ArtModel:
    cfg = {"format": "artlens-model", "version": 1, "mode": "probe",
           "backbone": {"name": "mean-rgb", "weights_id": "test", "feature_dim": 3},
           "tasks": [{"name": "style", "labels": ["red", "green", "blue"], "threshold": 0.5},
                     {"name": "origin", "labels": ["human", "ai"]},
                     {"name": "artist", "labels": ["x", "y"]}]}
    return ArtModel(cfg, {
        "heads.style.0.weight": np.eye(3, dtype=np.float32) * 8, "heads.style.0.bias": np.zeros(3, np.float32),
        # "ai" when the picture is red
        "heads.origin.0.weight": np.array([[-6, 3, 3], [6, -3, -3]], np.float32),
        "heads.origin.0.bias": np.zeros(2, np.float32),
        "heads.artist.0.weight": np.zeros((2, 3), np.float32), "heads.artist.0.bias": np.zeros(2, np.float32),
    })


@pytest.fixture
def manifest(tmp_path, image_factory):
    rows = []
    for lab, c in COLOURS.items():
        for i in range(4):
            p = image_factory(f"img/{lab}/{i}.png", size=(40, 32), color=c, seed=i)
            ai = lab == "red" or (lab == "green" and i == 0)  # one green AI image: a sure mistake
            rows.append({"path": str(p), "style": lab, "origin": "ai" if ai else "human",
                         "generator": ("gen-a" if i % 2 else "gen-b") if ai else None, "split": "test"})
    rows[5]["style"] = "purple"  # a label the model does not know
    rows.append({"path": str(tmp_path / "img/blue/0.png"), "style": None, "origin": None, "generator": None, "split": "test"})
    bad = tmp_path / "img" / "broken.jpg"
    bad.write_text("this is not a picture")
    rows.append({"path": str(bad), "style": "red", "origin": "ai", "generator": "gen-a", "split": "test"})
    rows.append({"path": str(tmp_path / "img/red/0.png"), "style": "red", "origin": "ai", "generator": "gen-a", "split": "train"})
    df = pd.DataFrame(rows)
    df["sha256"] = [hashlib.sha256(open(p, "rb").read()).hexdigest() for p in df["path"]]
    path = tmp_path / "manifest.parquet"
    write_manifest(df, path)
    return path


@pytest.fixture
def logs(tmp_path):
    d = tmp_path / "logs" / "version_0"
    d.mkdir(parents=True)
    (d / "metrics.csv").write_text("epoch,step,train_loss,val_loss,val_acc\n0,1,1.0,0.9,0.5\n1,2,0.6,0.7,0.8\n")
    return d.parent


def test_evaluate_writes_every_artifact(tmp_path, manifest, logs):
    enc = ColourEncoder()
    out = tmp_path / "out"
    res = evaluate(colour_model(), manifest, out, encoder=enc, store_root=tmp_path / "store", robustness=True,
                   group_by="generator", logs=logs, progress=False, workers=0)
    m = json.loads((out / "metrics.json").read_text())
    for name in ("report.html", "outliers.csv", "unreadable.csv", "robustness.png", "training_curves.png",
                 "classification_report_style.txt", "confusion_style.png", "f1_style.png", "reliability_style.png",
                 "gallery_successes_style.png", "gallery_mistakes_origin.png", "confusion_origin.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name

    assert m["data"]["split"] == "test" and m["data"]["rows"] == 14  # the train row is left out
    assert m["data"]["unreadable"] == 1 and res.n_failed == 1
    assert m["unreadable"][0]["path"].endswith("broken.jpg")
    style = m["tasks"]["style"]
    # 12 pictures + the unlabelled duplicate; the purple one and the broken one drop out
    assert style["n"] == 11 and style["missing_label"] == 1
    assert style["unknown_label"] == {"purple": 1} and style["unreadable_with_label"] == 1
    assert style["accuracy"] == 1.0 and style["per_class"]["green"]["support"] == 3
    assert style["top_k_accuracy"] == {"1": 1.0}
    origin = m["tasks"]["origin"]
    assert origin["n"] == 12 and origin["accuracy"] == pytest.approx(11 / 12, abs=1e-6)
    assert origin["by_group"]["groups"]["gen-b"]["n_ai"] == 3  # red 0, red 2, green 0
    # artist: no row has the column: reported, not fatal
    assert m["tasks"]["artist"]["n"] == 0 and "no row has" in m["tasks"]["artist"]["skipped"]

    rob = m["robustness"]
    assert set(rob["conditions"]) == {"original", "jpeg_q90", "jpeg_q70", "jpeg_q50", "downscale_0.5x",
                                      "center_crop_80%", "png_resave"}
    assert rob["rows"] == 12 and rob["conditions"]["original"]["fpr_human"] == 0.0
    assert rob["conditions"]["original"]["tpr_ai"] == pytest.approx(4 / 5)
    # mean colour survives these changes, so the colour detector does not move
    assert rob["conditions"]["png_resave"] == rob["conditions"]["original"]
    assert set(rob["by_group"]) == {"gen-a", "gen-b"}
    assert m["training_curves"]["epochs"] == [0, 1]

    out_df = pd.read_csv(out / "outliers.csv")
    wrong = out_df[(out_df.task == "origin") & out_df.reason.str.startswith("misclassified")]
    assert len(wrong) == 1 and wrong.iloc[0]["true"] == "ai" and wrong.iloc[0]["predicted"] == "human"
    assert wrong.iloc[0]["path"].endswith("green/0.png")
    assert set(out_df.columns) >= {"path", "true", "predicted", "confidence"}


def test_report_is_self_contained(tmp_path, manifest, logs):
    out = tmp_path / "out"
    evaluate(colour_model(), manifest, out, encoder=ColourEncoder(), store_root=tmp_path / "store",
             robustness=True, logs=logs, progress=False, workers=0)
    html = (out / "report.html").read_text()
    for section in ('id="summary"', 'id="task-style"', 'id="task-origin"', 'id="robustness"', 'id="curves"',
                    'id="issues"', "Most confident mistakes", "Most confident correct answers", "broken.jpg"):
        assert section in html, section
    srcs = re.findall(r'src="([^"]+)"', html)
    assert len(srcs) >= 10 and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "<link" not in html and "<script" not in html  # nothing fetched from elsewhere


def test_warns_when_the_encoder_changed_since_training(tmp_path, manifest):
    model = colour_model()
    model.config["backbone"]["backbone_id"] = "test-mean-rgb-v0"
    res = evaluate(model, manifest, tmp_path / "o", encoder=ColourEncoder(), store_root=tmp_path / "s",
                   progress=False, workers=0)
    assert len(res.metrics["warnings"]) == 1 and "test-mean-rgb-v0" in res.metrics["warnings"][0]
    assert "encoder changed" in (tmp_path / "o" / "report.html").read_text()
    model.config["backbone"]["backbone_id"] = ColourEncoder.backbone_id
    res = evaluate(model, manifest, tmp_path / "o2", encoder=ColourEncoder(), store_root=tmp_path / "s",
                   progress=False, workers=0, html=False)
    assert res.metrics["warnings"] == [] and res.metrics["model"]["backbone_id"] == "test-mean-rgb-v1"


def test_second_evaluation_reuses_the_embedding_store(tmp_path, manifest):
    first, again = ColourEncoder(), ColourEncoder()
    kw = dict(store_root=tmp_path / "store", progress=False, workers=0, html=False)
    evaluate(colour_model(), manifest, tmp_path / "a", encoder=first, **kw)
    evaluate(colour_model(), manifest, tmp_path / "b", encoder=again, **kw)
    assert first.calls == 12 and again.calls == 0  # 12 distinct readable pictures, then none


def test_bad_inputs_are_clear_errors(tmp_path, manifest):
    with pytest.raises(EvaluateError, match="no rows with split 'val'"):
        load_rows(manifest, "val")
    with pytest.raises(EvaluateError, match="no such file"):
        load_rows(tmp_path / "nope.parquet")
    df = pd.read_parquet(manifest).drop(columns=["style", "origin"])
    with pytest.raises(EvaluateError, match="no evaluated rows"):
        evaluate(colour_model(), df, tmp_path / "o", encoder=ColourEncoder(), store_root=tmp_path / "s",
                 progress=False, workers=0)


def test_cli_evaluate(tmp_path, manifest, monkeypatch):
    from typer.testing import CliRunner

    from artlens.cli import app
    from artlens.evaluate import pipeline

    model_dir = colour_model().save(tmp_path / "model")
    monkeypatch.setattr(pipeline, "model_encoder", lambda model: ColourEncoder())
    monkeypatch.setenv("ARTLENS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "cli-out"
    res = CliRunner().invoke(app, ["evaluate", str(model_dir), str(manifest), "--out", str(out), "--json"])
    assert res.exit_code == 2, res.output  # finished, one image unreadable
    assert json.loads(res.stdout)["tasks"]["style"]["accuracy"] == 1.0
    assert "broken.jpg" in res.stderr
    res = CliRunner().invoke(app, ["evaluate", str(model_dir), str(manifest), "--split", "val"])
    assert res.exit_code == 1 and "no rows with split" in res.stderr


def test_evaluate_a_folder(tmp_path, image_factory):
    """A folder is scanned (labels from its layout); with no split column every row counts."""
    for lab, c in COLOURS.items():
        for i in range(2):
            image_factory(f"folder/{lab}/{i}.png", size=(40, 32), color=c, seed=10 + i)
    (tmp_path / "folder" / "notes.jpg").write_text("not a picture")
    res = evaluate(colour_model(), tmp_path / "folder", tmp_path / "out", encoder=ColourEncoder(),
                   store_root=tmp_path / "store", progress=False, workers=0, html=False)
    m = res.metrics
    assert m["data"]["split"] is None and "all 6 rows" in m["data"]["note"]
    assert m["tasks"]["style"]["n"] == 6 and m["tasks"]["style"]["accuracy"] == 1.0
    assert m["tasks"]["origin"]["n"] == 0  # a plain folder says nothing about origin
    assert res.n_failed == 1 and res.errors["path"].iloc[0].endswith("notes.jpg")
