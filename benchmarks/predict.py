#!/usr/bin/env python
"""`artlens predict` as a user runs it: cold start, images/s over a folder, peak RSS.

    .venv/bin/python benchmarks/predict.py [--images 500] [--model DIR]

Each measurement is a fresh process (the CLI), so start-up cost is included. Targets on the
2-core reference machine: cold start < 5 s, >= 15 images/s, peak RSS < 1.5 GB. The batch-
independent CLIP model must already be built (the first run ever builds it, a few seconds).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "wikiart-styles"


def run(cmd: list[str]) -> tuple[float, int]:
    """Wall seconds and the child's peak RSS (bytes) of one fresh process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode not in (0, 2):
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    # ru_maxrss is the max over all children so far (kB on Linux): only meaningful if it grew.
    peak = max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) * 1024
    return wall, peak


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--model", type=Path, default=None)
    args = ap.parse_args()
    exe = str(Path(sys.executable).parent / "artlens")
    model = ["--model", str(args.model)] if args.model else []
    files = sorted(DATA.rglob("*.jpg"))[:: max(1, len(list(DATA.rglob("*.jpg"))) // args.images)][: args.images]
    if not files:
        sys.exit(f"no images under {DATA}")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, f in enumerate(files):  # a flat folder of links: the CLI walks it like a user's folder
            os.symlink(f, folder / f"{i:04d}_{f.name}")
        run([exe, "predict", str(files[0]), "--json", *model])  # warm the OS file cache and the CLIP build
        cold, _ = run([exe, "predict", str(files[1]), "--json", *model])
        wall, peak = run([exe, "predict", str(folder), "--json", *model])
    load = os.getloadavg()[0]
    print(f"{'measure':<28}{'value':>12}  target")
    print(f"{'cold start (s)':<28}{cold:>12.2f}  < 5")
    print(f"{'images/s (' + str(len(files)) + ' images)':<28}{len(files) / wall:>12.2f}  >= 15")
    print(f"{'peak RSS (MB)':<28}{peak / 2**20:>12.0f}  < 1536")
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
