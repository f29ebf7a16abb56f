"""Artist attribution under shift: known artists on other periods / styles, unknown artists never seen.

The question a new collection asks: of paintings the model never saw, how many by the known artists
keep their correct name, and how many by other artists are called `unknown artist`? A random split
by painting flatters both (a held-out painting has near twins of the same series in training), and
a threshold chosen there does not transfer. So this benchmark nests two shifted splits:

- *outer* folds (`--outer`, 5): each known artist's paintings in a minority style go to one fold
  whole, its dated paintings (a year in the title) in contiguous periods; kept-out artists (< 40
  paintings in ../shared/datasets/wikiart-styles) whole. Each outer fold in turn is the test: the
  model is trained on the other folds and measured on this one (known: other periods / styles of
  the 25 known artists; unknown: artists it never saw in any role);
- *inner* folds: `train_artist_task` on the training folds chooses the head and the threshold on
  its own out-of-fold scores, cut the way `--protocol` says: `period` (as shipped: inner folds shifted
  the same way) or `painting` (one painting at a time: the former, in-distribution choice).

For every outer fold it prints the head's accuracy (and a nearest-centroid baseline, and
attribution by similarity with the training paintings as gallery), the open-set AUROC, and through
`Predictor` the known paintings keeping their correct name and the unknown ones called `unknown
artist`; then the mean, std and min-max over the folds for each protocol side by side.
CLIP embeddings come from the shared embedding store (`artlens embed` fills it).

    .venv/bin/python benchmarks/artist.py                                  # period vs painting, 5 outer folds
    .venv/bin/python benchmarks/artist.py --protocol period --json artist.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ROOT = REPO.parent / "shared" / "datasets" / "wikiart-styles"
BACKBONE = "clip-vit-b16"


def load_manifest(root: Path, manifest: Path | None):
    """The scanned manifest of `root` (WikiArt file-name labels), cached beside the embeddings."""
    from artlens.data.manifest import read_manifest, scan, write_manifest
    from artlens.paths import cache_dir

    if manifest is not None:
        return read_manifest(manifest)
    cached = cache_dir() / "benchmarks" / f"{root.name}.manifest.parquet"
    if cached.is_file():
        return read_manifest(cached)
    print(f"scanning {root} (once; cached in {cached})", file=sys.stderr)
    res = scan(root, name_pattern="wikiart", progress=sys.stderr.isatty())
    write_manifest(res.manifest, cached)
    return res.manifest


def store_vectors(df, store_root: Path | None):
    """Vectors of the manifest rows from the CLIP store directory covering most rows."""
    from artlens.embed import EmbeddingStore, default_store_root

    root = Path(store_root) if store_root else default_store_root()
    best = None
    for d in sorted(root.glob(f"{BACKBONE}-*")):
        if not (d / "backbone.json").is_file():
            continue
        bid = json.loads((d / "backbone.json").read_text())["backbone_id"]
        vectors, found = EmbeddingStore(root, bid).get(list(df["sha256"]))
        if best is None or found.sum() > best[1].sum():
            best = (vectors, found, bid)
    return best if best is not None else (None, np.zeros(len(df), bool), None)


def attribution_accuracy(Xg, yg, Xq, yq, n_classes: int) -> dict:
    """Top-1 accuracy of the nearest artist by similarity, for each scoring method of
    `artlens.retrieval.attribution` (max, mean of the 3 closest works, centroid)."""
    from artlens.metrics import l2_normalize, top_k_accuracy

    G, Q = l2_normalize(Xg), l2_normalize(Xq)
    sims = Q @ G.T
    out = {}
    for method in ("max", "topk", "centroid"):
        scores = np.full((len(Q), n_classes), -np.inf, dtype=np.float32)
        for c in range(n_classes):
            s = sims[:, yg == c]
            if not s.shape[1]:
                continue
            if method == "max":
                scores[:, c] = s.max(axis=1)
            elif method == "topk":
                scores[:, c] = -np.sort(-s, axis=1)[:, :3].mean(axis=1)
            else:
                scores[:, c] = Q @ l2_normalize(G[yg == c].mean(axis=0, keepdims=True))[0]
        out[method] = round(top_k_accuracy(yq, scores, 1), 4)
    return out


def outer_folds(df, X, n_folds: int, seed: int):
    """The distinct paintings (`open_set_split` frame, every row in the pool) and their outer fold."""
    from artlens.data.artist_split import crossfit_folds, open_set_split

    sp = open_set_split(df, fractions=(1.0, 0.0, 0.0), unknown_fractions=(1.0, 0.0, 0.0), seed=seed)
    return sp, crossfit_folds(sp.frame, n_folds, seed, shift="period")


def run_fold(df, X, sp, fold, k: int, protocol: str, args, seed: int) -> dict:
    from artlens.data.artist_split import ROLE_COL, SPLIT_COL
    from artlens.evaluate.artist import evaluate_artist
    from artlens.train.artist import train_artist_task

    f = sp.frame
    rows = f["row"].to_numpy()
    train = fold != k
    t0 = time.perf_counter()
    art = train_artist_task(df.iloc[rows[train]].reset_index(drop=True), X[rows[train]], known=sp.known,
                            fractions=(0.8, 0.2, 0.0), unknown_fractions=(0.7, 0.3, 0.0), shift=protocol, seed=seed,
                            candidates=args.candidates, backbone={"name": BACKBONE}, threads=args.threads)
    seconds = time.perf_counter() - t0
    test = f.assign(**{SPLIT_COL: np.where(fold == k, "test", "train")})
    m = evaluate_artist(art.to_model(all_openset=True), test, X[rows])
    idx = {a: i for i, a in enumerate(art.labels)}
    y = np.array([idx.get(a, -1) for a in f["artist_label"]])
    known = (f[ROLE_COL] == "known").to_numpy()
    o = m["open_set_test"]
    return {
        "fold": k, "protocol": protocol, "seconds": round(seconds, 1), "rule": art.task.unknown,
        "head": art.metrics["selected_head"], "n_known": int((known & ~train).sum()), "n_unknown": int((~known & ~train).sum()),
        "accuracy": m["closed_set_test"]["accuracy"], "macro_f1": m["closed_set_test"]["macro_f1"],
        "centroid_accuracy": m["nearest_centroid_test"]["accuracy"],
        "similarity_top1": attribution_accuracy(X[rows][known & train], y[known & train], X[rows][known & ~train],
                                                y[known & ~train], len(art.labels)),
        "auroc": o["auroc"], "known_correct_name": o["known_correct_name"], "known_called_unknown": o["known_called_unknown"],
        "unknown_called_unknown": o["unknown_called_unknown"],
        "inner_estimate": {key: art.metrics["fold_transfer"][key]["mean"] for key in ("known_correct", "unknown_rejected")},
    }


def stat(values) -> dict:
    v = np.asarray(values, float)
    return {"mean": round(float(v.mean()), 4), "std": round(float(v.std()), 4), "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4)}


def summary(results: list[dict]) -> dict:
    out = {}
    for protocol in dict.fromkeys(r["protocol"] for r in results):
        rs = [r for r in results if r["protocol"] == protocol]
        out[protocol] = {key: stat([r[key] for r in rs]) for key in (
            "accuracy", "centroid_accuracy", "auroc", "known_correct_name", "unknown_called_unknown")}
        out[protocol]["similarity_topk_top1"] = stat([r["similarity_top1"]["topk"] for r in rs])
        out[protocol]["inner_known_correct"] = stat([r["inner_estimate"]["known_correct"] for r in rs])
        out[protocol]["inner_unknown_rejected"] = stat([r["inner_estimate"]["unknown_rejected"] for r in rs])
    return out


def print_fold(r: dict) -> None:
    print(f"{r['protocol']:<9}{r['fold']:>5}{r['n_known']:>7}{r['n_unknown']:>7}{r['accuracy']:>9.3f}{r['centroid_accuracy']:>10.3f}"
          f"{r['similarity_top1']['topk']:>9.3f}{r['auroc']:>8.3f}{r['known_correct_name']:>10.1%}{r['unknown_called_unknown']:>10.1%}"
          f"   {r['rule']['method']} {r['rule']['threshold']:.4g} ({r['seconds']:.0f} s)", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--manifest", type=Path, help="A scanned manifest of --root (default: scan once, cached).")
    ap.add_argument("--store", type=Path, help="Embedding store root (default: the shared user cache).")
    ap.add_argument("--protocol", nargs="+", default=["period", "painting"], choices=["period", "painting"],
                    help="How the inner folds choose the threshold (the outer folds are always period-shifted).")
    ap.add_argument("--outer", type=int, default=5, help="Outer folds (each the test once).")
    ap.add_argument("--folds", type=int, nargs="*", help="Only these outer folds (default: all).")
    ap.add_argument("--candidates", type=json.loads, help='Head candidates as JSON, e.g. \'[{"components": 512, "weight_decay": 0.01}]\'.')
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="Write every number to this file.")
    args = ap.parse_args(argv)

    if not args.root.is_dir():
        print(f"{args.root}: not there", file=sys.stderr)
        return 1
    df = load_manifest(args.root, args.manifest)
    vectors, ok, bid = store_vectors(df, args.store)
    print(f"{len(df)} images, {df['sha256'].nunique()} distinct; embeddings from store {bid}: {int(ok.sum())}")
    if not ok.all():
        print("the store lacks some of these images: run `artlens embed` on the folder first", file=sys.stderr)
        return 1
    sp, fold = outer_folds(df, vectors, args.outer, args.seed)
    f = sp.frame
    print(f"{len(sp.known)} known artists ({int((f['artist_role'] == 'known').sum())} paintings), {len(sp.kept_out)} "
          f"unknown artists ({sum(sp.kept_out.values())} paintings); {args.outer} outer folds, seed {args.seed}")
    print(f"{'protocol':<9}{'fold':>5}{'known':>7}{'unkn.':>7}{'head acc':>9}{'centroid':>10}{'sim top1':>9}{'AUROC':>8}"
          f"{'known ok':>10}{'unk. rej':>10}   rule")
    results = []
    for k in args.folds if args.folds is not None else range(args.outer):
        for protocol in args.protocol:
            results.append(run_fold(df, vectors, sp, fold, k, protocol, args, args.seed))
            print_fold(results[-1])
    summ = summary(results)
    print("\nmean +- std (min-max) over the outer folds: known paintings keeping their correct name / unknown artists' "
          "paintings called 'unknown artist' (targets >= 80 %)")
    for protocol, s in summ.items():
        kc, ur = s["known_correct_name"], s["unknown_called_unknown"]
        print(f"  {protocol:<9} known {kc['mean']:.1%} +- {kc['std']:.1%} ({kc['min']:.1%}-{kc['max']:.1%})   unknown "
              f"{ur['mean']:.1%} +- {ur['std']:.1%} ({ur['min']:.1%}-{ur['max']:.1%})   head accuracy {s['accuracy']['mean']:.3f}, "
              f"AUROC {s['auroc']['mean']:.3f}; the training's own estimate: known {s['inner_known_correct']['mean']:.1%}, "
              f"unknown {s['inner_unknown_rejected']['mean']:.1%}")
    if args.json:
        args.json.write_text(json.dumps({"backbone_id": bid, "summary": summ, "folds": results}, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
