"""The artist task and attribution on real WikiArt paintings with the offline CLIP encoder.

A small subset: 4 distinctive known artists (10 paintings each, so `--min-per-class 10`) and 12
artists with 2 paintings each as the kept-out ones (background training, validation and test). The numbers of record come from
benchmarks/artist.py; here the pipeline must work end to end on real images and real embeddings.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.integration

KNOWN = ("katsushika-hokusai", "rembrandt", "andy-warhol", "claude-monet")
PER_KNOWN, N_UNKNOWN = 10, 12


def _subset(root):
    files = sorted((root / "wikiart-styles").rglob("*.jpg"))
    by_artist: dict[str, list] = {}
    for f in files:
        by_artist.setdefault(f.name.split("_", 1)[0], []).append(f)
    rows = [str(p) for a in KNOWN for p in by_artist[a][:PER_KNOWN]]
    others = sorted(a for a, fs in by_artist.items() if a not in KNOWN and len(fs) >= 2)
    step = max(1, len(others) // N_UNKNOWN)
    rows += [str(p) for a in others[::step][:N_UNKNOWN] for p in by_artist[a][:2]]
    return pd.DataFrame({"path": rows})


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    import os

    from artlens.embed import embed_manifest, file_sha256, get_encoder

    # The `shared_datasets` fixture is function-scoped; the embeddings are computed once per module.
    shared_datasets = Path(os.environ.get("ARTLENS_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "datasets"
    if not shared_datasets.is_dir():
        pytest.skip(f"{shared_datasets} is not there")

    try:
        encoder = get_encoder("clip-vit-b16")
    except Exception as exc:
        pytest.skip(f"CLIP encoder not available ({exc})")
    df = _subset(shared_datasets)
    df["sha256"] = [file_sha256(p) for p in df["path"]]
    store = tmp_path_factory.mktemp("store")
    vectors, ok = embed_manifest(df, encoder, store_root=store, workers=0, progress=False)[:2]
    assert ok.all()
    return df, vectors, encoder, store


def test_artist_head_and_unknown_rule_on_real_paintings(embedded):
    import torch

    from artlens.evaluate.artist import evaluate_artist
    from artlens.train.artist import train_artist_task

    torch.set_num_threads(2)
    df, vectors, encoder, _ = embedded
    art = train_artist_task(df, vectors, min_per_class=PER_KNOWN, backbone={"name": "clip-vit-b16"}, threads=2,
                            candidates=[{"components": 32, "weight_decay": 1e-2}, {"components": None, "weight_decay": 1e-2}])
    assert len(art.metrics["head_trials"]) == 2
    f = art.split.frame
    m = {**art.metrics, **evaluate_artist(art.to_model(all_openset=True), f, vectors[f["row"].to_numpy()])}
    assert art.labels == ["Andy Warhol", "Claude Monet", "Katsushika Hokusai", "Rembrandt"]
    assert m["split"]["kept_out_artists"] == N_UNKNOWN and m["split"]["known_test"] == 4 * 2
    assert m["background"] and m["split"]["unknown_train"] > 0 and m["split"]["unknown_test"] > 0
    # Four very different painters: CLIP embeddings separate them almost perfectly.
    assert m["closed_set_test"]["accuracy"] >= 0.75
    assert m["nearest_centroid_test"]["accuracy"] >= 0.75
    val = m["open_set_validation"]
    assert art.task.unknown["method"] == val["method"] and art.task.unknown["label"] == "unknown artist"
    assert val["methods"][val["method"]]["auroc"] > 0.5
    p = m["open_set_test"]
    assert p["known_correct_name"] + p["known_called_unknown"] + p["known_wrong_name"] == pytest.approx(1.0, abs=1e-3)


def test_cli_trains_a_model_and_attributes_a_painting(embedded, tmp_path):
    from artlens.cli import app
    from artlens.models.artmodel import ArtModel
    from artlens.predict import Predictor
    from artlens.retrieval.index import FaissIndex

    df, vectors, encoder, store = embedded
    manifest = tmp_path / "subset.parquet"
    df.to_parquet(manifest)
    runner = CliRunner()
    res = runner.invoke(app, ["train-artist", str(manifest), "--out", str(tmp_path / "model"), "--min-per-class",
                              str(PER_KNOWN), "--store", str(store), "--json"])
    assert res.exit_code == 0, res.output
    metrics = json.loads(res.stdout)
    assert metrics["split"]["known_artists"] == 4
    model = ArtModel.load(tmp_path / "model")
    assert model.task("artist").unknown["label"] == "unknown artist"

    # A Hokusai painting the head never saw (the 11th) is named, by the head and by similarity.
    used = set(df["path"])
    folder = Path(next(p for p in df["path"] if "katsushika-hokusai_" in p)).parent
    extra = sorted(p for p in folder.glob("katsushika-hokusai_*.jpg") if str(p) not in used)[0]
    row = Predictor(model, encoder=encoder).predict_paths([extra])[0]
    assert row["error"] is None
    assert row["tasks"]["artist"]["top"][0]["label"] == "Katsushika Hokusai"

    index_dir = tmp_path / "index"
    FaissIndex.build(vectors, df, backbone="clip-vit-b16", backbone_id=encoder.backbone_id).save(index_dir)
    res = runner.invoke(app, ["attribute", str(extra), str(tmp_path / "missing.jpg"), "--gallery", str(index_dir),
                              "--model", str(tmp_path / "model"), "--json"])
    assert res.exit_code == 2, res.output  # one input could not be read
    out = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
    assert out[1]["error"] and out[1]["artists"] == []
    first = out[0]
    assert [a["artist"] for a in first["artists"]][0] == "Katsushika Hokusai"
    assert {a["artist"] for a in first["artists"]} <= set(model.task("artist").labels)  # known artists only
    assert len(first["artists"][0]["works"]) == 3 and "katsushika-hokusai_" in first["artists"][0]["works"][0]["path"]
    assert first["model"]["top"][0]["label"] == "Katsushika Hokusai"
    # the answer's evidence: the nearest known paintings (Hokusai's when the head names him)
    ev = first["evidence"]
    assert len(ev["works"]) == 3
    if first["model"]["label"] == "Katsushika Hokusai":
        assert ev["artist"] == "Katsushika Hokusai" and ev["works"] == first["artists"][0]["works"]
    else:
        assert first["model"]["label"] == "unknown artist" and ev["artist"] is None
