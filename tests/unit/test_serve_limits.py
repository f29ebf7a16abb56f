"""The server under hostile uploads (issue 17): decoded-pixel budgets, stalled and vanishing clients.

Budgets are set small here so the cases stay fast; benchmarks/serve_load.py runs the full-size
ones (16 x 7,990 x 7,990 PNGs x 4 requests, 8 stalled uploads) and reports RSS and latency.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from artlens.data.images import ImageDecodeError, load_reduced_bytes
from artlens.serve.app import create_app
from artlens.serve.testing import tiny_predictor

pytestmark = pytest.mark.reliability

RED, BLUE = (210, 40, 30), (25, 45, 215)


def png(color=RED, size=(48, 40), mode="RGB", fmt="PNG") -> bytes:
    img = Image.new(mode, size, color if mode != "L" else 90)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


class RecordingPredictor:
    """The tiny predictor, remembering the size of every picture the model was given."""

    def __init__(self):
        self.inner = tiny_predictor()
        self.model = self.inner.model
        self.thresholds = self.inner.thresholds
        self.sizes: list[tuple[int, int]] = []
        self.calls = 0

    def predict_images(self, images, names):
        self.calls += 1
        self.sizes += [im.size for im in images]
        return self.inner.predict_images(images, names)


def app_with(**kw):
    kw.setdefault("predictor", tiny_predictor())
    return create_app(examples_dir=None, warmup=False, **kw)


# ---------------------------------------------------------------------------- pixel budgets
def test_over_budget_file_is_413_and_its_siblings_are_answered():
    app = app_with(request_pixel_budget=100_000, pixel_budget=1_000_000)
    files = [
        ("file", ("red.png", png(RED), "image/png")),
        ("file", ("huge.png", png(BLUE, size=(400, 300)), "image/png")),  # 120,000 px > 100,000
        ("file", ("blue.png", png(BLUE), "image/png")),
    ]
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=files)
        assert r.status_code == 200, r.text
        red, huge, blue = r.json()["results"]
        assert red["tasks"]["style"]["label"] == "Warm" and blue["tasks"]["style"]["label"] == "Cool"
        assert (huge["status"], huge["code"], huge["tasks"]) == (413, "over_pixel_budget", {})
        assert "huge.png" in huge["error"] and "0.1 Mpx" in huge["error"]
        # alone in its request: the request is the 413
        r = c.post("/v1/predict", files=[files[1]])
        assert r.status_code == 413 and r.json()["error"] == "over_pixel_budget", r.text
        # the limits are published, and nothing stays claimed
        assert c.get("/v1/models").json()["limits"]["request_pixel_budget"] == 100_000
        assert c.get("/healthz").json()["pixels_in_use"] == 0


def test_request_budget_counts_every_picture_of_the_request():
    """Three 200x200 PNGs (40,000 px each) against a 100,000 px request budget: the third is 413
    (it would not fit what is left), a new request starts afresh."""
    app = app_with(request_pixel_budget=100_000)
    files = [("file", (f"{i}.png", png(RED, size=(200, 200)), "image/png")) for i in range(3)]
    with TestClient(app) as c:
        res = c.post("/v1/predict", files=files).json()["results"]
        assert [x["status"] for x in res] == [200, 200, 413]
        assert "used 0.1 Mpx" in res[2]["error"] or "used 0.08 Mpx" in res[2]["error"] or "of its" in res[2]["error"]
        assert c.post("/v1/predict", files=files[:1]).status_code == 200


def test_pictures_reach_the_model_reduced_and_jpeg_costs_its_reduced_size():
    """A 2,000 x 1,500 PNG reaches the model at 667 x 500 (a whole-factor reduction that keeps the
    448 px the server asks for), so 16 of them cannot pile up full-size pictures; a JPEG is
    charged the pixels of its reduced decode, not of its full size."""
    rec = RecordingPredictor()
    big_png = png(RED, size=(2000, 1500))
    big_jpeg = png(RED, size=(4000, 3000), fmt="JPEG")
    app = app_with(predictor=rec, request_pixel_budget=4_000_000, pixel_budget=4_000_000)
    with TestClient(app) as c:
        r = c.post("/v1/predict", files=[("file", ("a.png", big_png, "image/png")), ("file", ("b.jpg", big_jpeg, "image/jpeg"))])
        a, b = r.json()["results"]
        assert (a["status"], a["width"], a["height"]) == (200, 2000, 1500)
        assert (b["status"], b["width"], b["height"]) == (200, 4000, 3000)  # 12 Mpx in full: 0.75 Mpx decoded
        assert rec.sizes == [(667, 500), (1000, 750)]
        assert c.get("/healthz").json()["pixels_peak"] <= 4_000_000


def test_server_budget_is_shared_and_never_exceeded():
    """Four requests of four 1,000 x 1,000 PNGs at once against a server budget of 1.5 Mpx: every
    picture is answered, and the pixels held at once never pass the budget."""
    import httpx

    app = app_with(pixel_budget=1_500_000, workers=4, timeout_s=30)
    files = [("file", (f"{i}.png", png(RED, size=(1000, 1000)), "image/png")) for i in range(4)]

    async def main():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as ac:
                answers = await asyncio.gather(*[ac.post("/v1/predict", files=files) for _ in range(4)])
                return answers, (await ac.get("/healthz")).json()

    answers, health = asyncio.run(main())
    assert [r.status_code for r in answers] == [200] * 4
    assert all(x["status"] == 200 for r in answers for x in r.json()["results"])
    assert 1_000_000 <= health["pixels_peak"] <= 1_500_000 and health["pixels_in_use"] == 0


def test_the_cost_is_known_before_any_pixel_is_decoded(monkeypatch):
    """`reserve` sees the header's cost before `load()`; refusing there decodes nothing."""
    from PIL import ImageFile

    order = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (order.append("load"), real_load(self))[1])

    class Refused(Exception):
        pass

    def refuse(cost):
        order.append(cost)
        raise Refused

    data = png(RED, size=(3000, 2000))
    with pytest.raises(Refused):
        load_reduced_bytes(data, "x.png", min_side=448, reserve=refuse)
    assert order == [6_000_000]
    probe = load_reduced_bytes(data, "x.png", min_side=448, reserve=order.append)
    assert order[:3] == [6_000_000, 6_000_000, "load"] and probe.thumbnail.size == (750, 500)
    assert (probe.width, probe.height) == (3000, 2000)
    with pytest.raises(ImageDecodeError, match="truncated"):
        load_reduced_bytes(data[:2000], "cut.png", min_side=448)


