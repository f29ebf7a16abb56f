"""Server load test: concurrent predictions, an upload flood, and oversized bodies, on loopback only.

    .venv/bin/python benchmarks/serve_load.py                  # default model if shipped, else the tiny test model
    .venv/bin/python benchmarks/serve_load.py --model models/clip-probe --workers 2
    .venv/bin/python benchmarks/serve_load.py --tiny --requests 50 --uploads 100 --upload-mb 6

Starts the server (`artlens serve`, or uvicorn with the tiny test model) on 127.0.0.1 and a free
port, then:
1. reference answers: each of K paintings from ../shared/datasets predicted once, one at a time;
2. `--requests` (50) predict requests sent at once; every answer must match its reference
   (same top label per task, probabilities within 1e-3); p50/p95 latency, requests/s;
3. `--uploads` (100) concurrent uploads of one large JPEG (`--upload-mb`): how many were answered,
   and the server's peak RSS (sampled from /proc every 20 ms) against its resting RSS;
4. oversized bodies over raw sockets: a declared 1 GB `Content-Length` (413 before any body byte is
   read) and a chunked 200 MB stream (413 once the limit is passed; bytes the server took before
   refusing, RSS growth);
5. hostile pictures: `--hostile-requests` (4) concurrent requests of `--hostile-files` (16) mostly
   flat PNGs of `--hostile-side` (7,990) px square (~200 KB each on the wire, 64 Mpx decoded):
   peak RSS, latency, and every file's answer (200, or 413/422 in its slot);
6. stalled uploads: `--stalled` (8) connections send headers and 2 bytes of a 1 MB body, then
   nothing; meanwhile one normal predict is timed; how long until each stalled one was dropped.
Everything is bounded: fixed counts, per-request timeouts, `--max-seconds` overall. Prints the numbers
and writes them as JSON (`--json`). On a shared machine the timings move with the others' load.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "wikiart-styles"


# --------------------------------------------------------------------------- the server process
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def default_model_ready() -> bool:
    from artlens import default_model_dir

    d = default_model_dir()
    return (d / "config.json").is_file() and (d / "model.safetensors").is_file()


def start_server(args, port: int, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    common = ["--host", "127.0.0.1", "--port", str(port)]
    if args.tiny:
        env.update(ARTLENS_WORKERS=str(args.workers), ARTLENS_MAX_UPLOAD_MB=str(args.max_upload_mb))
        cmd = [sys.executable, "-m", "uvicorn", "--factory", "artlens.serve.testing:tiny_app", *common, "--log-level", "warning"]
    else:
        cmd = [sys.executable, "-m", "artlens", "serve", *common, "--workers", str(args.workers),
               "--max-upload-mb", str(args.max_upload_mb), "--timeout", str(args.timeout), "--log-level", "warning"]
        if args.model:
            cmd += ["--model", str(args.model)]
        if args.index:
            cmd += ["--index", str(args.index)]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_healthy(base: str, proc: subprocess.Popen, seconds: float) -> None:
    import httpx

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} (see its log)")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"the server did not become healthy within {seconds:.0f} s")


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


class RssSampler:
    """Peak resident memory of one process over a phase (sampled; VmHWM is for the whole life)."""

    def __init__(self, pid: int, every: float = 0.02):
        self.pid, self.every = pid, every
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, rss_mb(self.pid))
            except OSError:
                return
            self._stop.wait(self.every)

    def __enter__(self):
        self.peak = rss_mb(self.pid)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


# --------------------------------------------------------------------------- requests
def pick_paintings(k: int) -> list[Path]:
    styles = sorted(p for p in DATA.iterdir() if p.is_dir())
    out = []
    for i in range(k):
        files = sorted(styles[i % len(styles)].glob("*.jpg"))
        out.append(files[i // len(styles)])
    return out


def summary(result: dict) -> dict:
    return {t: (r["top"][0]["label"], r["top"][0]["prob"]) for t, r in result["tasks"].items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[t][0] == b[t][0] and abs(a[t][1] - b[t][1]) <= 1e-3 for t in a)


async def post_many(base: str, bodies: list[tuple[str, bytes]], concurrency: int, timeout: float) -> list[dict]:
    """Send all at once (at most `concurrency` connections); per request: status, latency, json."""
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=timeout) as client:
        start = asyncio.Event()

        async def one(name: str, data: bytes) -> dict:
            await start.wait()
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", files={"file": (name, data, "image/jpeg")})
                body = r.json() if r.headers.get("content-type", "").startswith("application/json") else None
                return {"status": r.status_code, "latency": time.perf_counter() - t0, "body": body}
            except httpx.HTTPError as exc:
                return {"status": None, "latency": time.perf_counter() - t0, "body": None, "error": repr(exc)}

        tasks = [asyncio.create_task(one(n, d)) for n, d in bodies]
        await asyncio.sleep(0.05)
        start.set()
        return await asyncio.gather(*tasks)


def pct(values: list[float], q: float) -> float:
    vs = sorted(values)
    return vs[min(len(vs) - 1, max(0, round(q * (len(vs) - 1))))]


def big_jpeg(mb: float) -> bytes:
    """A noisy JPEG of about `mb` MB (noise does not compress)."""
    import numpy as np
    from PIL import Image

    side = int((mb * 1e6 / 0.9) ** 0.5)  # ~0.9 bytes per pixel at quality 95 for noise
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def hostile_png(side: int) -> bytes:
    """A mostly flat RGB PNG of side x side pixels (a few dark lines so it is not one colour),
    cached under out/bench: ~200 KB on the wire for 7,990 px, 64 Mpx once decoded."""
    import numpy as np
    from PIL import Image

    path = REPO / "out" / "bench" / f"hostile-{side}.png"
    if not path.is_file():
        arr = np.full((side, side, 3), (180, 140, 90), np.uint8)
        arr[::97] = 20
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(arr).save(path, format="PNG", compress_level=6)
        del arr
    return path.read_bytes()


async def post_files(base: str, requests: int, files: list[tuple[str, bytes]], timeout: float) -> list[dict]:
    """`requests` concurrent predicts, each with all of `files`: status, latency, per-file statuses."""
    import httpx

    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        async def one() -> dict:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/predict", files=[("file", (n, d, "image/png")) for n, d in files])
                body = r.json()
                per_file = [x["status"] for x in body["results"]] if r.status_code == 200 else []
                return {"status": r.status_code, "latency": time.perf_counter() - t0, "files": per_file,
                        "error": None if r.status_code == 200 else body.get("detail")}
            except (httpx.HTTPError, ValueError) as exc:
                return {"status": None, "latency": time.perf_counter() - t0, "files": [], "error": repr(exc)}

        return await asyncio.gather(*[one() for _ in range(requests)])


def stall(port: int, declared: int, out: list) -> None:
    """Headers and 2 body bytes, then silence: (HTTP status, seconds until the server answered)."""
    t0 = time.perf_counter()
    status = None
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=180) as s:
            s.sendall(b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=xyz\r\nContent-Length: " + str(declared).encode() + b"\r\n\r\n--")
            reply = b""
            while b"\r\n" not in reply:
                more = s.recv(4096)
                if not more:
                    break
                reply += more
            if reply.startswith(b"HTTP/1.1 "):
                status = int(reply[9:12])
    except OSError:
        pass
    out.append((status, time.perf_counter() - t0))


def raw_request(port: int, head: bytes, body_chunks, read_timeout: float = 30) -> tuple[int | None, int, float]:
    """Send `head`, then chunks until the server answers or closes. Returns (status, body bytes sent, seconds)."""
    t0 = time.perf_counter()
    sent = 0
    status = None
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as s:
        s.sendall(head)
        s.setblocking(False)
        reply = b""
        try:
            for chunk in body_chunks:
                try:
                    reply += s.recv(65536)
                except BlockingIOError:
                    pass
                if reply:
                    break
                try:
                    s.setblocking(True)
                    s.settimeout(read_timeout)
                    s.sendall(chunk)
                    sent += len(chunk)
                finally:
                    s.setblocking(False)
        except (BrokenPipeError, ConnectionResetError):
            pass
        s.setblocking(True)
        s.settimeout(read_timeout)
        try:
            while b"\r\n" not in reply:
                more = s.recv(65536)
                if not more:
                    break
                reply += more
        except (ConnectionResetError, socket.timeout):
            pass
        if reply.startswith(b"HTTP/1.1 "):
            status = int(reply[9:12])
    return status, sent, time.perf_counter() - t0


# --------------------------------------------------------------------------- main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    ap.add_argument("--index", type=Path, help="index directory (not needed for this test)")
    ap.add_argument("--tiny", action="store_true", help="use the tiny test model (default when no model is shipped)")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--paintings", type=int, default=10, help="distinct paintings among the requests")
    ap.add_argument("--uploads", type=int, default=100)
    ap.add_argument("--upload-mb", type=float, default=6.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-upload-mb", type=float, default=20)
    ap.add_argument("--timeout", type=float, default=120, help="server per-request time limit, seconds")
    ap.add_argument("--hostile-requests", type=int, default=4)
    ap.add_argument("--hostile-files", type=int, default=16, help="huge PNGs per hostile request")
    ap.add_argument("--hostile-side", type=int, default=7990, help="side of the huge PNGs, pixels")
    ap.add_argument("--stalled", type=int, default=8, help="uploads that send 2 bytes and then nothing")
    ap.add_argument("--max-seconds", type=float, default=1200, help="stop the whole run after this long")
    ap.add_argument("--json", type=Path, default=REPO / "out" / "bench" / "serve_load.json")
    args = ap.parse_args()
    args.requests = min(args.requests, 500)
    args.uploads = min(args.uploads, 500)
    if not args.tiny and not args.model and not default_model_ready():
        print("note: no shipped default model yet; using the tiny test model (--tiny)")
        args.tiny = True
    if not DATA.is_dir():
        print(f"{DATA} is not there", file=sys.stderr)
        return 1

    # The whole run is bounded: a watchdog ends it (and the server) after --max-seconds.
    watchdog = threading.Timer(args.max_seconds, lambda: os._exit(3))
    watchdog.daemon = True
    watchdog.start()

    args.json.parent.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    log_path = args.json.with_suffix(".server.log")
    proc = start_server(args, port, log_path)
    report: dict = {"model": "tiny" if args.tiny else str(args.model or "default"), "workers": args.workers,
                    "cpu_count": os.cpu_count(), "note": "shared machine: timings are disturbed by other work"}
    try:
        t0 = time.perf_counter()
        wait_healthy(base, proc, 300)
        report["startup_s"] = round(time.perf_counter() - t0, 2)
        import httpx

        paintings = pick_paintings(args.paintings)
        datas = [(p.name, p.read_bytes()) for p in paintings]
        refs = {}
        for name, data in datas:  # one at a time: the reference answers (and a warm server)
            r = httpx.post(base + "/v1/predict", files={"file": (name, data, "image/jpeg")}, timeout=args.timeout)
            r.raise_for_status()
            refs[name] = summary(r.json()["results"][0])
        report["rss_rest_mb"] = round(rss_mb(proc.pid), 1)

        # ---- 2. concurrent predictions
        bodies = [datas[i % len(datas)] for i in range(args.requests)]
        with RssSampler(proc.pid) as rss:
            t0 = time.perf_counter()
            answers = asyncio.run(post_many(base, bodies, args.requests, args.timeout + 30))
            wall = time.perf_counter() - t0
        ok = [a for a in answers if a["status"] == 200]
        correct = sum(
            1 for (name, _), a in zip(bodies, answers)
            if a["status"] == 200 and same(summary(a["body"]["results"][0]), refs[name])
        )
        lat = [a["latency"] for a in ok]
        report["predict"] = {
            "requests": args.requests, "concurrency": args.requests, "answered_200": len(ok), "correct": correct,
            "statuses": sorted({str(a["status"]) for a in answers}),
            "p50_ms": round(1000 * pct(lat, 0.5), 1) if lat else None,
            "p95_ms": round(1000 * pct(lat, 0.95), 1) if lat else None,
            "mean_ms": round(1000 * statistics.mean(lat), 1) if lat else None,
            "wall_s": round(wall, 2), "requests_per_s": round(len(ok) / wall, 2),
            "rss_peak_mb": round(rss.peak, 1),
        }

        # ---- 3. upload flood
        blob = big_jpeg(args.upload_mb)
        flood = [(f"big{i}.jpg", blob) for i in range(args.uploads)]
        rest = rss_mb(proc.pid)
        with RssSampler(proc.pid) as rss:
            t0 = time.perf_counter()
            answers = asyncio.run(post_many(base, flood, args.uploads, args.timeout + 60))
            wall = time.perf_counter() - t0
        statuses: dict[str, int] = {}
        for a in answers:
            statuses[str(a["status"])] = statuses.get(str(a["status"]), 0) + 1
        report["upload_flood"] = {
            "uploads": args.uploads, "upload_mb": round(len(blob) / 1e6, 2), "statuses": statuses,
            "wall_s": round(wall, 2), "rss_before_mb": round(rest, 1), "rss_peak_mb": round(rss.peak, 1),
            "rss_growth_mb": round(rss.peak - rest, 1),
            "all_bodies_at_once_mb": round(args.uploads * len(blob) / 1e6, 1),
        }

        # ---- 4. oversized bodies
        head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Content-Length: 1000000000\r\n\r\n")
        status, sent, secs = raw_request(port, head, (b"\0" * 65536 for _ in range(15259)))
        report["declared_1gb"] = {"status": status, "body_bytes_sent_before_answer": sent, "seconds": round(secs, 3)}
        rest = rss_mb(proc.pid)
        head = (b"POST /v1/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/jpeg\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
        with RssSampler(proc.pid) as rss:
            status, sent, secs = raw_request(port, head, (chunk for _ in range(3200)))  # ~200 MB offered
        report["chunked_200mb"] = {"status": status, "bytes_sent_before_answer": sent, "seconds": round(secs, 3),
                                   "rss_growth_mb": round(rss.peak - rest, 1)}

        # ---- 5. hostile pictures: many huge PNGs per request, several requests at once
        huge = hostile_png(args.hostile_side)
        files = [(f"huge{i}.png", huge) for i in range(args.hostile_files)]
        rest = rss_mb(proc.pid)
        with RssSampler(proc.pid) as rss:
            t0 = time.perf_counter()
            answers = asyncio.run(post_files(base, args.hostile_requests, files, args.timeout + 60))
            wall = time.perf_counter() - t0
        per_file: dict[str, int] = {}
        for a in answers:
            for st in a["files"]:
                per_file[str(st)] = per_file.get(str(st), 0) + 1
        lat = [a["latency"] for a in answers]
        report["hostile_pngs"] = {
            "requests": args.hostile_requests, "files_each": args.hostile_files, "side": args.hostile_side,
            "png_kb": round(len(huge) / 1e3, 1), "request_statuses": sorted(str(a["status"]) for a in answers),
            "file_statuses": per_file,
            "every_file_answered": all(a["status"] == 200 and len(a["files"]) == args.hostile_files
                                       and all(st in (200, 413, 422) for st in a["files"]) for a in answers),
            "latency_max_s": round(max(lat), 2), "latency_min_s": round(min(lat), 2), "wall_s": round(wall, 2),
            "rss_before_mb": round(rest, 1), "rss_peak_mb": round(rss.peak, 1),
            "errors": sorted({a["error"] for a in answers if a["error"]}),
        }

        # ---- 6. stalled uploads beside a normal request
        stalled: list = []
        threads = [threading.Thread(target=stall, args=(port, 1_000_000, stalled), daemon=True) for _ in range(args.stalled)]
        with RssSampler(proc.pid) as rss:
            for t in threads:
                t.start()
            time.sleep(0.5)
            name, data = datas[0]
            t0 = time.perf_counter()
            r = httpx.post(base + "/v1/predict", files={"file": (name, data, "image/jpeg")}, timeout=args.timeout)
            normal_s = time.perf_counter() - t0
            for t in threads:
                t.join(args.timeout + 30)
        report["stalled_uploads"] = {
            "stalled": args.stalled, "normal_status": r.status_code, "normal_latency_s": round(normal_s, 3),
            "normal_correct": r.status_code == 200 and same(summary(r.json()["results"][0]), refs[name]),
            "stalled_statuses": sorted(str(s) for s, _ in stalled),
            "stalled_dropped_after_s": round(max((t for _, t in stalled), default=0.0), 2),
            "rss_peak_mb": round(rss.peak, 1),
        }

        # ---- still serving?
        name, data = datas[0]
        r = httpx.post(base + "/v1/predict", files={"file": (name, data, "image/jpeg")}, timeout=args.timeout)
        report["after"] = {"status": r.status_code, "correct": r.status_code == 200 and same(summary(r.json()["results"][0]), refs[name]),
                           "healthz": httpx.get(base + "/healthz", timeout=10).json()}
        report["rss_lifetime_peak_mb"] = round(rss_mb(proc.pid, "VmHWM"), 1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()

    args.json.write_text(json.dumps(report, indent=2) + "\n")
    p, f = report["predict"], report["upload_flood"]
    print(f"model: {report['model']}   workers: {args.workers}   cores: {os.cpu_count()}   start-up: {report['startup_s']} s")
    print(f"{p['requests']} concurrent predicts: {p['answered_200']} answered, {p['correct']} correct; "
          f"p50 {p['p50_ms']} ms, p95 {p['p95_ms']} ms, {p['requests_per_s']} req/s; peak RSS {p['rss_peak_mb']} MB "
          f"(resting {report['rss_rest_mb']} MB)")
    print(f"{f['uploads']} concurrent uploads of {f['upload_mb']} MB: {f['statuses']} in {f['wall_s']} s; "
          f"peak RSS {f['rss_peak_mb']} MB (+{f['rss_growth_mb']} MB; holding every body at once would be "
          f"{f['all_bodies_at_once_mb']} MB)")
    d, c = report["declared_1gb"], report["chunked_200mb"]
    print(f"declared 1 GB body: HTTP {d['status']} after {d['seconds']} s, {d['body_bytes_sent_before_answer']:,} body bytes sent")
    print(f"chunked 200 MB stream: HTTP {c['status']} after {c['bytes_sent_before_answer'] / 1e6:.1f} MB, RSS +{c['rss_growth_mb']} MB")
    h, st = report["hostile_pngs"], report["stalled_uploads"]
    print(f"{h['requests']} concurrent requests of {h['files_each']} x {h['side']} px PNGs ({h['png_kb']} KB each): "
          f"requests {h['request_statuses']}, files {h['file_statuses']}, every file answered: {h['every_file_answered']}; "
          f"latency {h['latency_min_s']}-{h['latency_max_s']} s; peak RSS {h['rss_peak_mb']} MB (before {h['rss_before_mb']} MB)")
    print(f"{st['stalled']} stalled uploads: normal predict HTTP {st['normal_status']} in {st['normal_latency_s']} s "
          f"(correct={st['normal_correct']}); stalled ones answered {st['stalled_statuses']} after "
          f"{st['stalled_dropped_after_s']} s at most; peak RSS {st['rss_peak_mb']} MB")
    print(f"afterwards: HTTP {report['after']['status']}, correct={report['after']['correct']}; lifetime peak RSS {report['rss_lifetime_peak_mb']} MB")
    print(f"(numbers from a shared {os.cpu_count()}-core machine; JSON in {args.json})")
    good = (p["correct"] == p["requests"] and report["after"]["correct"] and d["status"] == 413 and c["status"] == 413
            and h["every_file_answered"] and st["normal_correct"])
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
