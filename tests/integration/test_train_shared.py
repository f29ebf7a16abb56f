"""Training on small subsets of ../shared/datasets: probe, multi-task probe, fine-tune."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from artlens.cli import app

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def link_subset(src: Path, dst: Path, per_folder: int) -> Path:
    """dst mirrors src's class folders with symlinks to the first `per_folder` images of each
    (scanning a few images instead of the whole set; nothing is copied)."""
    for folder in sorted(p for p in src.rglob("*") if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.suffix.lower() in (".jpg", ".jpeg", ".png"))[:per_folder]
        for f in files:
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    return dst


def ai_subset(src: Path, dst: Path, rows: int) -> Path:
    import pandas as pd

    meta = pd.read_csv(src / "metadata.csv", dtype=str, keep_default_na=False)
    meta = meta.iloc[:: max(1, len(meta) // rows)].head(rows).copy()
    meta["file"] = [str(src / f) for f in meta["file"]]
    dst.mkdir(parents=True, exist_ok=True)
    meta.to_csv(dst / "metadata.csv", index=False)
    return dst


def _train(args):
    res = CliRunner().invoke(app, ["train", *args, "--json"])
    assert res.exit_code in (0, 2), res.output
    return json.loads(res.stdout)


def test_clip_probe_on_wikiart_subset(shared_datasets, tmp_path):
    from artlens.models.artmodel import ArtModel

    out = tmp_path / "probe"
    payload = _train([str(REPO / "configs/clip-probe-wikiart.yaml"), "--out", str(out),
                      "--data", str(link_subset(shared_datasets / "wikiart-styles", tmp_path / "w", 6)),
                      "--set", "probe.candidates=[{type: linear, weight_decay: [1.0e-3, 1.0e-2]}]"])
    model = ArtModel.load(out)
    assert model.mode == "probe" and len(model.task("style").labels) == 11
    assert payload["metrics"]["val"]["style"]["n"] > 0
    # the saved model answers for a real painting through the project's predictor
    from artlens.predict import Predictor

    path = sorted((shared_datasets / "wikiart-styles" / "Baroque").glob("*.jpg"))[0]
    row = Predictor(out).predict_paths([path])[0]
    assert row["error"] is None and row["tasks"]["style"]["top"][0]["label"] in model.task("style").labels


def test_multitask_probe_on_three_subsets(shared_datasets, tmp_path):
    from artlens.models.artmodel import ArtModel

    out = tmp_path / "multi"
    d = shared_datasets
    w = link_subset(d / "wikiart-styles", tmp_path / "w", 4)
    lv = link_subset(d / "louvre-genre", tmp_path / "l", 3)
    ai = ai_subset(d / "ai-sd-artists", tmp_path / "ai", 24)
    _train([str(REPO / "configs/multitask-probe.yaml"), "--out", str(out),
            "--set", f"data.sources=[{{path: '{w}', labels: {{origin: human}}}},"
                     f"{{path: '{lv}', options: {{levels: '{{split}}/{{genre}}'}}, labels: {{origin: human}}}},"
                     f"{{path: '{ai}', labels: {{origin: ai}}}}]",
            "--set", "probe.candidates=[{type: linear, weight_decay: 1.0e-2, class_weight: balanced}]"])
    model = ArtModel.load(out)
    assert model.task_names == ["style", "genre", "origin"]
    assert set(model.task("origin").labels) == {"ai", "human"}
    assert set(model.task("genre").labels) == {"genre_painting", "landscape", "portrait", "still_life"}
    feats = np.random.default_rng(0).normal(size=(2, model.feature_dim)).astype(np.float32)
    probs = model.predict_proba(feats)
    assert set(probs) == {"style", "genre", "origin"}


def test_simple_cnn_finetune_on_wikiart_subset(shared_datasets, tmp_path):
    from artlens.models.artmodel import ArtModel

    out = tmp_path / "cnn"
    _train([str(REPO / "configs/simple-cnn-baseline.yaml"), "--out", str(out), "--epochs", "1",
            "--data", str(link_subset(shared_datasets / "wikiart-styles", tmp_path / "w", 8)),
            "--set", "finetune.image_size=64", "--set", "finetune.num_workers=0",
            "--set", "finetune.progress=none", "--set", "finetune.batch_size=16"])
    model = ArtModel.load(out)
    assert model.mode == "finetune" and model.backbone_state()
    assert (out / "checkpoints" / "last.ckpt").is_file() and (out / "logs" / "metrics.csv").is_file()
