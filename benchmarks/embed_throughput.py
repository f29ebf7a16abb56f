"""Embedding throughput: images/s and peak memory, end to end (decode + preprocess + inference + store).

    .venv/bin/python benchmarks/embed_throughput.py                  # 512 WikiArt images, default configs
    .venv/bin/python benchmarks/embed_throughput.py --n 256 --configs clip-vit-b16:pool:2
    .venv/bin/python benchmarks/embed_throughput.py --device cuda --n 4096   # on a GPU machine

Each configuration runs in a fresh process (so peak RSS is its own) against an empty temporary
store, over the same images from ../shared/datasets. Configurations are `backbone:loader:workers`
with loader `pool` (artlens' embed_manifest: worker processes decode ahead of the encoder) or
`dataloader` (torch DataLoader doing the same decoding, for comparison; no store). Model loading
is timed apart. Then a batch-independence check: images embedded alone vs inside a mixed batch
of 32 must agree (cosine >= 0.999). The target on a 2-core machine is >= 15 images/s for CLIP.
`--device` (default auto: the GPU when there is one) picks where the encoders run; the batch size
defaults to the device's (artlens.models.device.default_batch_size) and the device is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "wikiart-styles"
DEFAULT_CONFIGS = [
    "clip-vit-b16:pool:0",
    "clip-vit-b16:pool:2",
    "clip-vit-b16:dataloader:2",
    "efficientnet-lite0:pool:2",
    "efficientnet-lite0:dataloader:2",
]


def pick_images(root: Path, n: int) -> list[str]:
    """n images taken round-robin over the class folders (every style represented)."""
    classes = sorted(p for p in root.iterdir() if p.is_dir()) or [root]
    lists = [sorted(str(f) for f in c.rglob("*") if f.suffix.lower() in {".jpg", ".jpeg", ".png"}) for c in classes]
    out: list[str] = []
    i = 0
    while len(out) < n and any(i < len(lst) for lst in lists):
        out.extend(lst[i] for lst in lists if i < len(lst))
        i += 1
    return out[:n]


def _cpu_s() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _peak_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024.0  # Linux reports KiB


# --------------------------------------------------------------------------- one configuration
def child(cfg: str, manifest_path: str, batch_size: int | None, device: str) -> dict:
    import numpy as np
    import pandas as pd

    backbone, loader, workers = cfg.split(":")
    workers = int(workers)
    df = pd.read_parquet(manifest_path)
    t0 = time.perf_counter()
    from artlens.embed import embed_manifest, get_encoder

    enc = get_encoder(backbone, device=device)
    batch_size = batch_size or enc.batch_size
    enc.embed_batch(np.stack([enc.preprocess(_first_image(df))] * 2))  # warm up the runtime
    load_s = time.perf_counter() - t0

    t0, cpu0 = time.perf_counter(), _cpu_s()
    if loader == "pool":
        with tempfile.TemporaryDirectory() as store:
            res = embed_manifest(df, enc, store_root=store, batch_size=batch_size, workers=workers, progress=False)
        done = int(res.ok_mask.sum())
    elif loader == "dataloader":
        done = _dataloader_run(enc, list(df.path), batch_size, workers)
    else:
        raise SystemExit(f"unknown loader {loader!r}")
    seconds = time.perf_counter() - t0
    cpu = _cpu_s() - cpu0
    return {
        "config": cfg,
        "device": enc.device if hasattr(enc, "device") else "cpu",
        "batch_size": batch_size,
        "backbone_id": enc.backbone_id,
        "images": done,
        "seconds": round(seconds, 2),
        "images_per_s": round(done / seconds, 2),
        "load_s": round(load_s, 2),
        # CPU seconds per image (this process + its decoding workers): a load-independent cost;
        # on an idle 2-core machine the best rate is about 2 / cpu_s_per_image.
        "cpu_s_per_image": round(cpu / max(done, 1), 4),
        "peak_rss_mb": round(_peak_mb(resource.RUSAGE_SELF), 1),
        "peak_worker_rss_mb": round(_peak_mb(resource.RUSAGE_CHILDREN), 1),
    }


def _first_image(df):
    from artlens.data.images import load_image

    return load_image(df.path.iloc[0])


def _dataloader_run(enc, paths, batch_size, workers) -> int:
    import numpy as np
    import torch
    from torch.utils.data import DataLoader, Dataset

    from artlens.data.images import ImageDecodeError, load_image

    class Images(Dataset):
        def __len__(self):
            return len(paths)

        def __getitem__(self, i):
            try:
                return enc.preprocess(load_image(paths[i]))
            except ImageDecodeError:
                return None

    def collate(items):
        return np.stack([x for x in items if x is not None]) if any(x is not None for x in items) else None

    done = 0
    dl = DataLoader(Images(), batch_size=batch_size, num_workers=workers, collate_fn=collate, prefetch_factor=2 if workers else None)
    with torch.inference_mode():
        for batch in dl:
            if batch is not None:
                enc.embed_batch(batch)
                done += len(batch)
    return done


def batch_independence(backbone: str, paths: list[str], device: str) -> dict:
    import numpy as np

    from artlens.data.images import load_image
    from artlens.embed import get_encoder

    enc = get_encoder(backbone, device=device)
    imgs = [enc.preprocess(load_image(p)) for p in paths[:32]]
    batch = enc.embed_batch(np.stack(imgs))
    alone = np.concatenate([enc.embed_batch(x[None]) for x in imgs[:8]])
    mixed = enc.embed_batch(np.stack(imgs[:8][::-1] + imgs[16:24]))[:8][::-1]
    cos_batch = np.sum(alone * batch[:8], axis=1)
    cos_mixed = np.sum(alone * mixed, axis=1)
    return {
        "backbone": backbone,
        "backbone_id": enc.backbone_id,
        "min_cos_alone_vs_batch32": round(float(cos_batch.min()), 6),
        "min_cos_alone_vs_mixed16": round(float(cos_mixed.min()), 6),
        "independent": bool(min(cos_batch.min(), cos_mixed.min()) >= 0.999),
    }


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return "CPU"


# --------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=None, help="default: the device's (32 on the CPU)")
    ap.add_argument("--device", default="auto", help="cpu, cuda[:N] or auto (default: a GPU when there is one)")
    ap.add_argument("--configs", default=",".join(DEFAULT_CONFIGS), help="comma-separated backbone:loader:workers")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--manifest", help=argparse.SUPPRESS)
    args = ap.parse_args()

    if args.child:
        print(json.dumps(child(args.child, args.manifest, args.batch_size, args.device)))
        return
    from artlens.models.device import DeviceError, resolve_device

    try:
        args.device = resolve_device(args.device)  # "no CUDA device" here, not in every child
    except DeviceError as exc:
        raise SystemExit(str(exc)) from None

    import pandas as pd
    from rich.console import Console
    from rich.table import Table

    from artlens.embed import file_sha256

    if not args.data.is_dir():
        raise SystemExit(f"{args.data} not found (the benchmark needs ../shared/datasets)")
    paths = pick_images(args.data, args.n)
    load_before = os.getloadavg()
    console = Console(width=None if sys.stdout.isatty() else 150)
    console.print(f"{len(paths)} images from {args.data}; device {args.device} ({_device_name(args.device)}); "
                  f"{os.cpu_count()} CPUs; load average before: " + " ".join(f"{x:.2f}" for x in load_before))
    configs = [c for c in args.configs.split(",") if c]
    results, checks = [], []
    with tempfile.TemporaryDirectory() as tmp:
        manifest = Path(tmp) / "m.parquet"
        # hashes up front: the benchmark measures embedding, not hashing
        pd.DataFrame({"path": paths, "sha256": [file_sha256(p) for p in paths]}).to_parquet(manifest)
        for cfg in configs:
            cmd = [sys.executable, __file__, "--child", cfg, "--manifest", str(manifest), "--device", args.device]
            cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                console.print(f"[red]{cfg} failed[/red]: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
                continue
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            console.print(f"  {cfg}: {results[-1]['images_per_s']} images/s")
        for backbone in dict.fromkeys(c.split(":")[0] for c in configs):
            try:
                checks.append(batch_independence(backbone, paths, args.device))
            except Exception as exc:  # report, keep the table
                console.print(f"[red]batch check {backbone} failed[/red]: {exc}")

    table = Table(title=f"embedding throughput on {args.device}, {len(paths)} images")
    for col in ("backbone", "loader", "workers", "batch", "images", "seconds", "images/s", "CPU s/image", "load s", "peak RSS MB", "worker peak RSS MB"):
        table.add_column(col, justify="left" if col in ("backbone", "loader") else "right")
    for r in results:
        b, loader, w = r["config"].split(":")
        table.add_row(b, loader, w, str(r["batch_size"]), str(r["images"]), f"{r['seconds']:.1f}", f"{r['images_per_s']:.2f}", f"{r['cpu_s_per_image']:.3f}", f"{r['load_s']:.1f}",
                      f"{r['peak_rss_mb']:.0f}", f"{r['peak_worker_rss_mb']:.0f}")
    console.print(table)
    tb = Table(title="batch independence (cosine of an image alone vs inside a batch)")
    for col in ("backbone", "backbone id", "alone vs batch of 32", "alone vs mixed batch", ">= 0.999"):
        tb.add_column(col)
    for c in checks:
        tb.add_row(c["backbone"], c["backbone_id"], f"{c['min_cos_alone_vs_batch32']:.6f}", f"{c['min_cos_alone_vs_mixed16']:.6f}",
                   "yes" if c["independent"] else "[red]NO[/red]")
    console.print(tb)
    load_after = os.getloadavg()
    console.print("load average after: " + " ".join(f"{x:.2f}" for x in load_after)
                  + " (other developers share this machine: numbers are lower than on an idle one)")
    if args.json:
        args.json.write_text(json.dumps({"results": results, "batch_independence": checks,
                                         "load_before": load_before, "load_after": load_after}, indent=2))


if __name__ == "__main__":
    main()
