"""Origin on a small slice of ../shared: scan -> embed -> add_origin (trained by groups, or on
content-matched pairs: FLUX "style of <artist>" tiles beside those artists' WikiArt paintings) ->
predict."""

from __future__ import annotations

import pandas as pd
import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PER_GROUP = 12


def test_origin_end_to_end_on_shared_slice(shared_datasets, clip_weights, tmp_path):
    from artlens import default_model_dir
    from artlens.data.manifest import scan
    from artlens.embed import embed_manifest
    from artlens.models.artmodel import ArtModel
    from artlens.predict import Predictor
    from artlens.train.origin import add_origin

    frames = []
    for name in ("ai-generators", "human-sketches", "human-photos"):
        m = scan(shared_datasets / name, workers=0).manifest
        assert {"origin", "family" if name.startswith("ai") else "kind"} <= set(m.columns)
        frames.append(m)
    df = pd.concat(frames, ignore_index=True)
    df = df[df["family"].isin(["flux", "dalle", "sdxl", "ldm"]) | df["origin"].eq("human")]
    # FLUX tiles of artists that WikiArt has first, and their paintings: the content-matched pairs
    from artlens.data.taxonomy import artist_slug

    wikiart = sorted((shared_datasets / "wikiart-styles").rglob("*.jpg"))
    painted = {artist_slug(p.name.split("_")[0]) for p in wikiart}
    paired = df["artist"].map(lambda a: isinstance(a, str) and artist_slug(a) in painted)
    df = df.assign(_paired=~paired).sort_values("_paired", kind="stable").drop(columns="_paired")
    key = df["family"].fillna(df["kind"])
    df = df.groupby(key, group_keys=False).head(PER_GROUP).reset_index(drop=True)
    flux = {artist_slug(a) for a in df.loc[df["family"].eq("flux"), "artist"].dropna()}
    paintings = [p for p in wikiart if artist_slug(p.name.split("_")[0]) in flux][:PER_GROUP]
    assert len(paintings) >= 4, "no WikiArt paintings of the FLUX slice's artists"
    df = pd.concat([df, pd.DataFrame({"path": [str(p) for p in paintings], "origin": "human", "kind": "painting"})],
                   ignore_index=True)
    vectors, ok, errors = embed_manifest(df, "clip-vit-b16", progress=False)
    assert ok.all() and errors.empty
    model = add_origin(ArtModel.load(default_model_dir()), vectors, df,
                       {"candidates": [{"blocks": ["block9"], "weight_decay": 0.1},
                                       {"blocks": ["embedding", "block9"], "weight_decay": 10.0, "train": "pairs"}],
                        "cap": None,
                        "check": {"jpeg_quality": 70, "scale": 0.75}})
    o = model.config["metrics"]["origin"]
    held = set(o["operating_point"]["validation"])
    assert {"ai:flux", "ai:dalle", "ai:sdxl", "ai:ldm", "human:pencil sketch", "human:painting"} <= held
    # both candidates validated on every group; the pairs one never trained on the photographs
    assert [c["recipe"].get("train", "groups") for c in o["candidates"]] == ["groups", "pairs"]
    assert all(set(c["table"]) == held for c in o["candidates"])
    assert 0 < o["temperature"] and model.task("origin").temperature == pytest.approx(o["temperature"], abs=1e-4)
    assert model.task("family").labels == ["dalle", "flux", "ldm", "sdxl"]
    model.save(tmp_path / "m")
    results = Predictor(tmp_path / "m").predict_paths(list(df["path"][:6]) + [str(tmp_path / "missing.jpg")])
    assert results[-1]["error"] and not results[-1]["tasks"]  # a bad file is one row, the rest answered
    for r in results[:-1]:
        o = r["tasks"]["origin"]
        assert o["label"] in ("ai", "human", "unsure")
        assert ("reason" in o) == o["unsure"]
        assert ("family" in o) == (o["top"][0]["label"] == "ai")
