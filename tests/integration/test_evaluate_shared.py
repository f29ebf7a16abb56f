"""`artlens evaluate` on real paintings: a tiny probe model (scikit-learn heads over CLIP embeddings,
written with the artifact's tensor names) scored on held-out images, with robustness and groups."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytestmark = pytest.mark.integration

STYLES = ["Baroque", "Pop_Art", "Ukiyo_e"]
PER_STYLE = 6  # 4 train, 2 test
AI_IMAGES = 8  # per generator (2 of them): 2 train, 2 test


def _rows(shared: Path) -> pd.DataFrame:
    rows = []
    for style in STYLES:
        files = sorted((shared / "wikiart-styles" / style).glob("*.jpg"))[:PER_STYLE]
        for i, f in enumerate(files):
            rows.append({"path": str(f), "style": style, "origin": "human", "generator": None,
                         "split": "train" if i < 4 else "test"})
    meta = pd.read_csv(shared / "ai-sd-artists" / "metadata.csv").sort_values("file")
    for gen, part in meta.groupby("checkpoint"):
        for i, f in enumerate(part["file"].head(AI_IMAGES // 2)):
            rows.append({"path": str(shared / "ai-sd-artists" / f), "style": None, "origin": "ai",
                         "generator": gen, "split": "train" if i < AI_IMAGES // 4 else "test"})
    df = pd.DataFrame(rows)
    df["sha256"] = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in df["path"]]
    return df


def _fit_probe(X: np.ndarray, y: np.ndarray, labels: list[str], name: str, column: str):
    """scikit-learn logistic regression -> `heads.<task>.0.*` tensors (standardised features)."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=0.5, max_iter=2000).fit(X, y)
    w, b = clf.coef_.astype(np.float32), clf.intercept_.astype(np.float32)
    if len(labels) == 2:  # sklearn keeps one row for two classes: softmax([0, z]) == sigmoid(z)
        w, b = np.vstack([np.zeros_like(w), w]), np.concatenate([[0.0], b]).astype(np.float32)
    task = {"name": name, "labels": labels, "column": column, "threshold": 0.4}
    return task, {f"heads.{name}.0.weight": w, f"heads.{name}.0.bias": b}


def test_evaluate_real_paintings(shared_datasets, tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import app
    from artlens.data.manifest import write_manifest
    from artlens.embed import embed_manifest, get_encoder
    from artlens.models.artmodel import ArtModel

    df = _rows(shared_datasets)
    manifest = write_manifest(df, tmp_path / "manifest.parquet")
    enc = get_encoder("clip-vit-b16")
    feats, ok, errors = embed_manifest(df, enc, batch_size=16, workers=1, progress=False)
    assert ok.all(), errors

    train = (df["split"] == "train").to_numpy()
    mean, std = feats[train].mean(0), feats[train].std(0) + 1e-6
    Xs = (feats - mean) / std
    tensors = {"norm.mean": mean.astype(np.float32), "norm.std": std.astype(np.float32)}
    has_style = df["style"].notna().to_numpy()
    st_task, t1 = _fit_probe(Xs[train & has_style], df["style"][train & has_style].map(STYLES.index).to_numpy(),
                             STYLES, "style", "style")
    or_task, t2 = _fit_probe(Xs[train], (df["origin"][train] == "ai").astype(int).to_numpy(),
                             ["human", "ai"], "origin", "origin")
    cfg = {"format": "artlens-model", "version": 1, "mode": "probe",
           "backbone": {"name": "clip-vit-b16", "feature_dim": int(enc.dim)}, "tasks": [st_task, or_task]}
    model_dir = ArtModel(cfg, {**tensors, **t1, **t2}).save(tmp_path / "model")

    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["evaluate", str(model_dir), str(manifest), "--out", str(out),
                                   "--robustness", "--group-by", "generator", "--json", "--gallery", "6"])
    assert res.exit_code == 0, res.output
    m = json.loads((out / "metrics.json").read_text())
    assert m["data"]["rows"] == len(df[df.split == "test"]) and m["data"]["unreadable"] == 0
    style = m["tasks"]["style"]
    assert style["n"] == 2 * len(STYLES) and style["missing_label"] == AI_IMAGES // 2  # AI rows have no style
    assert style["accuracy"] >= 0.5  # three far-apart styles; chance is 1/3
    assert set(m["tasks"]["origin"]["by_group"]["groups"]) == {"DreamShaper 3.2", "Deliberate 2.0"}
    rob = m["robustness"]
    assert rob["rows"] == len(df[df.split == "test"]) and len(rob["conditions"]) == 7
    assert all(v["auc"] is not None for v in rob["conditions"].values())
    for name in ("report.html", "confusion_style.png", "gallery_successes_style.png", "robustness.png",
                 "classification_report_origin.txt", "outliers.csv"):
        assert (out / name).stat().st_size > 0
    assert "data:image/png;base64," in (out / "report.html").read_text()
