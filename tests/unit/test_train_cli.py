"""`artlens train` end to end in probe mode on generated images with fake embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from artlens.cli import app
from tests.unit.test_train_finetune import TinySpec, make_dataset


@pytest.fixture
def fake_embeddings(monkeypatch):
    """Features = mean colour of each image + noise (no encoder needed)."""
    import artlens.train.probe as probe
    from artlens.data.images import load_image

    def embed_rows(prepared, recipe, progress=True):
        rng = np.random.default_rng(0)
        feats = []
        for p in prepared.df["path"]:
            arr = np.asarray(load_image(p), dtype=np.float32) / 255
            feats.append(np.concatenate([arr.mean((0, 1)), rng.normal(size=5) * 0.01]))
        return np.asarray(feats, np.float32), prepared, None, None

    monkeypatch.setattr(probe, "embed_rows", embed_rows)
    monkeypatch.setattr(probe, "_spec", lambda name: TinySpec())


def test_train_probe_cli_json_and_overrides(tmp_path, fake_embeddings):
    from artlens.models.artmodel import ArtModel

    data = make_dataset(tmp_path / "data", per_class=10)
    out = tmp_path / "model"
    res = CliRunner().invoke(app, [
        "train", "--mode", "probe", "--data", str(data), "--tasks", "style", "--out", str(out), "--json",
        "--set", "probe.candidates=[{type: linear, weight_decay: [0.01, 0.1]}]", "--set", "data.split.test=0.2",
    ])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["model_dir"] == str(out) and payload["mode"] == "probe"
    assert payload["metrics"]["val"]["style"]["accuracy"] >= 0.75  # redder vs bluer images
    model = ArtModel.load(out)
    assert model.config["recipe"]["probe"]["candidates"] == [{"type": "linear", "weight_decay": [0.01, 0.1]}]
    assert model.config["recipe"]["data"]["split"]["test"] == 0.2
    assert "norm.mean" in model.tensors


def test_train_cli_errors_are_one_line_and_exit_1(tmp_path):
    res = CliRunner().invoke(app, ["train", "--set", "finetune.optimizer.name=lion"])
    assert res.exit_code == 1 and "optimizer.name" in res.output
    res = CliRunner().invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert res.exit_code == 1 and "not found" in res.output


def test_cli_flags_map_to_recipe_keys():
    from artlens.cli.train import _merge_tasks, _overrides
    from artlens.train.config import load_recipe

    o = _overrides("finetune", ["a", "b"], None, None, "resnet18", 3, 8, 0.1, 7, 2, "ddp", 2, "cpu",
                   ["finetune.progress=rich"], as_json=True)
    r = load_recipe(None, o)
    ft = r["finetune"]
    assert (r["mode"], r["backbone"]["name"], r["seed"]) == ("finetune", "resnet18", 7)
    assert (ft["epochs"], ft["batch_size"], ft["optimizer"]["lr"]) == (3, 8, 0.1)
    assert (ft["devices"], ft["strategy"], ft["num_nodes"], ft["accelerator"]) == (2, "ddp", 2, "cpu")
    assert [s["path"] for s in r["data"]["sources"]] == ["a", "b"]
    assert ft["progress"] == "rich"  # --set wins over --json's default (no bars on stdout)
    assert load_recipe(None, _overrides(*[None] * 13, [], as_json=True))["finetune"]["progress"] == "none"
    merged = _merge_tasks([{"name": "origin", "column": "origin", "hidden": [256]}], "style, origin")
    assert merged == ["style", {"name": "origin", "column": "origin", "hidden": [256]}]


def test_min_per_class_keeps_small_labels_out_and_names_them(tmp_path, fake_embeddings):
    """`--min-per-class N` sets every task's min_count: labels with fewer rows are kept out and reported."""
    from PIL import Image

    from artlens.models.artmodel import ArtModel

    data = make_dataset(tmp_path / "data", per_class=10)
    (data / "Fauvism").mkdir()
    for i in range(3):  # a greener class, too small for --min-per-class 5
        arr = np.random.default_rng(5000 + i).integers(0, 156, size=(32, 32, 3), dtype=np.uint8)
        arr[..., 1] += 100
        Image.fromarray(arr, "RGB").save(data / "Fauvism" / f"Fauvism_{i}.png")
    args = ["train", "--mode", "probe", "--data", str(data), "--tasks", "style", "--min-per-class", "5",
            "--set", "probe.candidates=[{type: linear, weight_decay: [0.01]}]", "--set", "data.split.test=0.2"]
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "m1"), "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.stdout)
    assert payload["kept_out"] == {"style": {"Fauvism": 3}}
    model = ArtModel.load(tmp_path / "m1")
    assert model.task("style").labels == ["Baroque", "Cubism"]
    assert model.config["recipe"]["tasks"][0]["min_count"] == 5
    # Without --json the kept-out labels are named in the command's output (a note on stderr).
    res = CliRunner().invoke(app, args + ["--out", str(tmp_path / "m2")])
    assert res.exit_code == 0, res.output
    assert "Fauvism (3)" in res.output and "fewer than 5" in res.output
    # Without the flag every label with a training row is a class.
    res = CliRunner().invoke(app, args[:7] + args[9:] + ["--out", str(tmp_path / "m3"), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["kept_out"] == {}
    assert ArtModel.load(tmp_path / "m3").task("style").labels == ["Baroque", "Cubism", "Fauvism"]


def test_files_the_encoder_rejects_after_the_scan_are_reported_and_exit_2(tmp_path, monkeypatch):
    # A file can pass the scan and still fail at embedding (changed on disk, decoder limits):
    # training goes on without it, names it on one line, and exits 2 (partial), like scan errors.
    import pandas as pd

    import artlens.embed
    import artlens.train.probe as probe

    monkeypatch.setattr(probe, "_spec", lambda name: TinySpec())
    data = make_dataset(tmp_path / "data", per_class=10)
    victim = {}

    def embed_manifest(df, backbone, **kw):
        paths = list(df["path"])
        victim["path"] = paths[3]
        ok = np.array([p != paths[3] for p in paths])
        rng = np.random.default_rng(0)
        vectors = np.stack([np.concatenate([[1.0 if "Baroque" in p else 0.0], rng.normal(size=4) * 0.01]) for p in paths])
        errors = pd.DataFrame({"path": [paths[3]], "reason": ["corrupt image data (test)"]})
        return vectors.astype(np.float32), ok, errors

    monkeypatch.setattr(artlens.embed, "embed_manifest", embed_manifest)
    res = CliRunner().invoke(app, ["train", "--mode", "probe", "--data", str(data), "--tasks", "style",
                                   "--out", str(tmp_path / "model"), "--json"])
    assert res.exit_code == 2, res.output
    assert json.loads(res.stdout)["unreadable_files"] == 1
    assert f"{victim['path']}: corrupt image data (test)" in res.stderr


def test_train_with_origin_by_groups_replaces_the_probe_head(tmp_path, fake_embeddings):
    """A recipe with `origin.enabled`: the probe's origin head is replaced by the group-trained one
    (band + family), its split metrics are dropped, and the held-out table is printed."""
    import pandas as pd

    from artlens.models.artmodel import ArtModel
    from tests.conftest import make_image

    rows = []
    groups = {("ai", "flux", None): (220, 40, 40), ("ai", "sdxl", None): (200, 60, 90),
              ("human", None, "sketch"): (40, 40, 220), ("human", None, "photo"): (60, 90, 200)}
    for n, ((origin, family, kind), color) in enumerate(groups.items()):
        for i in range(12):
            make_image(tmp_path / "data" / "images" / f"{n}_{i}.png", size=(24, 24), color=color, seed=100 * n + i)
            rows.append({"file": f"images/{n}_{i}.png", "origin": origin, "family": family, "kind": kind})
    manifest = tmp_path / "data"  # a folder with metadata.csv: the metadata_csv layout
    pd.DataFrame(rows).to_csv(manifest / "metadata.csv", index=False)
    out = tmp_path / "model"
    res = CliRunner().invoke(app, [
        "train", "--mode", "probe", "--data", str(manifest), "--tasks", "origin", "--out", str(out),
        "--set", "probe.candidates=[{type: linear, weight_decay: 0.01}]", "--set", "origin.enabled=true",
        "--set", "origin.cap=null", "--set", "origin.candidates=[{blocks: [all], weight_decay: 0.01}]",
    ])
    assert res.exit_code == 0, res.output
    assert "each group held out in turn" in res.output and "human:sketch" in res.output
    model = ArtModel.load(out)
    assert model.task("origin").band and model.task("family").labels == ["flux", "sdxl"]
    metrics = model.config["metrics"]
    assert "origin" not in metrics.get("test", {}) and set(metrics["origin"]["operating_point"]["validation"]) == {
        "ai:flux", "ai:sdxl", "human:sketch", "human:photo"}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert "origin" in on_disk and "origin" not in on_disk.get("test", {})
