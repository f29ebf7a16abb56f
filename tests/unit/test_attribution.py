"""Attribution by similarity on synthetic clustered embeddings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from artlens.retrieval.attribution import Attributor, attribute
from artlens.retrieval.index import FaissIndex

DIM = 16
ARTISTS = ["claude-monet", "rembrandt", "marc-chagall", "andy-warhol", "katsushika-hokusai"]


@pytest.fixture(scope="module")
def gallery():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(len(ARTISTS), DIM))
    rows, vecs = [], []
    for a, slug in enumerate(ARTISTS):
        for i in range(6 + a):  # different gallery sizes per artist
            rows.append({"path": f"/g/{slug}_work-{i}.jpg", "artist": slug, "sha256": f"{a}{i:063d}"})
            vecs.append(centres[a] + 0.6 * rng.normal(size=DIM))
    vecs = np.asarray(vecs, dtype=np.float32)
    return FaissIndex.build(vecs, pd.DataFrame(rows), backbone="synthetic"), vecs, centres


def test_nearest_artists_come_with_their_closest_works(gallery):
    index, vecs, centres = gallery
    att = Attributor(index)
    assert att.artists == sorted(["Claude Monet", "Rembrandt", "Marc Chagall", "Andy Warhol", "Katsushika Hokusai"])
    q = centres[1] + 0.1 * np.random.default_rng(1).normal(size=DIM)
    (matches,) = att.attribute(q[None, :].astype(np.float32), top_artists=3, works_per_artist=3)
    assert [m.artist for m in matches][0] == "Rembrandt"
    assert len(matches) == 3 and len({m.artist for m in matches}) == 3
    assert [m.score for m in matches] == sorted([m.score for m in matches], reverse=True)
    top = matches[0]
    assert top.n_works == 7 and len(top.works) == 3
    assert all("rembrandt_" in w.path for w in top.works)
    sims = [w.similarity for w in top.works]
    assert sims == sorted(sims, reverse=True) and sims[0] == pytest.approx(top.max_similarity, abs=1e-5)
    assert top.score == pytest.approx(np.mean(sims), abs=1e-5)  # default score: mean of the 3 closest works
    assert top.works[0].title == "work " + top.works[0].path.split("work-")[1][:-4]
    # the reported similarity is the cosine to that very work
    qn = q / np.linalg.norm(q)
    v = vecs[top.works[0].id] / np.linalg.norm(vecs[top.works[0].id])
    assert top.works[0].similarity == pytest.approx(float(qn @ v), abs=1e-5)


@pytest.mark.parametrize("method", ["max", "topk", "centroid"])
def test_ranking_matches_brute_force(gallery, method):
    index, _, _ = gallery
    att = Attributor(index)
    Q = np.random.default_rng(2).normal(size=(20, DIM)).astype(np.float32)
    for q, matches in zip(Q, att.attribute(Q, top_artists=4, method=method)):
        scores = att.artist_scores(q, method)
        expected = [att.artists[i] for i in np.argsort(-scores, kind="stable")[:4]]
        assert [m.artist for m in matches] == expected
        np.testing.assert_allclose([m.score for m in matches], np.sort(scores)[::-1][:4], atol=1e-5)


def test_query_in_the_gallery_is_marked_or_left_out(gallery):
    index, vecs, _ = gallery
    att = Attributor(index)
    sha = index.rows["sha256"][3]
    (m,) = att.attribute(vecs[3:4], query_sha256=[sha])
    assert m[0].works[0].id == 3 and m[0].works[0].duplicate and m[0].max_similarity == pytest.approx(1.0, abs=1e-5)
    (m,) = att.attribute(vecs[3:4], query_sha256=[sha], exclude_duplicates=True)
    assert all(w.id != 3 and not w.duplicate for a in m for w in a.works)
    assert m[0].max_similarity < 0.99


def test_known_artists_only_and_errors(gallery, tmp_path):
    index, vecs, centres = gallery
    att = Attributor(index, artists=["Claude Monet", "Andy Warhol"])
    (m,) = att.attribute(centres[1:2].astype(np.float32), top_artists=3)
    assert {a.artist for a in m} == {"Claude Monet", "Andy Warhol"}  # Rembrandt is not a known artist
    with pytest.raises(ValueError, match="no gallery work"):
        Attributor(index, artists=["Nobody"])
    # Without an artist column the WikiArt file names give the artists; other names cannot.
    bare = FaissIndex.build(vecs, index.rows.drop(columns="artist"))
    assert Attributor(bare).artists == Attributor(index).artists
    with pytest.raises(ValueError, match="no 'artist' labels"):
        Attributor(FaissIndex.build(vecs, index.rows.drop(columns="artist").assign(path="/g/untitled.jpg")))
    with pytest.raises(ValueError, match="dimension"):
        att.attribute(np.ones((1, DIM + 1), np.float32))
    with pytest.raises(ValueError, match="unknown attribution method"):
        att.attribute(vecs[:1], method="vote")


class _FixedEncoder:
    """Embeds every image as the centre of artist 2 (Marc Chagall)."""

    def __init__(self, vec):
        self.vec = vec.astype(np.float32)
        self.dim = len(vec)

    def embed_images(self, images):
        return np.stack([self.vec for _ in images])


def test_attribute_paths_keeps_going_past_bad_files(gallery, image_factory, tmp_path):
    index, _, centres = gallery
    good = image_factory("q.png", color=(10, 20, 30))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    out = attribute(index, [good, bad, tmp_path / "missing.jpg"], encoder=_FixedEncoder(centres[2]), top_artists=2)
    assert out[0]["error"] is None and out[0]["artists"][0]["artist"] == "Marc Chagall"
    assert len(out[0]["artists"]) == 2 and len(out[0]["artists"][0]["works"]) == 3
    assert out[1]["error"] and out[1]["artists"] == []
    assert out[2]["error"] and out[2]["artists"] == []


def _artist_model(centres, known: list[int]):
    """An artist head over the gallery's space: logits = 5 cos(x, centre), `unknown artist` below a
    centroid cosine of 0.9."""
    from artlens.models.artmodel import ArtModel

    names = ["Claude Monet", "Rembrandt", "Marc Chagall", "Andy Warhol", "Katsushika Hokusai"]
    c = centres[known] / np.linalg.norm(centres[known], axis=1, keepdims=True)
    cfg = {"format": "artlens-model", "version": 1, "mode": "probe", "backbone": {"name": "synthetic", "feature_dim": DIM},
           "tasks": [{"name": "artist", "labels": [names[i] for i in known],
                      "unknown": {"method": "centroid", "threshold": 0.9, "label": "unknown artist"}}]}
    return ArtModel(cfg, {"heads.artist.0.weight": (5 * c).astype(np.float32), "heads.artist.0.bias": np.zeros(len(known), np.float32),
                          "openset.artist.centroids": c.astype(np.float32)})


def test_model_answer_comes_with_the_nearest_known_paintings(gallery):
    """A name comes with that artist's closest works; `unknown artist` with the closest paintings of
    any known artist, so the answer shows how far the nearest known painting is."""
    index, vecs, centres = gallery
    model = _artist_model(centres, [0, 1, 2, 4])  # Andy Warhol is not a known artist
    rng = np.random.default_rng(3)
    queries = np.stack([centres[1] + 0.05 * rng.normal(size=DIM), centres[3]]).astype(np.float32)
    named, unknown = attribute(index, queries, model=model, works_per_artist=4)
    assert named["model"]["label"] == "Rembrandt" and named["evidence"]["artist"] == "Rembrandt"
    works = named["evidence"]["works"]
    assert len(works) == 4 and all("rembrandt_" in w["path"] and w["artist"] == "Rembrandt" for w in works)
    assert [w["similarity"] for w in works] == sorted([w["similarity"] for w in works], reverse=True)
    assert works == named["artists"][0]["works"][:4]  # the same works as the similarity ranking's first artist
    assert unknown["model"]["label"] == "unknown artist" and unknown["evidence"]["artist"] is None
    assert all(a["artist"] != "Andy Warhol" for a in unknown["artists"])  # only the model's artists are ranked
    works = unknown["evidence"]["works"]
    assert len(works) == 4 and all("andy-warhol_" not in w["path"] for w in works)
    q = queries[1] / np.linalg.norm(queries[1])
    known = ~index.rows["artist"].eq("andy-warhol").to_numpy()
    sims = np.where(known, (vecs / np.linalg.norm(vecs, axis=1, keepdims=True)) @ q, -np.inf)
    assert [w["id"] for w in works] == list(np.argsort(-sims, kind="stable")[:4])  # nearest known paintings overall
    assert works[0]["similarity"] == pytest.approx(float(sims.max()), abs=1e-5)
    with pytest.raises(ValueError, match="no artist task"):
        attribute(index, queries, model=_without_artist(model))
    with pytest.raises(ValueError, match="reads synthetic"):
        attribute(FaissIndex.build(vecs, index.rows, backbone="other"), queries, model=model)


def _without_artist(model):
    from artlens.models.artmodel import ArtModel

    cfg = {**model.config, "tasks": [{**model.config["tasks"][0], "name": "style", "unknown": None}]}
    return ArtModel(cfg, {"heads.style.0.weight": model.tensors["heads.artist.0.weight"],
                          "heads.style.0.bias": model.tensors["heads.artist.0.bias"]})
