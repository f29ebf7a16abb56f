"""`artlens serve --collection DIR`: the folder's index brought up to date at start-up, /v1/similar
answering from it, thumbnails by row id only. A six-number colour encoder stands in for CLIP."""

from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from artlens.embed import Encoder
from artlens.serve.app import create_app
from artlens.serve.collection import THUMB_SIDE, open_collection
from artlens.serve.testing import colour_explainer, tiny_model, tiny_predictor

COLOURS = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}


def _colour_features(img) -> np.ndarray:
    small = img.convert("RGB").resize((16, 16))
    return (np.asarray(small, dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


class TinyEncoder(Encoder):
    """Centred per-channel mean and spread: pictures of one colour are near, others far."""

    name = "tiny-colour"
    backbone_id = "tiny-colour-v1"
    dim = 6

    def __init__(self):
        self.preprocess = _colour_features
        self.seen = 0

    def embed_batch(self, batch):
        batch = np.asarray(batch, np.float32)
        self.seen += len(batch)
        return np.concatenate([batch.mean(axis=(2, 3)) - 0.45, batch.std(axis=(2, 3))], axis=1).astype(np.float32)


def _picture(path, colour, seed, size=(400, 300)):
    rng = np.random.default_rng(seed)
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[...] = colour
    arr += rng.integers(0, 20, arr.shape, dtype=np.uint8)  # a little texture, distinct bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "RGB").save(path)
    return path


@pytest.fixture
def museum(tmp_path):
    """Six pictures in style folders (the folder names become the index's `style` labels)."""
    root = tmp_path / "museum"
    for i, (style, colour) in enumerate(COLOURS.items()):
        for j in range(2):
            _picture(root / style / f"{style}-{j}.png", colour, seed=10 * i + j)
    return root


def _upload(path):
    return {"file": (path.name, path.read_bytes(), "image/png")}


def _app(backend):
    predictor = tiny_predictor()
    return create_app(predictor=predictor, index=backend, explainer=colour_explainer(predictor), examples_dir=None,
                      warmup=False)


def test_collection_is_indexed_and_served(museum, tmp_path, monkeypatch):
    enc = TinyEncoder()
    backend, update = open_collection(museum, tiny_model(), encoder=enc, workers=0, store_root=tmp_path / "store")
    assert (update.added, update.kept, update.removed, update.written) == (6, 0, 0, True)
    assert update.path == museum / ".artlens-index" and (update.path / "meta.json").is_file()
    assert enc.seen == 6
    with TestClient(_app(backend)) as c:
        info = c.get("/v1/models").json()
        assert info["features"]["similar"]["available"]
        assert info["index"]["size"] == 6 and info["index"]["collection"] == "museum"
        assert info["index"]["default_mode"] in info["index"]["modes"]

        query = museum / "blue" / "blue-1.png"
        r = c.post("/v1/similar?k=3", files=_upload(query))
        assert r.status_code == 200, r.text
        body = r.json()
        res = body["results"]
        assert body["by"] == info["index"]["default_mode"]
        assert res[0]["duplicate"] and res[0]["title"] == "Blue 1"  # its own file, marked
        assert [n["labels"]["style"] for n in res[:2]] == ["blue", "blue"]
        assert res[2]["labels"]["style"] != "blue"
        for n in res:
            assert n["thumb_url"] == f"/v1/collection/{n['row']}/thumb" and n["id"] == f"ix-{n['row']}"
            assert n["distance"] == pytest.approx(1 - n["similarity"], abs=2e-4)
        assert res[0]["similarity"] >= res[1]["similarity"] >= res[2]["similarity"]
        assert str(museum) not in r.text  # no server paths in the answer

        # the thumbnail of a neighbour, small, decoded from the file the index stores for that row
        t = c.get(res[1]["thumb_url"])
        assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
        thumb = Image.open(io.BytesIO(t.content))
        assert thumb.format == "JPEG" and max(thumb.size) == THUMB_SIDE
        assert thumb.size == (THUMB_SIDE, THUMB_SIDE * 3 // 4)  # aspect kept (400 x 300 source)
        r_, g_, b_ = np.asarray(thumb.convert("RGB"), np.float32).mean(axis=(0, 1))
        assert b_ > 150 and r_ < 90  # the blue picture's pixels

        # cached by row: a second request does not read the file again
        import artlens.data.images as images

        reads = []
        real = images.read_image_file
        monkeypatch.setattr(images, "read_image_file", lambda p, **kw: reads.append(p) or real(p, **kw))
        assert c.get(res[1]["thumb_url"]).content == t.content and reads == []
        assert c.get(res[2]["thumb_url"]).status_code == 200 and len(reads) == 1

        # a search mode the index has, and one it has not
        assert c.post("/v1/similar?k=2&by=visual", files=_upload(query)).json()["by"] == "visual"
        bad = c.post("/v1/similar?k=2&by=nonsense", files=_upload(query))
        assert bad.status_code == 422 and "visual" in bad.json()["detail"]


def test_the_search_mode_the_index_was_given_is_kept(museum, tmp_path):
    """`artlens index DIR --by features` then `serve --collection DIR`: the server does not rewrite
    the index to its own default mode."""
    from artlens.retrieval import index_collection

    first = index_collection(museum, backbone="tiny-colour", encoder=TinyEncoder(), default_mode="features",
                             store_root=tmp_path / "s", workers=0)
    assert first.index.default_mode == "features"
    backend, update = open_collection(museum, tiny_model(), encoder=TinyEncoder(), workers=0, store_root=tmp_path / "s")
    assert backend.default_mode == "features" and not update.written and update.kept == 6
    # an index never given a mode gets the retrieval default
    (museum / ".artlens-index" / "meta.json").unlink()
    backend, update = open_collection(museum, tiny_model(), encoder=TinyEncoder(), workers=0, store_root=tmp_path / "s")
    assert backend.default_mode == "visual" and update.written


@pytest.mark.reliability
@pytest.mark.parametrize(
    "ref, status",
    [
        ("-1", 422),
        ("6", 404),
        ("99", 404),
        ("4294967296", 422),
        ("abc", 422),
        ("1.5", 422),
        ("0x1", 422),
        ("%2e%2e", 422),
        ("..%2F..%2Fetc%2Fpasswd", 404),
        ("%2Fetc%2Fpasswd", 404),
        ("red%2Fred-0.png", 404),
    ],
)
def test_bad_thumbnail_ids_read_no_file(museum, tmp_path, monkeypatch, ref, status):
    import artlens.data.images as images

    backend, _ = open_collection(museum, tiny_model(), encoder=TinyEncoder(), workers=0, store_root=tmp_path / "s")
    reads = []
    monkeypatch.setattr(images, "read_image_file", lambda p, **kw: reads.append(p))
    with TestClient(_app(backend)) as c:
        r = c.get(f"/v1/collection/{ref}/thumb")
        assert r.status_code == status, (ref, r.text)
        assert r.headers["content-type"].startswith("application/json") and r.json()["error"]
    assert reads == []


@pytest.mark.reliability
def test_thumbnail_of_a_file_gone_since_start_up_is_404(museum, tmp_path):
    backend, _ = open_collection(museum, tiny_model(), encoder=TinyEncoder(), workers=0, store_root=tmp_path / "s")
    row = next(i for i in range(len(backend)) if backend.path_of(i).name == "green-0.png")
    (museum / "green" / "green-0.png").unlink()
    with TestClient(_app(backend)) as c:
        r = c.get(f"/v1/collection/{row}/thumb")
        assert r.status_code == 404 and "not available" in r.json()["detail"]
        assert c.get(f"/v1/collection/{(row + 1) % 6}/thumb").status_code == 200  # the others still served


def test_no_index_loaded_answers_404_for_thumbs():
    predictor = tiny_predictor()
    app = create_app(predictor=predictor, explainer=colour_explainer(predictor), examples_dir=None, warmup=False)
    with TestClient(app) as c:
        r = c.get("/v1/collection/0/thumb")
        assert r.status_code == 404 and "--collection" in r.json()["detail"]
        r = c.post("/v1/similar", files={"file": ("a.png", _png(), "image/png")})
        assert r.status_code == 503 and "--collection" in r.json()["detail"]


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 20, 20)).save(buf, "PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------- the command
@pytest.fixture
def cli(tmp_path, monkeypatch):
    """`artlens serve` with a saved tiny model, the colour encoder for its backbone, and uvicorn
    replaced by a stand-in that keeps the app it would have served."""
    import uvicorn

    import artlens.embed
    import artlens.embed.encoders
    import artlens.embed.extract

    model_dir = tmp_path / "tiny-model"
    tiny_model().save(model_dir)
    encoders = []

    def fake_get_encoder(name, backbone_state=None, device="cpu", preprocessing=None):
        if isinstance(name, Encoder):
            return name
        assert name == "tiny-colour"
        encoders.append(TinyEncoder())
        return encoders[-1]

    for mod in (artlens.embed, artlens.embed.encoders, artlens.embed.extract):
        if hasattr(mod, "get_encoder"):
            monkeypatch.setattr(mod, "get_encoder", fake_get_encoder)
    served = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: served.append(application))
    monkeypatch.setenv("ARTLENS_CACHE", str(tmp_path / "cache"))

    def run(*args):
        from typer.testing import CliRunner

        from artlens.cli import app

        served.clear()
        encoders.clear()
        res = CliRunner().invoke(app, ["serve", "--model", str(model_dir), "--port", "0", *args])
        return res, (served[-1] if served else None), encoders

    return run


def test_cli_serve_collection_builds_then_updates_incrementally(cli, museum):
    res, application, encoders = cli("--collection", str(museum))
    assert res.exit_code == 0, res.output
    assert re.search(r"collection index updated: 6 images \(\+6 new, 0 kept, -0 removed\)", res.output), res.output
    assert application is not None and sum(e.seen for e in encoders) == 6
    with TestClient(application, base_url="http://127.0.0.1") as c:  # the Host names serve answers
        assert c.get("/v1/models").json()["index"]["size"] == 6
        r = c.post("/v1/similar?k=2", files=_upload(museum / "red" / "red-0.png"))
        assert r.status_code == 200, r.text
        top = r.json()["results"][0]
        assert top["duplicate"] and top["labels"]["style"] == "red"
        assert c.get(top["thumb_url"]).status_code == 200

    # restart, nothing changed: nothing embedded, nothing written
    res, application, encoders = cli("--collection", str(museum))
    assert res.exit_code == 0 and "collection index up to date: 6 images (+0 new, 6 kept, -0 removed)" in res.output
    assert sum(e.seen for e in encoders) == 0

    # a painting added, one removed: only the new one is embedded at the next start
    _picture(museum / "green" / "green-new.png", COLOURS["green"], seed=77)
    (museum / "red" / "red-1.png").unlink()
    res, application, encoders = cli("--collection", str(museum))
    assert res.exit_code == 0, res.output
    assert "collection index updated: 6 images (+1 new, 5 kept, -1 removed)" in res.output, res.output
    assert sum(e.seen for e in encoders) == 1
    with TestClient(application, base_url="http://127.0.0.1") as c:  # the Host names serve answers
        r = c.post("/v1/similar?k=6", files=_upload(museum / "green" / "green-new.png"))
        res_ = r.json()["results"]
        assert res_[0]["duplicate"] and res_[0]["title"] == "Green New"
        assert all(n["title"] != "Red 1" for n in res_)
        assert c.get(res_[0]["thumb_url"]).status_code == 200
        assert c.get("/v1/collection/6/thumb").status_code == 404
    meta = json.loads((museum / ".artlens-index" / "meta.json").read_text())
    assert meta["count"] == 6


def test_cli_collection_and_index_are_exclusive(cli, museum, tmp_path):
    res, application, _ = cli("--collection", str(museum), "--index", str(tmp_path))
    assert res.exit_code == 64 and application is None
    assert "mutually exclusive" in res.output
    assert not (museum / ".artlens-index").exists()


def test_cli_collection_must_be_a_folder(cli, tmp_path):
    res, application, _ = cli("--collection", str(tmp_path / "nowhere"))
    assert res.exit_code == 1 and application is None
    assert "nowhere" in res.output and "not a folder" in res.output