@pytest.mark.parametrize("mode", ["RGBA", "P", "L", "1", "I;16", "LA"])
def test_reduced_decode_matches_the_full_decode(mode):
    """Every mode goes through the strip-wise reduction and looks like the full decode shrunk."""
    from artlens.data.images import load_image_bytes

    rng = np.random.default_rng(0)
    base = Image.fromarray((rng.random((900, 1300, 3)) * 60 + np.linspace(0, 190, 1300)[None, :, None]).astype(np.uint8))
    img = base.convert("L").convert(mode) if mode in ("I;16",) else base.convert(mode)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    full = load_image_bytes(buf.getvalue(), "f.png")
    small = load_reduced_bytes(buf.getvalue(), "f.png", min_side=200).thumbnail
    assert small.mode == "RGB" and small.size == (325, 225)
    ref = np.asarray(full.resize(small.size, Image.BOX), np.float32)
    assert np.abs(ref - np.asarray(small, np.float32)).mean() < 2.0


# ---------------------------------------------------------------------------- a real server
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def live_server(app):
    """uvicorn on loopback in a thread, configured as `artlens serve` runs it."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, log_level="info",
                            timeout_keep_alive=5, limit_concurrency=1024)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(15)


def _stall(port: int, out: list, multipart: bool = True, declared: int = 100_000) -> None:
    """Headers and 2 bytes of a `declared`-byte body, then nothing: (status, seconds until the answer)."""
    t0 = time.monotonic()
    ctype = b"multipart/form-data; boundary=xyz" if multipart else b"image/png"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype
                  + b"\r\nContent-Length: " + str(declared).encode() + b"\r\n\r\n--")
        reply = _read_reply(s, b"", until=b"\r\n")
    out.append((int(reply[9:12]) if reply.startswith(b"HTTP/1.1 ") else None, time.monotonic() - t0))


def _read_reply(s: socket.socket, reply: bytes, until: bytes | None = None) -> bytes:
    """`reply` and what the socket sends next, up to `until` (or until it closes or times out)."""
    try:
        while until is None or until not in reply:
            more = s.recv(4096)
            if not more:
                break
            reply += more
    except OSError:
        pass
    return reply


def test_stalled_uploads_are_cut_off_and_do_not_block_a_normal_request():
    import httpx

    app = app_with(workers=1, body_timeout_s=4.0, timeout_s=60)
    with live_server(app) as port:
        stalled: list = []
        threads = [threading.Thread(target=_stall, args=(port, stalled, i % 2 == 0)) for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # the stalled uploads are in
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(base + "/healthz").json()["reading"] == 8
        t0 = time.monotonic()
        r = httpx.post(base + "/v1/predict", files={"file": ("red.png", png(RED), "image/png")}, timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 200 and r.json()["results"][0]["tasks"]["style"]["label"] == "Warm"
        assert took < 2.5, f"a normal request waited {took:.1f} s behind 8 stalled uploads"
        for t in threads:
            t.join(20)
        assert sorted(s for s, _ in stalled) == [408] * 8, stalled
        assert all(3.9 < secs < 10 for _, secs in stalled), stalled
        health = httpx.get(base + "/healthz").json()
        assert (health["reading"], health["active"], health["waiting"]) == (0, 0, 0)


def _trickle(port: int, out: list, every_s: float = 0.5, declared: int = 100_000) -> None:
    """Headers, then one byte every `every_s` (never idle long enough for the idle timeout):
    (status, seconds until the answer, the reason)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
                  b"Content-Length: " + str(declared).encode() + b"\r\n\r\n")
        s.settimeout(every_s)
        reply = b""
        while time.monotonic() - t0 < 25 and b"\r\n\r\n" not in reply:
            try:
                s.sendall(b"x")
                reply += s.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                break
        s.settimeout(5)
        reply = _read_reply(s, reply)
    status = int(reply[9:12]) if reply.startswith(b"HTTP/1.1 ") else None
    out.append((status, time.monotonic() - t0, reply.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")))


@pytest.mark.reliability
def test_trickling_uploads_are_cut_off_by_the_minimum_rate():
    """A client sending one byte every 0.5 s is never idle for --body-timeout (2 s), but falls
    behind 1 kB/s: it is dropped with 408 soon after the 2 s grace, not at --timeout (60 s); a
    normal upload meanwhile is answered at once. With the rate off, only the deadline ends it."""
    import httpx

    app = app_with(workers=1, body_timeout_s=2.0, timeout_s=60, min_upload_rate_kb=1.0)
    with live_server(app) as port:
        slow: list = []
        threads = [threading.Thread(target=_trickle, args=(port, slow)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": ("red.png", png(RED), "image/png")},
                       timeout=30)
        assert r.status_code == 200
        for t in threads:
            t.join(30)
    assert [s for s, _, _ in slow] == [408] * 4, slow
    assert all(1.9 < secs < 5 for _, secs, _ in slow), slow
    assert all("too slow" in body for _, _, body in slow), slow

    app = app_with(workers=1, body_timeout_s=2.0, timeout_s=4, min_upload_rate_kb=0)
    with live_server(app) as port:
        slow = []
        _trickle(port, slow)
    assert slow[0][0] == 408 and 3.9 < slow[0][1] < 8 and "did not arrive within 4 s" in slow[0][2], slow


def test_stalled_uploads_declaring_big_bodies_do_not_hold_up_small_ones():
    """Body budget 1 MB: two silent clients declaring 400 kB each hold 800 kB, two more wait for
    room; an ordinary small upload still fits and is answered at once; all four silent ones end
    with 408 once they have had their turn."""
    import httpx

    app = app_with(workers=1, max_upload_mb=0.5, body_budget_mb=1.0, body_timeout_s=2.5, timeout_s=30)
    with live_server(app) as port:
        stalled: list = []
        threads = [threading.Thread(target=_stall, args=(port, stalled, True, 400_000)) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        base = f"http://127.0.0.1:{port}"
        health = httpx.get(base + "/healthz").json()
        assert (health["reading"], health["waiting"]) == (2, 2), health
        t0 = time.monotonic()
        r = httpx.post(base + "/v1/predict", files={"file": ("red.png", png(RED), "image/png")}, timeout=30)
        assert r.status_code == 200 and time.monotonic() - t0 < 2.0, (r.status_code, time.monotonic() - t0)
        for t in threads:
            t.join(20)
        assert sorted(s for s, _ in stalled) == [408] * 4, stalled
        assert max(secs for _, secs in stalled) > 4.9  # the last two waited for room, then stalled


def test_budgets_first_come_for_pixels_first_fit_for_bytes():
    from artlens.serve.budget import ByteBudget, PixelBudget

    px = PixelBudget(100)
    assert px.try_acquire(80) and not px.try_acquire(30)
    got = []
    big = threading.Thread(target=lambda: got.append(("big", px.acquire(60, 5))))
    big.start()
    time.sleep(0.1)
    assert not px.try_acquire(10)  # a waiter is first in line: small claims do not overtake it
    assert px.acquire(60, 0.1) is False  # nor do blocking ones, which time out
    px.release(80)
    big.join(5)
    assert got == [("big", True)] and px.used == 60 and px.peak == 80
    assert px.acquire(200, 1) is False  # more than the whole budget: never

    async def main():
        b = ByteBudget(100)
        assert b.try_acquire(70)
        waiter = asyncio.create_task(b.acquire(50, 5))
        await asyncio.sleep(0.01)
        assert b.try_acquire(20)  # fits beside the waiting 50: goes ahead
        assert await b.acquire(50, 0.05) is False
        b.release(70)
        assert await waiter is True and b.used == 70
        b.release(70)
        assert b.used == 0

    asyncio.run(main())


@pytest.mark.parametrize("multipart", [False, True])
def test_a_client_leaving_mid_upload_is_one_warning_not_an_error(caplog, multipart):
    import httpx

    app = app_with(workers=1)
    caplog.set_level(logging.INFO)
    with live_server(app) as port:
        ctype = b"multipart/form-data; boundary=xyz" if multipart else b"image/png"
        with socket.create_connection(("127.0.0.1", port)) as s:
            part = (b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
                    b"Content-Type: image/png\r\n\r\n") if multipart else b""
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: " + ctype
                      + b"\r\nContent-Length: 100000\r\n\r\n" + part + b"\x89PNG" * 500)
            time.sleep(0.3)
        deadline = time.monotonic() + 5
        while not any("went away" in r.getMessage() for r in caplog.records) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert httpx.post(f"http://127.0.0.1:{port}/v1/predict", files={"file": ("b.png", png(BLUE), "image/png")}).status_code == 200
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    gone = [r for r in caplog.records if "went away" in r.getMessage()]
    assert len(gone) == 1 and gone[0].levelno == logging.WARNING and gone[0].exc_info is None
    assert "POST /v1/predict" in gone[0].getMessage()
