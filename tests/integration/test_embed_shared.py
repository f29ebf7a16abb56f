"""Real WikiArt images through the real CLIP encoder and `artlens embed`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artlens.models.clip import CLIP_FEATURE_DIM

pytestmark = pytest.mark.integration

STYLES = ("Ukiyo_e", "Pop_Art", "Pointillism")


@pytest.fixture(scope="module")
def real_paths():
    root = Path(os.environ.get("ARTLENS_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "datasets" / "wikiart-styles"
    if not root.is_dir():
        pytest.skip(f"{root} is not there")
    return {s: sorted(str(p) for p in (root / s).glob("*.jpg"))[:4] for s in STYLES}


@pytest.fixture(scope="module")
def clip():
    pytest.importorskip("onnxruntime")
    from artlens.embed import get_encoder

    try:
        return get_encoder("clip-vit-b16")
    except Exception as exc:  # weights package not installed
        pytest.skip(f"CLIP encoder unavailable: {exc}")


def test_clip_vectors_are_normalised_and_separate_styles(clip, real_paths):
    from artlens.data.images import load_image

    paths = [p for s in STYLES for p in real_paths[s]]
    vecs = clip.embed_images([load_image(p) for p in paths])
    assert vecs.shape == (len(paths), CLIP_FEATURE_DIM) and clip.dim == CLIP_FEATURE_DIM
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    labels = np.repeat(np.arange(len(STYLES)), 4)
    sim = vecs @ vecs.T
    same = sim[(labels[:, None] == labels[None]) & ~np.eye(len(paths), dtype=bool)].mean()
    other = sim[labels[:, None] != labels[None]].mean()
    assert same > other + 0.05, (same, other)


def test_clip_embedding_does_not_depend_on_the_batch(clip, real_paths):
    from artlens.data.images import load_image

    arrays = [clip.preprocess(load_image(p)) for s in STYLES for p in real_paths[s]]
    alone = np.concatenate([clip.embed_batch(a[None]) for a in arrays[:4]])
    mixed = clip.embed_batch(np.stack(arrays[8:] + arrays[:4][::-1]))[-4:][::-1]
    cos = np.sum(alone * mixed, axis=1)
    assert cos.min() >= 0.999, cos


def test_artlens_embed_cli_on_real_images(tmp_path, clip, real_paths):
    paths = [p for s in STYLES for p in real_paths[s][:2]]
    listing = tmp_path / "m.csv"
    pd.DataFrame({"path": paths}).to_csv(listing, index=False)
    out = tmp_path / "vectors.npy"
    cmd = [sys.executable, "-m", "artlens", "embed", str(listing), "--store", str(tmp_path / "store"), "--out", str(out),
           "--json", "--workers", "1", "--batch-size", "4"]
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    first = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1])
    assert first["computed"] == len(paths) and first["failed"] == 0 and first["dim"] == CLIP_FEATURE_DIM
    second = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout.strip().splitlines()[-1])
    assert second["computed"] == 0 and second["reused"] == len(paths)
    assert second["backbone_id"] == clip.backbone_id

    from artlens.data.images import load_image
    from artlens.embed.export import load_embeddings

    rows, vecs, info = load_embeddings(out)
    assert rows.path.tolist() == paths and info["backbone_id"] == clip.backbone_id
    direct = clip.embed_images([load_image(p) for p in paths])
    assert np.sum(vecs * direct, axis=1).min() >= 0.999
