#!/usr/bin/env python
"""Past one machine: `artlens predict` on the local engine and on Ray with 1 and 2 workers, in one run.

    nice -n 10 .venv/bin/python benchmarks/scale.py [--images 300] [--address auto] [--json out.json]

Each engine runs in a fresh process over the same WikiArt images (../shared/datasets). Printed per
engine: wall time including start-up (Ray's start, actors loading the model), images/s, the time
to the first answers, peak RSS of the driver and of each model worker (sampled from /proc while
it runs: Ray's workers are separate processes), and the CPU seconds each image costs: in the model
workers, in the decoding tasks, in all of them. CPU time is what a long run on a cluster pays per
image whatever else the machine is doing, so the 5-million-image projection uses it: one Ray
worker (1 CPU, its decoding beside it) answers 1 / (CPU s per image) images/s when it is busy, and
N workers N times that. The local engine uses every core of this machine in one process. On a
shared machine the wall-clock numbers move with the load: the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "wikiart-styles"
COLLECTION = 5_000_000


def pick_images(n: int) -> list[str]:
    files = sorted(str(p) for p in DATA.rglob("*.jpg"))
    return files[:: max(1, len(files) // n)][:n]


class ProcSampler:
    """Peak RSS (VmHWM) and CPU seconds of this process's descendants whose title contains one of
    `needles` (Ray names a worker process after the task or actor it runs)."""

    TICK = os.sysconf("SC_CLK_TCK")

    def __init__(self, needles: tuple[str, ...], every_s: float = 0.2):
        self.needles, self.every_s = needles, every_s
        self.seen: dict[int, dict] = {}  # pid -> {"title", "hwm_kb", "cpu_s"}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _stat(pid: int) -> list[bytes]:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[1].split()

    def _descends(self, pid: int) -> bool:
        me = os.getpid()
        while pid > 1:
            if pid == me:
                return True
            try:
                pid = int(self._stat(pid)[1])
            except (OSError, ValueError, IndexError):
                return False
        return False

    def _sample(self) -> None:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            pid = int(entry)
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    title = fh.read().split(b"\0")[0].decode(errors="replace")
                known = self.seen.get(pid)
                if known is None and not (any(n in title for n in self.needles) and self._descends(pid)):
                    continue
                with open(f"/proc/{pid}/status") as fh:
                    hwm = next((int(line.split()[1]) for line in fh if line.startswith("VmHWM:")), 0)
                st = self._stat(pid)
                cpu = (int(st[11]) + int(st[12])) / self.TICK  # utime + stime
            except (OSError, ValueError, IndexError):
                continue
            rec = self.seen.setdefault(pid, {"title": title, "hwm_kb": 0, "cpu_s": 0.0})
            if any(n in title for n in self.needles):
                rec["title"] = title  # an idle pool worker keeps the name of the work it did
            rec["hwm_kb"] = max(rec["hwm_kb"], hwm)
            rec["cpu_s"] = max(rec["cpu_s"], cpu)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self._sample()

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def of(self, needle: str) -> list[dict]:
        return [r for r in self.seen.values() if needle in r["title"]]


def child(engine: str, workers: int, listing: str, batch_size: int, address: str | None) -> dict:
    """One engine over the images in `listing`, in this (fresh) process."""
    files = Path(listing).read_text().split("\n")
    t0 = time.perf_counter()
    stamps: list[float] = []
    with ProcSampler(("PredictWorker", "decode_batch")) as sampler:
        if engine == "local":
            from artlens.predict import Predictor

            rows = Predictor().iter_predict(files, batch_size=batch_size)
        else:
            from artlens.engine import RayOptions, ray_iter_predict

            options = RayOptions(address=address, workers=workers, batch_size=batch_size)
            rows = ray_iter_predict(files, options=options)
        failed = 0
        for row in rows:
            stamps.append(time.perf_counter() - t0)
            failed += bool(row["error"])
        sampler._sample()  # the last look, before Ray's workers go
    wall = time.perf_counter() - t0
    own = resource.getrusage(resource.RUSAGE_SELF)
    driver_cpu = own.ru_utime + own.ru_stime
    actors, decoders = sampler.of("PredictWorker"), sampler.of("decode_batch")
    actor_cpu, decoder_cpu = sum(r["cpu_s"] for r in actors), sum(r["cpu_s"] for r in decoders)
    n = len(files)
    work_cpu = driver_cpu if engine == "local" else actor_cpu + decoder_cpu
    return {
        "engine": engine if engine == "local" else f"ray x{workers}",
        "workers": workers,
        "images": n,
        "failed": failed,
        "wall_s": round(wall, 2),
        "first_answers_s": round(stamps[min(batch_size, n) - 1], 2),
        "images_per_s": round(n / wall, 2),
        "driver_peak_mb": round(own.ru_maxrss / 1024),
        "driver_cpu_s": round(driver_cpu, 1),
        "worker_peak_mb": sorted(round(r["hwm_kb"] / 1024) for r in actors),
        "decoder_peak_mb": max((round(r["hwm_kb"] / 1024) for r in decoders), default=0),
        "model_cpu_s_per_image": round(actor_cpu / n, 4) if actors else None,
        "decode_cpu_s_per_image": round(decoder_cpu / n, 4) if decoders else None,
        "cpu_s_per_image": round(work_cpu / n, 4),
    }


def fmt_duration(seconds: float) -> str:
    h = seconds / 3600
    return f"{h / 24:.1f} days" if h >= 48 else f"{h:.1f} h"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--address", default=None, help="a Ray cluster instead of a local Ray started per run")
    ap.add_argument("--workers", default="1,2", help="Ray worker counts to measure (comma-separated)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--child", nargs=3, metavar=("ENGINE", "WORKERS", "LISTING"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        engine, workers, listing = args.child
        print(json.dumps(child(engine, int(workers), listing, args.batch_size, args.address)))
        return 0

    files = pick_images(args.images)
    if not files:
        sys.exit(f"no images under {DATA}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        listing = Path(tmp) / "files.txt"
        listing.write_text("\n".join(files))
        for f in files:  # warm the OS file cache (and the CLIP build, once) before the first timing
            Path(f).read_bytes()
        runs = [("local", 0)] + [("ray", int(w)) for w in args.workers.split(",")]
        for engine, workers in runs:
            cmd = [sys.executable, __file__, "--batch-size", str(args.batch_size), "--child", engine, str(workers), str(listing)]
            if args.address:
                cmd[2:2] = ["--address", args.address]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"{engine} x{workers} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"done: {results[-1]['engine']}", file=sys.stderr)

    cores = len(os.sched_getaffinity(0))
    print(f"{len(files)} WikiArt images (224 px JPEG), batch {args.batch_size}, {cores} cores, "
          f"load average {os.getloadavg()[0]:.1f} at the end")
    print(f"{'engine':<9}{'wall s':>8}{'first s':>9}{'img/s':>7}{'driver MB':>11}{'worker MB':>12}{'decoder MB':>12}"
          f"{'CPU s/img':>11}{'(model':>8}{'decode)':>9}")
    for r in results:
        workers = ",".join(str(m) for m in r["worker_peak_mb"]) or "-"
        split = (f"{r['model_cpu_s_per_image']:>8.3f}{r['decode_cpu_s_per_image'] or 0:>9.3f}"
                 if r["model_cpu_s_per_image"] else f"{'':>17}")
        print(f"{r['engine']:<9}{r['wall_s']:>8.1f}{r['first_answers_s']:>9.1f}{r['images_per_s']:>7.1f}"
              f"{r['driver_peak_mb']:>11}{workers:>12}{r['decoder_peak_mb'] or '-':>12}{r['cpu_s_per_image']:>11.3f}{split}")
    print(f"\nprojected time for {COLLECTION:,} images, from the CPU seconds per image (a busy worker is one CPU):")
    for r in results:
        per_worker = 1.0 / r["cpu_s_per_image"]
        r["per_worker_images_per_s"] = round(per_worker, 2)
        if r["engine"] == "local":
            rate = per_worker * cores
            print(f"  local engine ({rate:.1f} img/s on {cores} busy cores): {fmt_duration(COLLECTION / rate)} on one machine")
            continue
        spans = ", ".join(f"{n} workers {fmt_duration(COLLECTION / (per_worker * n))}" for n in (r["workers"], 16, 64, 256))
        print(f"  {r['engine']} ({per_worker:.1f} img/s per worker): {spans}")
    if args.json:
        args.json.write_text(json.dumps({"images": len(files), "cores": cores, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
