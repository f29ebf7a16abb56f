#!/usr/bin/env python
"""`artlens predict FOLDER` as a user runs it, the previous code path beside the current one.

    .venv/bin/python benchmarks/predict.py [--images 500] [--rounds 2] [--model DIR] [--baseline REV]
    .venv/bin/python benchmarks/predict.py --pipeline 35   # the pipelines alone, encoder time fixed

Each measurement is a fresh process (`python -m artlens predict FOLDER --json`), so start-up cost
is included. The previous path is the `src/artlens` of git revision `--baseline` (default: the
last commit before issue 18's CPU work), exported to a temporary folder and put first on
PYTHONPATH; the current one is this checkout's. Runs alternate (previous, current, previous,
current, ...) so that load from other processes hits both alike; the load average is printed.
Both must give the same answers: every image's labels and probabilities are compared.

`--pipeline RATE` measures the two pipelines alone, in-process: the encoder is a stand-in that
sleeps 1/RATE s per image (no CPU), decoding and the heads are real; how close each path gets to
RATE, and its CPU ms/image outside the encoder, show how well it overlaps work with the encoder.

Targets on the 2-core reference machine: cold start < 5 s, >= 30 images/s, peak RSS < 1.5 GB.
The batch-independent CLIP model must already be built (the first run ever builds it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets" / "wikiart-styles"
# The last commit whose predict path predates issue 18 (pipeline, shared session, runner slices).
BASELINE = "2375595"


def export(rev: str, dst: Path) -> Path:
    """`src/artlens` of `rev` under dst/src (git archive: read-only, no worktree)."""
    try:
        data = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src/artlens"], capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        sys.exit(f"cannot export {rev} (a git checkout with that commit is needed; --baseline none skips it): {exc}")
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(dst, filter="data")
    return dst / "src"


def run(src: Path, args: list[str]) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds, peak RSS (bytes) and stdout of one fresh `python -m artlens predict` process."""
    env = {**os.environ, "PYTHONPATH": str(src)}
    with tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "artlens", "predict", *args], stdout=subprocess.PIPE,
                                stderr=err, text=True, env=env)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode not in (0, 2):
            err.seek(0)
            sys.exit(f"predict ({src}) failed ({proc.returncode}): {err.read()[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024, out  # ru_maxrss is in kB on Linux


PIPELINE = r"""
import sys, time, numpy as np
import artlens.predict as P
from artlens.models.clip import CLIP_PREPROCESSING
rate, files = float(sys.argv[1]), sys.argv[2:]
class Sleeper:
    backbone_id, dim, preprocess, device, batch_size = "sleep", 2816, CLIP_PREPROCESSING, "cpu", 32
    def embed_batch(self, batch):
        time.sleep(len(batch) / rate)
        f = np.random.default_rng(len(batch)).standard_normal((len(batch), self.dim)).astype(np.float32)
        return f / np.linalg.norm(f, axis=1, keepdims=True)
p = P.Predictor(encoder=Sleeper())
p.predict_paths(files[:8])
t, c = time.perf_counter(), time.process_time()
p.predict_paths(files)
print(len(files) / (time.perf_counter() - t), 1000 * (time.process_time() - c) / len(files))
"""


def pipeline_only(paths: dict[str, Path], files: list[Path], rate: float, rounds: int) -> None:
    got: dict[str, list] = {k: [] for k in paths}
    for _ in range(rounds):
        for name, src in paths.items():
            out = subprocess.run([sys.executable, "-c", PIPELINE, str(rate), *map(str, files)], capture_output=True,
                                 text=True, env={**os.environ, "PYTHONPATH": str(src)}, check=True).stdout.split()
            got[name].append((float(out[0]), float(out[1])))
    print(f"pipelines alone over {len(files)} images, the encoder a stand-in sleeping at {rate:g} images/s "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    for name, v in got.items():
        print(f"{name:>24}: {max(r for r, _ in v):6.2f} images/s (best of {rounds}), "
              f"CPU outside the encoder {min(c for _, c in v):.1f} ms/image")


def answers(stdout: str) -> dict[str, dict]:
    rows = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    return {Path(r["path"]).name: {t: (v["label"], [(x["label"], x["prob"]) for x in v["top"]])
                                   for t, v in r["tasks"].items()} for r in rows}


def common_model(out: Path) -> Path:
    """The default model in a form the previous path reads as the current one does: tensors in
    float32 (the shipped file stores some as int8 rows with a scale) and no task fields added since
    (`withhold`, which only relabels answers after the heads). The heads' arithmetic is the same."""
    from safetensors.numpy import save_file

    from artlens import default_model_dir
    from artlens.models.artmodel import ArtModel

    model = ArtModel.load(default_model_dir())
    config = json.loads(json.dumps(model.config))
    for task in config["tasks"]:
        task.pop("withhold", None)
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config))
    save_file(dict(model.tensors), str(out / "model.safetensors"))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=2, help="runs of each path, alternating")
    ap.add_argument("--model", type=Path, default=None, help="default: the default model, in a form both paths read alike")
    ap.add_argument("--baseline", default=BASELINE, help="git revision of the previous path, or 'none'")
    ap.add_argument("--pipeline", type=float, metavar="RATE", help="only the pipelines, the encoder fixed at RATE images/s")
    args = ap.parse_args()
    every = sorted(DATA.rglob("*.jpg"))
    files = every[:: max(1, len(every) // args.images)][: args.images]
    if not files:
        sys.exit(f"no images under {DATA}")
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, f in enumerate(files):  # a flat folder of links: the CLI walks it like a user's folder
            os.symlink(f, folder / f"{i:04d}_{f.name}")
        model = ["--model", str(args.model or common_model(Path(tmp) / "model"))]
        paths = {"current": REPO / "src"}
        if args.baseline != "none":
            paths = {f"previous ({args.baseline})": export(args.baseline, Path(tmp) / "baseline"), **paths}
        if args.pipeline:
            pipeline_only(paths, files, args.pipeline, args.rounds)
            return 0
        results = {k: {"cold": [], "wall": [], "cpu": [], "peak": 0, "answers": None} for k in paths}
        for src in paths.values():  # warm the OS file cache and the CLIP build
            run(src, [str(files[0]), "--json", *model])
        run(REPO / "src", [str(folder), "--json", *model])  # every image file in the page cache
        for _ in range(args.rounds):
            for name, src in paths.items():
                cold, _, _, _ = run(src, [str(files[1]), "--json", *model])
                wall, cpu, peak, out = run(src, [str(folder), "--json", *model])
                r = results[name]
                r["cold"].append(cold)
                r["wall"].append(wall)
                r["cpu"].append(cpu)
                r["peak"] = max(r["peak"], peak)
                r["answers"] = answers(out)
    load_end = os.getloadavg()

    n = len(files)
    names = list(results)
    print(f"artlens predict over {n} WikiArt images, {args.rounds} alternating runs per path "
          f"({os.cpu_count()} cores; load average at the start {load_start[0]:.1f}, at the end {load_end[0]:.1f})")
    header = f"{'measure':<26}" + "".join(f"{k:>24}" for k in names) + "  target"
    print(header)
    print("-" * len(header))
    rows = [
        ("cold start (s), median", lambda r: f"{statistics.median(r['cold']):.2f}", "< 5"),
        ("images/s, best run", lambda r: f"{n / min(r['wall']):.2f}", ">= 30"),
        ("images/s, median", lambda r: f"{n / statistics.median(r['wall']):.2f}", ""),
        # CPU seconds per image (all threads, start-up included) depend less on other processes than
        # wall time does: on an idle machine the rate is at best cores / this.
        ("CPU ms/image, best", lambda r: f"{1000 * min(r['cpu']) / n:.1f}", ""),
        ("peak RSS (MB)", lambda r: f"{r['peak'] / 2**20:.0f}", "< 1536"),
    ]
    for label, fmt, target in rows:
        print(f"{label:<26}" + "".join(f"{fmt(results[k]):>24}" for k in names) + f"  {target}")
    if len(names) == 2:
        old, new = (results[k] for k in names)
        print(f"speed-up (best runs): {min(old['wall']) / min(new['wall']):.2f}x")
        same = old["answers"] == new["answers"]
        differ = [k for k in new["answers"] if old["answers"].get(k) != new["answers"][k]]
        print(f"same labels and probabilities for every image: {'yes' if same else 'NO'}"
              + (f" ({len(differ)} differ, e.g. {differ[:3]})" if differ else ""))
        return 0 if same else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
