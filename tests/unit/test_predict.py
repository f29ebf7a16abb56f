"""Predictor: top-k, unsure, open-set rules, and bad files in a batch."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from artlens.models.artmodel import ArtModel, ModelFormatError
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


# ---------------------------------------------------------------------------- origin band + family in the CLI
def _banded_model() -> ArtModel:
    """Mean-colour features: green is AI (FLUX-like), red a person, olive between the thresholds."""
    from artlens.models.artmodel import new_config

    tensors = {
        "heads.colour.0.weight": np.eye(3, dtype=np.float32) * 10, "heads.colour.0.bias": np.zeros(3, np.float32),
        "heads.origin.0.weight": np.array([[10, 0, 0], [0, 10, 0]], np.float32), "heads.origin.0.bias": np.zeros(2, np.float32),
        "heads.family.0.weight": np.array([[0, 4, 0], [0, 2, 0], [0, 0, 0]], np.float32),
        "heads.family.0.bias": np.zeros(3, np.float32),
    }
    cfg = new_config({
        "backbone": {"name": "mean-colour", "feature_dim": 3},
        "preprocessing": {"input_size": 8, "resize_size": 8, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bilinear"},
        "tasks": [
            {"name": "colour", "labels": ["red", "green", "blue"]},
            {"name": "origin", "labels": ["human", "ai"],
             "band": {"label": "ai", "accept": 0.9, "reject": 0.2, "check": {"jpeg_quality": 70, "scale": 0.75}}},
            {"name": "family", "labels": ["flux", "sdxl", "sd1"], "attach": {"task": "origin", "when": "ai", "key": "family"}},
        ],
    })
    return ArtModel(cfg, tensors)


def test_artist_is_withheld_when_origin_says_ai(tmp_path, monkeypatch):
    """A firm `ai` withholds the artist's name (an imitation is not the painter's work), and so does
    an `ai` made `unsure` only by its degraded copy; `human` and weak `unsure` origins leave it as it
    is, and the top list stays in every case."""
    import csv

    from PIL import Image
    from typer.testing import CliRunner

    import artlens.predict
    from artlens.cli import app
    from artlens.models.artmodel import new_config

    base = _banded_model()
    cfg = dict(base.config)
    cfg["tasks"] = [*cfg["tasks"], {"name": "artist", "labels": ["Monet", "Hokusai"],
                                    "withhold": {"task": "origin", "when": "ai"}}]
    tensors = {**base.tensors, "heads.artist.0.weight": np.array([[4, 4, 0], [0, 0, 4]], np.float32),
               "heads.artist.0.bias": np.zeros(2, np.float32)}
    model = ArtModel(new_config(cfg), tensors)
    rows = Predictor(model, encoder=MeanColourEncoder()).predict_features(
        np.array([[0.02, 1.0, 0.02], [1.0, 0.02, 0.02], [0.7, 0.78, 0.0]], np.float32))
    green, red, olive = rows
    assert green["origin"]["label"] == "ai"
    assert green["artist"]["label"] == "unsure" and green["artist"]["unsure"]
    assert green["artist"]["reason"] == "withheld: origin says 'ai'; Monet is the artist it resembles, not its maker"
    assert green["artist"]["top"][0]["label"] == "Monet"
    assert red["origin"]["label"] == "human" and red["artist"]["label"] == "Monet" and "reason" not in red["artist"]
    assert olive["origin"]["label"] == "unsure" and olive["artist"]["label"] == "Monet"
    # an `ai` that fails only on the degraded copy is `unsure`, and the name is still withheld:
    # the image itself reached the threshold; olive, below it, keeps its name
    feats = np.array([[0.02, 1.0, 0.02], [0.7, 0.78, 0.0]], np.float32)
    green, olive = Predictor(model, encoder=MeanColourEncoder()).predict_features(
        feats, check=lambda todo: np.array([[0.7, 0.78, 0.0]] * len(todo), np.float32))
    assert green["origin"]["label"] == "unsure" and green["origin"]["reason"].startswith("does not hold on a degraded copy")
    assert green["artist"]["label"] == "unsure" and green["artist"]["reason"] == (
        "withheld: origin reaches 'ai' on the image, not on its degraded copy; Monet is the artist it "
        "resembles, not its maker")
    assert olive["origin"]["label"] == "unsure" and olive["artist"]["label"] == "Monet" and "reason" not in olive["artist"]
    # the CSV always has the artist_reason column, filled where the name is withheld
    model.save(tmp_path / "model")
    for name, rgb in {"green.png": (5, 250, 5), "red.png": (250, 5, 5)}.items():
        Image.new("RGB", (16, 16), rgb).save(tmp_path / name)

    class ColourPredictor(Predictor):
        def __init__(self, model, **kw):
            super().__init__(model, encoder=MeanColourEncoder(), **kw)

    monkeypatch.setattr(artlens.predict, "Predictor", ColourPredictor)
    for files in (["red.png"], ["green.png", "red.png"]):
        run = CliRunner().invoke(app, ["predict", *[str(tmp_path / f) for f in files], "--model", str(tmp_path / "model"),
                                       "--csv", str(tmp_path / "p.csv")])
        assert run.exit_code == 0, run.output
        rows = {os.path.basename(r["path"]): r for r in csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8"))}
        assert rows["red.png"]["artist"] == "Monet" and rows["red.png"]["artist_reason"] == ""
    assert rows["green.png"]["artist"] == "unsure" and rows["green.png"]["artist_reason"].startswith("withheld")
    # a withhold naming no task of the model, or a label that task does not give, is refused on load
    for bad in ({"task": "genre", "when": "ai"}, {"task": "origin", "when": "robot"}, {"task": "artist", "when": "Monet"}):
        cfg["tasks"][-1]["withhold"] = bad
        with pytest.raises(ModelFormatError, match="withhold"):
            ArtModel(new_config(cfg), tensors)


def test_cli_shows_origin_family_and_reason(tmp_path, monkeypatch):
    import csv
    import json

    from PIL import Image
    from typer.testing import CliRunner

    import artlens.predict
    from artlens.cli import app

    _banded_model().save(tmp_path / "model")
    for name, rgb in {"green.png": (5, 250, 5), "red.png": (250, 5, 5), "olive.png": (180, 200, 0)}.items():
        Image.new("RGB", (16, 16), rgb).save(tmp_path / name)

    class ColourPredictor(Predictor):  # the CLI's predictor, with the stand-in encoder
        def __init__(self, model, **kw):
            super().__init__(model, encoder=MeanColourEncoder(), **kw)

    monkeypatch.setattr(artlens.predict, "Predictor", ColourPredictor)
    files = [str(tmp_path / n) for n in ("green.png", "red.png", "olive.png")]
    run = CliRunner(env={"COLUMNS": "400"}).invoke(app, ["predict", *files, "--model", str(tmp_path / "model"),
                                                         "--csv", str(tmp_path / "p.csv")])
    assert run.exit_code == 0, run.output
    lines = run.stdout.splitlines()
    header = next(line for line in lines if "image" in line)
    assert "origin" in header and "family" not in header  # attached: not a column of its own
    green = next(line for line in lines if "green.png" in line)
    assert re.search(r"ai 100% \(family: flux 8\d%, sdxl 1\d%\)", green), green
    olive = next(line for line in lines if "olive.png" in line)
    assert "unsure (ai 69%): weak evidence: P(ai) 0.69, between 0.20 and 0.900" in olive, olive
    assert "family" not in olive  # no family line for an answer that is not "ai"
    red = next(line for line in lines if "red.png" in line)
    assert "human 100%" in red and "family" not in red

    rows = {os.path.basename(r["path"]): r for r in csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8"))}
    cols = list(rows["green.png"])
    assert cols[cols.index("origin_top") + 1:][:3] == ["origin_family", "origin_family_top", "origin_reason"]
    assert not any(c.startswith("family") for c in cols)
    g, r, o = rows["green.png"], rows["red.png"], rows["olive.png"]
    assert (g["origin"], g["origin_family"], g["origin_reason"]) == ("ai", "flux", "")
    assert re.fullmatch(r"flux:0\.8\d+;sdxl:0\.1\d+;sd1:0\.0\d+", g["origin_family_top"]), g["origin_family_top"]
    assert (r["origin"], r["origin_family"], r["origin_family_top"], r["origin_reason"]) == ("human", "", "", "")
    assert o["origin"] == "unsure" and o["origin_unsure"] == "True" and o["origin_reason"].startswith("weak evidence")

    # JSON: the predictor's dicts as they are (family inside origin)
    run = CliRunner().invoke(app, ["predict", files[0], "--model", str(tmp_path / "model"), "--json"])
    out = json.loads(run.stdout)["tasks"]
    assert set(out) == {"colour", "origin"} and out["origin"]["family"][0]["label"] == "flux"


def test_cli_usage_error_exits_64_not_2(tmp_path):
    """2 means "finished, some inputs unreadable": a usage error has its own code (EX_USAGE)."""
    from typer.testing import CliRunner

    from artlens.cli import EXIT_USAGE, app

    assert EXIT_USAGE == 64
    for args in (["predict", "--no-such-option", "a.jpg"], ["predict"], ["no-such-command"],
                 ["predict", "--top-k", "0", "a.jpg"]):
        run = CliRunner().invoke(app, args)
        assert run.exit_code == EXIT_USAGE, (args, run.output)


def test_cli_predict_only_input_unreadable_exits_1(tmp_path, monkeypatch):
    from PIL import Image
    from typer.testing import CliRunner

    import artlens.predict
    from artlens.cli import app

    _colour_model().save(tmp_path / "model")

    class ColourPredictor(Predictor):
        def __init__(self, model, **kw):
            super().__init__(model, encoder=MeanColourEncoder(), **kw)

    monkeypatch.setattr(artlens.predict, "Predictor", ColourPredictor)
    zero = tmp_path / "zero.jpg"
    zero.write_bytes(b"")
    run = CliRunner().invoke(app, ["predict", str(zero), "--model", str(tmp_path / "model")])
    assert run.exit_code == 1, run.output
    assert "zero.jpg" in run.stderr
    Image.new("RGB", (16, 16), (250, 5, 5)).save(tmp_path / "red.png")
    run = CliRunner().invoke(app, ["predict", str(zero), str(tmp_path / "red.png"), "--model", str(tmp_path / "model")])
    assert run.exit_code == 2, run.output  # one of two unreadable: finished, partial


def test_cli_predict_model_that_cannot_load_is_one_error(tmp_path):
    """The backbone is loaded before the images: one line naming the model, not one per image."""
    from PIL import Image
    from typer.testing import CliRunner

    from artlens.cli import app

    _colour_model().save(tmp_path / "model")  # backbone "mean-colour": no such encoder
    files = []
    for name in ("a.png", "b.png"):
        Image.new("RGB", (16, 16), (250, 5, 5)).save(tmp_path / name)
        files.append(str(tmp_path / name))
    run = CliRunner().invoke(app, ["predict", "--model", str(tmp_path / "model"), *files])
    assert run.exit_code == 1, run.output
    lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, run.stderr
    assert lines[0].startswith("error: cannot load model") and str(tmp_path / "model") in lines[0]
    assert "mean-colour" in lines[0] and "a.png" not in run.output


# ---------------------------------------------------------------------------- the pipeline and devices
class SlowColourEncoder(MeanColourEncoder):
    """Records the batches it is given; a little slow, so that decoding runs ahead of it."""

    def __init__(self):
        self.batches = []

    def embed_batch(self, batch):
        import time

        time.sleep(0.01)
        self.batches.append(len(batch))
        return super().embed_batch(batch)


def test_pipeline_keeps_order_and_errors_at_any_batch_size(image_factory, tmp_path):
    files = []
    for i in range(11):
        if i in (0, 4, 10):
            bad = tmp_path / f"{i:02d}-bad.png"
            bad.write_bytes(b"not a png")
            files.append(str(bad))
        else:
            files.append(str(image_factory(f"{i:02d}.png", color=(250, 5, 5) if i % 2 else (5, 5, 250))))
    for size in (1, 2, 3, 32):
        enc = SlowColourEncoder()
        rows = Predictor(_colour_model(), encoder=enc).predict_paths(files, batch_size=size)
        assert [r["path"] for r in rows] == files
        for i, r in enumerate(rows):
            if i in (0, 4, 10):
                assert r["error"] and not r["tasks"]
            else:
                assert r["error"] is None and r["tasks"]["colour"]["label"] == ("red" if i % 2 else "blue")
        # every good image encoded once, in batches no larger than asked (bad files leave gaps)
        assert sum(enc.batches) == 8 and max(enc.batches) <= size


def test_pipeline_stops_cleanly_when_the_caller_stops(image_factory):
    import threading

    files = [str(image_factory(f"{i}.png", color=(250, 5, 5))) for i in range(40)]
    enc = SlowColourEncoder()
    before = threading.active_count()
    it = Predictor(_colour_model(), encoder=enc).iter_predict(files, batch_size=4)
    assert next(it)["tasks"]["colour"]["label"] == "red"
    it.close()  # the decode and encode threads finish their current item and go away
    assert threading.active_count() == before
    assert sum(enc.batches) < 40  # queued batches were dropped, not encoded


def test_heads_run_on_one_blas_thread(monkeypatch):
    from threadpoolctl import threadpool_info

    import artlens.predict as P

    seen = []
    model = _colour_model()
    real = model.head_logits

    def spy(features):
        seen.append([i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"])
        return real(features)

    monkeypatch.setattr(model, "head_logits", spy)
    rows = P.Predictor(model, encoder=MeanColourEncoder()).predict_features(np.array([[0.9, 0.1, 0.0]], np.float32))
    assert rows[0]["colour"]["label"] == "red"
    assert seen and all(n == 1 for n in seen[0])


def test_devices_resolve_and_cuda_without_a_gpu_is_one_clear_error(monkeypatch):
    import artlens.models.device as D

    monkeypatch.setattr(D, "cuda_device_count", lambda: 0)
    assert D.resolve_device("cpu") == "cpu"
    assert D.resolve_device("auto") == D.resolve_device(None) == "cpu"
    with pytest.raises(D.DeviceError, match="^no CUDA device: .*use --device cpu or auto"):
        D.resolve_device("cuda")
    with pytest.raises(D.DeviceError, match="unknown device 'tpu'"):
        D.resolve_device("tpu")
    monkeypatch.setattr(D, "cuda_device_count", lambda: 1)
    assert D.resolve_device("auto") == "cuda" and D.resolve_device("CUDA:0") == "cuda:0"
    with pytest.raises(D.DeviceError, match="no CUDA device 1: 1 visible"):
        D.resolve_device("cuda:1")
    assert D.default_batch_size("cpu", "vit") == 32 and D.default_batch_size("cuda:0", "vit") > 32


def test_cli_device_cuda_without_a_gpu_exits_1_with_one_line(tmp_path, monkeypatch, image_factory):
    from typer.testing import CliRunner

    import artlens.models.device as D
    from artlens.cli import app

    monkeypatch.setattr(D, "cuda_device_count", lambda: 0)
    _colour_model().save(tmp_path / "model")
    img = str(image_factory("red.png", color=(250, 5, 5)))
    for command in (["predict", img, "--model", str(tmp_path / "model")], ["explain", str(tmp_path / "model"), img],
                    ["embed", str(tmp_path)], ["index", str(tmp_path)]):
        run = CliRunner().invoke(app, [*command, "--device", "cuda"])
        assert run.exit_code == 1, (command, run.output)
        lines = [line for line in run.output.splitlines() if line.strip()]
        assert len(lines) == 1 and "no CUDA device" in lines[0], (command, run.output)
