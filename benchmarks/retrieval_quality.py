"""Retrieval quality and speed: do a painting's nearest neighbours share its style?

For each backbone available offline: embed a WikiArt subset (reusing the shared embedding store),
index it, and query every image against the rest. precision@k = the share of the k nearest
paintings (copies of the query itself, same sha256, left out) whose style is the query's. Then the
query latency of an exact index over 10k vectors (the set tiled when smaller), and the time to
embed one query image.

    .venv/bin/python benchmarks/retrieval_quality.py                 # 100 images per style
    .venv/bin/python benchmarks/retrieval_quality.py --full          # all 7,809
    .venv/bin/python benchmarks/retrieval_quality.py --backbones clip-vit-b16 --json out.json

Numbers taken on a shared machine are disturbed by other work; the quality numbers are not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "wikiart-styles"
BACKBONES = ("clip-vit-b16", "efficientnet-lite0", "mobilenet-v2")
KS = (1, 5, 10)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp"}


def wikiart_rows(root: Path, per_class: int | None, seed: int = 0):
    """path, style, sha256 for the images of `root/<Style>/`, `per_class` of each (seeded)."""
    import pandas as pd

    from artlens.embed import file_sha256

    rng = np.random.default_rng(seed)
    rows = []
    for style_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        files = sorted(p for p in style_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if per_class is not None and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        rows += [{"path": str(f), "style": style_dir.name} for f in files]
    df = pd.DataFrame(rows)
    df["sha256"] = [file_sha256(p) for p in df["path"]]
    return df


def precision_at_k(index, vectors: np.ndarray, styles: np.ndarray, shas: np.ndarray, ks=KS) -> dict[int, float]:
    """Mean precision@k over all queries; neighbours with the query's sha256 are skipped."""
    kmax = max(ks)
    counts = {}
    for s in shas:
        counts[s] = counts.get(s, 0) + 1
    extra = max(counts.values())  # the query and its exact copies
    _, ids = index.search(vectors, kmax + extra)
    out = {k: [] for k in ks}
    for q in range(len(vectors)):
        nbrs = [i for i in ids[q] if i >= 0 and shas[i] != shas[q]][:kmax]
        same = styles[nbrs] == styles[q]
        for k in ks:
            out[k].append(same[:k].mean() if len(same) >= k else np.nan)
    return {k: float(np.nanmean(v)) for k, v in out.items()}


def search_latency(vectors: np.ndarray, n: int = 10_000, queries: int = 200, k: int = 5, seed: int = 0) -> dict[str, float]:
    """Milliseconds per single-image query (neighbour rows included) on an exact index of n vectors."""
    import pandas as pd

    from artlens.retrieval import FaissIndex

    rng = np.random.default_rng(seed)
    reps = -(-n // len(vectors))
    tiled = np.tile(vectors, (reps, 1))[:n]
    tiled = tiled + 0.01 * rng.standard_normal(tiled.shape).astype(np.float32)  # no exact ties
    rows = pd.DataFrame({"path": [f"v{i}" for i in range(n)], "style": "x", "sha256": None})
    idx = FaissIndex.build(tiled, rows, kind="flat")
    qs = vectors[rng.integers(0, len(vectors), queries)]
    idx.neighbours(qs[0], k)  # warm-up
    times = []
    for q in qs:
        t0 = time.perf_counter()
        idx.neighbours(q, k)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median_ms": statistics.median(times), "p95_ms": float(np.percentile(times, 95)), "n": n}


def encode_latency(backbone: str, paths: list[str], n: int = 5) -> float:
    """Milliseconds to decode and embed one query image (the encoder already loaded)."""
    from artlens.data.images import load_image
    from artlens.embed import get_encoder

    enc = get_encoder(backbone)
    enc.embed_images([load_image(paths[0])])  # warm-up
    times = []
    for p in paths[1 : n + 1]:
        t0 = time.perf_counter()
        enc.embed_images([load_image(p)])
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def available(names) -> list[str]:
    try:
        from artlens.models.backbones import list_backbones
    except ModuleNotFoundError:
        return [n for n in names if n == "clip-vit-b16"]
    known = set(list_backbones())
    return [n for n in names if n in known]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="wikiart-styles folder (<Style>/<image>)")
    ap.add_argument("--backbones", default=",".join(BACKBONES), help="comma separated")
    ap.add_argument("--per-class", type=int, default=100, help="images per style (default 100)")
    ap.add_argument("--full", action="store_true", help="every image (7,809), not a subset")
    ap.add_argument("--store", type=Path, default=None, help="embedding store root (default: the shared cache)")
    ap.add_argument("--latency-n", type=int, default=10_000, help="index size for the latency test")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    from rich.console import Console
    from rich.table import Table

    from artlens.embed import embed_manifest
    from artlens.retrieval import FaissIndex

    console = Console(stderr=True)
    if not args.root.is_dir():
        console.print(f"[red]error:[/red] {args.root} not found")
        return 1
    wanted = [b.strip() for b in args.backbones.split(",") if b.strip()]
    names = available(wanted)
    for missing in sorted(set(wanted) - set(names)):
        console.print(f"[yellow]skipped[/yellow] {missing}: not in the backbone registry")
    df = wikiart_rows(args.root, None if args.full else args.per_class)
    console.print(f"{len(df)} images, {df['style'].nunique()} styles, {df['sha256'].nunique()} distinct files")

    results = []
    for name in names:
        t0 = time.perf_counter()
        try:
            vectors, ok, errors = embed_manifest(df, name, store_root=args.store, workers=args.workers, progress=console.is_terminal)[:3]
        except Exception as exc:  # a backbone whose weights are missing: report, go on with the rest
            console.print(f"[yellow]skipped[/yellow] {name}: {exc}")
            continue
        embed_s = time.perf_counter() - t0
        rows = df[ok].reset_index(drop=True)
        v = vectors[ok]
        idx = FaissIndex.build(v, rows, backbone=name)
        prec = precision_at_k(idx, v, rows["style"].to_numpy(), rows["sha256"].to_numpy())
        lat = search_latency(v, n=args.latency_n)
        enc_ms = encode_latency(name, rows["path"].tolist())
        results.append(
            {"backbone": name, "images": len(rows), "failed": int((~ok).sum()), "dim": int(v.shape[1]),
             **{f"p@{k}": round(p, 4) for k, p in prec.items()},
             "search_ms_median": round(lat["median_ms"], 3), "search_ms_p95": round(lat["p95_ms"], 3),
             "index_size": lat["n"], "encode_ms": round(enc_ms, 1), "embed_s": round(embed_s, 1)}
        )

    chance = float(((df["style"].value_counts() / len(df)) ** 2).sum())
    table = Table(title=f"style retrieval on wikiart-styles ({'all' if args.full else f'{args.per_class} per style'}; chance p@k ~ {chance:.3f})")
    for col in ("backbone", "images", "p@1", "p@5", "p@10", f"search ms ({args.latency_n // 1000}k, median/p95)", "encode ms/image"):
        table.add_column(col, justify="left" if col == "backbone" else "right")
    for r in results:
        table.add_row(
            r["backbone"], str(r["images"]), f"{r['p@1']:.3f}", f"{r['p@5']:.3f}", f"{r['p@10']:.3f}",
            f"{r['search_ms_median']:.2f} / {r['search_ms_p95']:.2f}", f"{r['encode_ms']:.0f}",
        )
    Console().print(table)
    if args.json:
        args.json.write_text(json.dumps({"results": results, "chance": chance}, indent=2) + "\n")
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
