"""The REST API over a tiny hand-set model (no CLIP): answers, limits, errors, and that it keeps serving."""

from __future__ import annotations

import asyncio
import functools
import io
import struct
import threading
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from artlens.serve.app import create_app
from artlens.serve.testing import MemoryIndex, colour_explainer, tiny_predictor

RED, BLUE = (210, 40, 30), (25, 45, 215)


def png_bytes(color=RED, size=(48, 40), fmt="PNG", **save) -> bytes:
    rng = np.random.default_rng(0)
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[...] = color
    arr = np.clip(arr.astype(int) + rng.integers(-12, 12, arr.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format=fmt, **save)
    return buf.getvalue()


@functools.lru_cache(maxsize=None)
def png_bomb(side: int = 30_000) -> bytes:
    """A real 1-bit PNG of side x side pixels (~110 KB on disk, ~110 MB of pixels), built row by row."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + (side + 7) // 8)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def make_image(path, color, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arr = np.empty((48, 64, 3), np.uint8)
    arr[...] = color
    arr[:24, :32] = rng.integers(0, 256, 3)  # a patch so no two pictures are the same
    Image.fromarray(arr, "RGB").save(path)
    return path


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    """Index pictures and package-style examples, generated."""
    root = tmp_path_factory.mktemp("gallery")
    paths = [
        make_image(root / "index" / "alice-red_sunset-1900.png", color=RED, seed=1),
        make_image(root / "index" / "bob-blue_sea-1910.png", color=BLUE, seed=2),
        make_image(root / "index" / "carol-dark_night.png", color=(20, 20, 25), seed=3),
    ]
    examples = root / "examples"
    make_image(examples / "claude-monet_water-lilies-1916.jpg", color=BLUE, seed=4)
    (examples / "notes.txt").write_text("not a picture")
    return root, paths, examples


@pytest.fixture(scope="module")
def client(gallery):
    root, paths, examples = gallery
    predictor = tiny_predictor()
    index = MemoryIndex(paths, predictor.encoder, labels=[{"style": "Warm"}, {"style": "Cool"}, {"style": "Dark"}])
    app = create_app(
        predictor=predictor,
        explainer=colour_explainer(predictor),
        index=index,
        examples_dir=examples,
        max_upload_mb=0.5,
        workers=2,
    )
    with TestClient(app) as c:
        yield c


def upload(name, data, ctype="image/png"):
    return {"file": (name, data, ctype)}


def assert_error(r, status, code, *words):
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code
    for w in words:
        assert w.lower() in body["detail"].lower(), body["detail"]


# ---------------------------------------------------------------------------- answers
def test_predict_one_image(client):
    r = client.post("/v1/predict", files=upload("red.png", png_bytes(RED)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"]
    (res,) = body["results"]
    assert res["name"] == "red.png" and res["error"] is None
    assert (res["width"], res["height"]) == (48, 40)
    assert set(res["tasks"]) == {"style", "genre", "origin"}
    style = res["tasks"]["style"]
    assert style["label"] == "Warm" and style["unsure"] is False
    assert [t["label"] for t in style["top"]][0] == "Warm"
    probs = [t["prob"] for t in style["top"]]
    assert probs == sorted(probs, reverse=True) and len(probs) == 3
    # origin's threshold (0.9) is above what the tiny model gives: the answer is "unsure"
    assert res["tasks"]["origin"]["unsure"] is True and res["tasks"]["origin"]["label"] == "unsure"


def test_predict_top_k_and_raw_body(client):
    r = client.post("/v1/predict?top_k=1", content=png_bytes(BLUE), headers={"content-type": "image/png"})
    assert r.status_code == 200, r.text
    style = r.json()["results"][0]["tasks"]["style"]
    assert style["label"] == "Cool" and len(style["top"]) == 1
    assert_error(client.post("/v1/predict?top_k=0", files=upload("a.png", png_bytes())), 422, "invalid_request", "top_k")


def test_predict_several_keeps_good_ones(client):
    files = [
        ("file", ("red.png", png_bytes(RED), "image/png")),
        ("file", ("page.jpg", b"<!doctype html><html><body>hi</body></html>", "image/jpeg")),
        ("file", ("cut.jpg", png_bytes(BLUE, fmt="JPEG")[:300], "image/jpeg")),
        ("file", ("blue.jpg", png_bytes(BLUE, fmt="JPEG"), "image/jpeg")),
    ]
    r = client.post("/v1/predict", files=files)
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert [x["name"] for x in res] == ["red.png", "page.jpg", "cut.jpg", "blue.jpg"]
    assert res[0]["tasks"]["style"]["label"] == "Warm"
    assert res[3]["tasks"]["style"]["label"] == "Cool"
    assert (res[1]["status"], res[1]["code"], res[1]["tasks"]) == (415, "unsupported_media_type", {})
    assert "html" in res[1]["error"].lower()
    assert (res[2]["status"], res[2]["code"]) == (422, "truncated_image")


def test_models_and_health(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    info = r.json()
    tasks = {t["name"]: t for t in info["model"]["tasks"]}
    assert tasks["style"]["labels"] == ["Warm", "Cool", "Dark"]
    assert tasks["origin"]["threshold"] == pytest.approx(0.9)
    assert info["model"]["backbone"]["name"] == "tiny-colour"
    assert info["model"]["metrics"] == {"note": "not trained; for tests only"}
    assert info["features"]["explain"]["available"] and info["features"]["similar"]["available"]
    assert info["features"]["explain"]["ready"] is True
    assert info["limits"]["max_upload_bytes"] == 500_000
    assert info["index"]["size"] == 3
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["workers"] == 2 and h["waiting"] == 0


def test_page_docs_and_headers(client):
    r = client.get("/")
    assert r.status_code == 200 and 'id="file"' in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/static/app.js").status_code == 200
    spec = client.get("/openapi.json").json()
    for path in ("/v1/predict", "/v1/explain", "/v1/similar", "/v1/models", "/healthz", "/v1/examples"):
        assert path in spec["paths"]
    assert "multipart/form-data" in spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


# ---------------------------------------------------------------------------- explain and similar
def test_explain_png_and_json(client):
    r = client.post("/v1/explain?task=style", files=upload("red.png", png_bytes(RED)))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-artlens-label"] == "Warm"
    assert Image.open(io.BytesIO(r.content)).size == (48, 40)
    r = client.post("/v1/explain?format=json&task=style&target_class=Cool", files=upload("red.png", png_bytes(RED)))
    body = r.json()
    assert (body["task"], body["label"]) == ("style", "Cool") and body["prob"] < 0.1
    import base64

    assert Image.open(io.BytesIO(base64.b64decode(body["overlay"]["base64"]))).format == "PNG"
    assert_error(client.post("/v1/explain?task=nope", files=upload("a.png", png_bytes())), 422, "invalid_request", "nope")
    assert_error(client.post("/v1/explain?method=rm", files=upload("a.png", png_bytes())), 422, "invalid_request", "method")


def test_similar_marks_the_same_picture_and_hides_paths(client, gallery):
    root, paths, _ = gallery
    r = client.post("/v1/similar?k=3", files=upload("q.png", paths[1].read_bytes()))
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == 3
    assert res[0]["id"] == "ix-1" and res[0]["duplicate"] is True and res[0]["labels"] == {"style": "Cool"}
    assert res[0]["title"] == "Sea 1910" and res[0]["artist"] == "Bob Blue"
    sims = [x["similarity"] for x in res]
    assert sims == sorted(sims, reverse=True)
    assert str(root) not in r.text and "path" not in res[0]
    img = client.get(res[0]["image_url"] + "?size=64")
    assert img.status_code == 200 and img.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(img.content)).size) == 64


def test_examples_by_id(client):
    ex = client.get("/v1/examples").json()["examples"]
    ids = [e["id"] for e in ex]
    assert ids[0] == "ex-claude-monet-water-lilies-1916"  # the examples folder first, its text file ignored
    assert ex[0]["artist"] == "Claude Monet" and ex[0]["title"] == "Water Lilies 1916"
    assert {"ix-0", "ix-1", "ix-2"} <= set(ids)
    r = client.get(ex[0]["image_url"])
    assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "JPEG"


@pytest.mark.parametrize(
    "item",
    [
        "../../../../etc/passwd",
        "..%2F..%2F..%2Fetc%2Fpasswd",
        "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
        "%2Fetc%2Fpasswd",
        "ex-..%2F..%2Fpyproject",
        "ex-notes",  # a file in the examples folder that is not a picture
        "ix-99",
        "ix--1",
        "ix-1e3",
        "ex-claude-monet-water-lilies-1916%00.png",
        "..",
        "~root",
        "C:%5Cwindows%5Cwin.ini",
    ],
)
def test_example_ids_never_reach_the_file_system(client, item):
    r = client.get(f"/v1/examples/{item}/image")
    assert r.status_code in (404, 422), r.text
    assert r.headers["content-type"].startswith("application/json")
    assert b"root:" not in r.content and b"[project]" not in r.content


def test_static_files_stay_in_their_folder(client):
    for path in ("/static/../app.py", "/static/..%2Fapp.py", "/static/%2e%2e/%2e%2e/pyproject.toml"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert b"create_app" not in r.content and b"[project]" not in r.content


# ---------------------------------------------------------------------------- limits and errors
def test_oversized_upload_is_413(client):
    big = png_bytes(size=(8, 8)) + b"\0" * 600_000
    assert_error(client.post("/v1/predict", files=upload("big.png", big)), 413, "payload_too_large", "0.5 MB")
    # No Content-Length (chunked): the limit applies while the body streams in.
    chunks = (b"\0" * 50_000 for _ in range(40))
    r = client.post("/v1/predict", content=chunks, headers={"content-type": "image/png"})
    assert_error(r, 413, "payload_too_large")


@pytest.mark.parametrize(
    "name,data,ctype,words",
    [
        ("page.html", b"<html><body>x</body></html>", "text/html", ["text/html"]),
        ("doc.pdf", b"%PDF-1.4\n%...", "application/pdf", ["application/pdf"]),
        ("v.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>', "image/svg+xml", ["svg"]),
        ("fake.jpg", b"just some text, not a picture\n" * 4, "image/jpeg", ["text"]),
        ("page.jpg", b"<!DOCTYPE html><html></html>", "application/octet-stream", ["html"]),
        ("doc.png", b"%PDF-1.7\n1 0 obj\n", "image/png", ["pdf"]),
    ],
)
def test_non_images_are_415(client, name, data, ctype, words):
    assert_error(client.post("/v1/predict", files=upload(name, data, ctype)), 415, "unsupported_media_type", name, *words)


def test_wrong_request_type_is_415(client):
    assert_error(
        client.post("/v1/predict", content=b'{"x": 1}', headers={"content-type": "application/json"}),
        415,
        "unsupported_media_type",
        "multipart",
    )


@pytest.mark.parametrize(
    "name,data,code",
    [
        ("cut.jpg", png_bytes(fmt="JPEG", size=(200, 160))[:700], "truncated_image"),
        ("cut.png", png_bytes(size=(200, 160))[:400], "truncated_image"),
        ("empty.png", b"", "invalid_image"),
        ("bomb.png", png_bomb(), "image_too_large"),
    ],
)
def test_broken_images_are_422(client, name, data, code):
    assert_error(client.post("/v1/predict", files=upload(name, data)), 422, code, name)


def test_bad_requests_are_400(client):
    assert_error(client.post("/v1/predict", data={"note": "no file"}, files={}), 415, "unsupported_media_type")
    r = client.post("/v1/predict", data={"note": "x"}, files=[("other", ("a.txt", b"", "text/plain"))])
    assert r.status_code in (415, 422)
    many = [("file", (f"{i}.png", png_bytes(size=(8, 8)), "image/png")) for i in range(17)]
    assert_error(client.post("/v1/predict", files=many), 400, "bad_request", "files")
    two = [("file", (f"{i}.png", png_bytes(), "image/png")) for i in range(2)]
    assert_error(client.post("/v1/explain", files=two), 400, "bad_request", "one image")
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/predict"), 405, "method_not_allowed")


def test_server_keeps_serving_after_errors(client):
    bad = [
        upload("a.html", b"<html>", "text/html"),
        upload("b.jpg", png_bytes(fmt="JPEG")[:200], "image/jpeg"),
        upload("c.png", png_bomb()),
        upload("d.png", png_bytes() + b"\0" * 600_000),
    ]
    for files in bad * 3:
        assert 400 <= client.post("/v1/predict", files=files).status_code < 500
    r = client.post("/v1/predict", files=upload("red.png", png_bytes(RED)))
    assert r.status_code == 200 and r.json()["results"][0]["tasks"]["style"]["label"] == "Warm"
    h = client.get("/healthz").json()
    assert (h["status"], h["active"], h["waiting"]) == ("ok", 0, 0)


# ---------------------------------------------------------------------------- features missing
def test_missing_features_answer_501_or_503(gallery):
    predictor = tiny_predictor()
    app = create_app(predictor=predictor, examples_dir=None, warmup=False)
    with TestClient(app) as c:
        info = c.get("/v1/models").json()
        assert info["features"]["similar"]["available"] is False
        r = c.post("/v1/similar", files=upload("a.png", png_bytes()))
        assert r.status_code in (501, 503), r.text
        assert "--index" in r.json()["detail"] or "not available" in r.json()["detail"]
        # Grad-CAM cannot be built for the tiny colour "backbone": a clear 5xx, not a crash
        r = c.post("/v1/explain", files=upload("a.png", png_bytes()))
        assert r.status_code in (501, 503), r.text
        assert r.json()["error"] in ("not_implemented", "unavailable")
        explain = c.get("/v1/models").json()["features"]["explain"]
        assert explain["available"] is False and explain["ready"] is False and explain["detail"]
        assert c.get("/v1/examples").json() == {"examples": []}
        assert c.post("/v1/predict", files=upload("a.png", png_bytes(RED))).status_code == 200


def test_cors_off_by_default_and_opt_in():
    pre = {"origin": "http://evil.example", "access-control-request-method": "POST"}
    app = create_app(predictor=tiny_predictor(), explainer=None, examples_dir=None, warmup=False)
    with TestClient(app) as c:
        r = c.options("/v1/predict", headers=pre)
        assert "access-control-allow-origin" not in r.headers
        r = c.get("/healthz", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers
    app = create_app(predictor=tiny_predictor(), examples_dir=None, warmup=False, cors_origins=["http://ok.example"])
    with TestClient(app) as c:
        r = c.get("/healthz", headers={"origin": "http://ok.example"})
        assert r.headers["access-control-allow-origin"] == "http://ok.example"
        r = c.get("/healthz", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_host_allow_list_refuses_a_rebound_name():
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends `Host: evil.example`."""
    from artlens.cli.serve import allowed_hosts

    hosts = allowed_hosts("127.0.0.1", 8765, [])
    assert hosts == ["127.0.0.1:8765", "localhost:8765", "[::1]:8765"]
    assert allowed_hosts("0.0.0.0", 8765, []) is None  # every interface, no names given: any Host
    assert allowed_hosts("0.0.0.0", 8765, ["box.lan"]) == ["box.lan"]
    app = create_app(predictor=tiny_predictor(), examples_dir=None, warmup=False, allowed_hosts=hosts)
    with TestClient(app, base_url="http://127.0.0.1:8765") as c:
        assert c.get("/healthz").status_code == 200
        for ok in ("localhost", "localhost:8765", "[::1]:8765"):
            assert c.get("/healthz", headers={"host": ok}).status_code == 200, ok
        for bad in ("evil.example", "evil.example:8765", "127.0.0.1:9999", "localhost.evil.example", ""):
            r = c.get("/healthz", headers={"host": bad})
            assert_error(r, 400, "invalid_host")
        r = c.post("/v1/predict", headers={"host": "evil.example:8765"}, files=upload("a.png", png_bytes()))
        assert_error(r, 400, "invalid_host", "evil.example")
    # the test client's default `Host: testserver` passes once named
    app = create_app(predictor=tiny_predictor(), examples_dir=None, warmup=False, allowed_hosts=hosts + ["testserver"])
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200


# ---------------------------------------------------------------------------- pool, timeouts, queue
class GatedPredictor:
    """Wraps the tiny predictor; each call waits for `gate` and records how many ran at once."""

    def __init__(self):
        self.inner = tiny_predictor()
        self.model = self.inner.model
        self.thresholds = self.inner.thresholds
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.calls = 0

    def predict_images(self, images, names):
        with self.lock:
            self.running += 1
            self.calls += 1
            self.most = max(self.most, self.running)
        try:
            if names and names[0] != "warm-up":
                self.gate.wait(10)
            return self.inner.predict_images(images, names)
        finally:
            with self.lock:
                self.running -= 1


def test_timeout_is_504_and_the_server_recovers():
    slow = GatedPredictor()
    app = create_app(predictor=slow, examples_dir=None, warmup=False, workers=1, timeout_s=0.5)
    with TestClient(app) as c:
        assert_error(c.post("/v1/predict", files=upload("a.png", png_bytes())), 504, "timeout", "time limit")
        slow.gate.set()
        r = c.post("/v1/predict", files=upload("a.png", png_bytes(RED)))
        assert r.status_code == 200 and r.json()["results"][0]["tasks"]["style"]["label"] == "Warm"


def test_flood_queues_in_a_bounded_pool():
    """8 simultaneous uploads, 1 worker, 2 admitted at once, 3 may wait: 3 are turned away with 503,
    the rest are answered, and the model never runs two requests at once."""
    import httpx

    slow = GatedPredictor()
    app = create_app(predictor=slow, examples_dir=None, warmup=False, workers=1, max_queue=3, timeout_s=20)

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
                posts = [
                    asyncio.create_task(ac.post("/v1/predict", files=upload(f"{i}.png", png_bytes(RED))))
                    for i in range(8)
                ]
                for _ in range(200):  # wait until the flood has reached the gate
                    await asyncio.sleep(0.01)
                    if sum(t.done() for t in posts) >= 3:
                        break
                health = await ac.get("/healthz")
                slow.gate.set()
                return await asyncio.gather(*posts), health.json()

    answers, health = asyncio.run(main())
    codes = sorted(r.status_code for r in answers)
    assert codes == [200] * 5 + [503] * 3, codes
    assert all(r.json()["error"] == "busy" for r in answers if r.status_code == 503)
    assert all(r.json()["results"][0]["tasks"]["style"]["label"] == "Warm" for r in answers if r.status_code == 200)
    assert (health["active"], health["waiting"]) == (2, 3)
    assert slow.most == 1 and slow.calls == 5


def test_faiss_index_directory(gallery, tmp_path):
    """`index_dir` loads an `artlens index` directory (FAISS) and answers /v1/similar from it."""
    pd = pytest.importorskip("pandas")
    retrieval = pytest.importorskip("artlens.retrieval.index")
    import hashlib

    from artlens.data.images import load_image

    root, paths, _ = gallery
    predictor = tiny_predictor()
    enc = predictor.encoder
    vectors = enc.embed_images([load_image(p) for p in paths])
    rows = pd.DataFrame({
        "path": [str(p) for p in paths],
        "style": ["Warm", "Cool", "Dark"],
        "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
    })
    retrieval.FaissIndex.build(vectors, rows, backbone="tiny-colour", backbone_id=enc.backbone_id).save(tmp_path / "idx")
    app = create_app(predictor=predictor, index_dir=tmp_path / "idx", explainer=colour_explainer(predictor), examples_dir=None)
    with TestClient(app) as c:
        info = c.get("/v1/models").json()
        assert info["features"]["similar"]["available"] and info["index"]["size"] == 3
        r = c.post("/v1/similar?k=2", files=upload("q.png", paths[2].read_bytes()))
        assert r.status_code == 200, r.text
        res = r.json()["results"]
        assert res[0]["id"] == "ix-2" and res[0]["duplicate"] is True and res[0]["labels"]["style"] == "Dark"
        assert str(root) not in r.text
        assert c.get(res[0]["image_url"]).status_code == 200
        ids = [e["id"] for e in c.get("/v1/examples").json()["examples"]]
        assert sorted(ids) == ["ix-0", "ix-1", "ix-2"]  # one per style from the index
        assert c.get("/v1/examples/ix-3/image").status_code == 404


# ---------------------------------------------------------------------------- banded origin + attached family
GREEN, OLIVE = (30, 210, 40), (170, 190, 20)


def banded_predictor(**kw):
    """The tiny model with origin as a band (green: AI, red: a person, olive: unsure) and a family
    task reported inside origin."""
    from artlens.models.artmodel import ArtModel
    from artlens.predict import Predictor
    from artlens.serve.testing import ColourEncoder, tiny_model

    base = tiny_model()
    tensors = {
        **base.tensors,
        "heads.origin.0.weight": np.array([[10, 0, 0, 0, 0, 0], [0, 10, 0, 0, 0, 0]], np.float32),  # human: red, ai: green
        "heads.origin.0.bias": np.zeros(2, np.float32),
        "heads.family.0.weight": np.array([[0, 4, 0, 0, 0, 0], [0, 2, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0] * 6], np.float32),
        "heads.family.0.bias": np.zeros(4, np.float32),
    }
    tasks = [dict(t) for t in base.config["tasks"]]
    origin = next(t for t in tasks if t["name"] == "origin")
    origin["band"] = {"label": "ai", "accept": 0.9, "reject": 0.2, "check": {"jpeg_quality": 70, "scale": 0.75}}
    tasks.append({"name": "family", "labels": ["flux", "sdxl", "sd1", "dalle"],
                  "attach": {"task": "origin", "when": "ai", "key": "family"}})
    return Predictor(ArtModel({**base.config, "tasks": tasks}, tensors), top_k=10, encoder=ColourEncoder(), **kw)


def test_models_expose_band_and_attach_and_predict_nests_family():
    app = create_app(predictor=banded_predictor(), explainer=None, examples_dir=None, warmup=False)
    with TestClient(app) as c:
        tasks = {t["name"]: t for t in c.get("/v1/models").json()["model"]["tasks"]}
        assert tasks["origin"]["band"] == {"label": "ai", "accept": 0.9, "reject": 0.2,
                                           "check": {"jpeg_quality": 70, "scale": 0.75}}
        assert tasks["origin"]["attach"] is None and tasks["style"]["band"] is None
        # the page skips attached tasks: their answer is inside the parent's
        assert tasks["family"]["attach"] == {"task": "origin", "when": "ai", "key": "family"}
        assert tasks["family"]["labels"] == ["flux", "sdxl", "sd1", "dalle"]

        files = [("file", (f"{n}.png", png_bytes(col), "image/png")) for n, col in
                 (("green", GREEN), ("red", RED), ("olive", OLIVE))]
        r = c.post("/v1/predict?top_k=2", files=files)
        assert r.status_code == 200, r.text
        green, red, olive = (x["tasks"] for x in r.json()["results"])
        assert set(green) == {"style", "genre", "origin"}  # no top-level family
        o = green["origin"]
        assert (o["label"], o["unsure"]) == ("ai", False) and "reason" not in o
        assert [f["label"] for f in o["family"]] == ["flux", "sdxl"]  # top_k applies to the family too
        assert red["origin"]["label"] == "human" and "family" not in red["origin"]
        o = olive["origin"]
        assert (o["label"], o["unsure"]) == ("unsure", True)
        assert o["reason"].startswith("weak evidence") and o["top"][0]["label"] == "ai"
        assert 0.2 < o["top"][0]["prob"] < 0.9

    # a threshold given for origin replaces its band: the page must not draw the band's tick
    app = create_app(predictor=banded_predictor(thresholds={"origin": 0.5}), explainer=None, examples_dir=None, warmup=False)
    with TestClient(app) as c:
        origin = next(t for t in c.get("/v1/models").json()["model"]["tasks"] if t["name"] == "origin")
        assert origin["band"] is None and origin["threshold"] == 0.5
