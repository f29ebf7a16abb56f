"""Retrieval quality: which space should `artlens similar` search? Every candidate side by side with
raw CLIP cosine, on queries by artists that neither the index nor any learned projection saw.

Data: ../shared's WikiArt (11 styles, 626 artists from the file names), with the clip-vit-b16
features the embedding store already holds (nothing is embedded unless a file is missing).
Split: 5 folds by artist (greedy, largest artist first into the smallest fold: deterministic).
For each fold, its paintings are the queries and the other four folds are the index, so no artist
is on both sides. Neighbours with the query's own bytes (sha256) are skipped.

Style table (precision@1/5/10 of the query's style, and mAP over the whole ranking):
- `visual`: raw CLIP image embedding (512-d) cosine, the baseline; `features`: the 2,816-d vector
  the classifiers read;
- unsupervised, fitted on the index collection itself: centred CLIP, PCA-whitened CLIP/features;
- learned from labels: the shipped recipe (`fit_label_space`: CLIP beside an LDA of the features)
  fitted on the index's own style labels (`style (index labels)`), and fitted on OTHER artists'
  paintings than the index's (`style (unseen collection)`: the fold after the query fold is the
  index, the remaining three train the projection: a user's collection the projection never
  saw); a logistic-regression style head's probabilities beside CLIP; the artist space.
Artist table (`--artist`): paintings of the query fold's artists split in two (alternate files),
one half indexed, the other queried, every projection fitted on the other folds: does a space find
the same hand among artists it never saw?

    .venv/bin/python benchmarks/retrieval_quality.py                # style table, all candidates
    .venv/bin/python benchmarks/retrieval_quality.py --artist --json out.json
    .venv/bin/python benchmarks/retrieval_quality.py --sweep        # LDA settings (PCA dim, weight)
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
KS = (1, 5, 10)


def load_wikiart(root: Path, store=None, progress: bool = False):
    """(rows with style/artist/sha256, features (N, 2816)) for every painting under root/<Style>/."""
    from artlens.data.taxonomy import wikiart_name_fields
    from artlens.embed import embed_manifest
    from artlens.retrieval import read_rows

    rows = read_rows(root, progress=progress)
    rows = rows.sort_values("path").reset_index(drop=True)
    rows["artist"] = wikiart_name_fields(rows["path"], "artist")
    vectors, ok = embed_manifest(rows, "clip-vit-b16", store_root=store, progress=progress)[:2]
    return rows[ok].reset_index(drop=True), vectors[ok]


def artist_folds(artists: np.ndarray, k: int = 5) -> np.ndarray:
    """Fold per row; every artist in one fold, folds of near-equal size (largest artists first)."""
    names, counts = np.unique(artists.astype(str), return_counts=True)
    order = sorted(range(len(names)), key=lambda i: (-counts[i], names[i]))
    sizes, fold_of = [0] * k, {}
    for i in order:
        f = int(np.argmin(sizes))
        fold_of[names[i]] = f
        sizes[f] += counts[i]
    return np.array([fold_of[a] for a in artists.astype(str)])


def ranking_scores(zi: np.ndarray, zq: np.ndarray, yi, yq, shai, shaq, ks=KS) -> dict[str, float]:
    """precision@k and mAP of exact cosine ranking (what a flat FAISS index returns)."""
    from artlens.metrics import l2_normalize

    sims = l2_normalize(zq) @ l2_normalize(zi).T
    sims[shaq[:, None] == shai[None, :]] = -np.inf  # the query's own bytes
    order = np.argsort(-sims, axis=1, kind="stable")
    valid = np.isfinite(np.take_along_axis(sims, order, 1))
    rel = (yi[order] == yq[:, None]) & valid
    out = {f"p@{k}": float(rel[:, :k].mean()) for k in ks}
    hits = np.cumsum(rel, axis=1)
    ap = (rel * hits / np.arange(1, rel.shape[1] + 1)).sum(1) / np.maximum(rel.sum(1), 1)
    out["mAP"] = float(ap.mean())
    return out


# --------------------------------------------------------------------------- candidates
def _pca_space(name, x, start, stop, dim, whiten):
    """Centred (dim=0) or PCA-whitened features start:stop, fitted on x (the index)."""
    from artlens.metrics import l2_normalize
    from artlens.retrieval.spaces import Block, Space

    z = l2_normalize(x[:, start:stop])
    mean = z.mean(0).astype(np.float32)
    if dim == 0:
        return Space(name, x.shape[1], [Block(start, stop, 1.0, mean, None)])
    from sklearn.decomposition import PCA

    pca = PCA(n_components=dim, svd_solver="covariance_eigh", whiten=whiten).fit(z)
    matrix = pca.components_.T / (np.sqrt(pca.explained_variance_)[None, :] if whiten else 1.0)
    return Space(name, x.shape[1], [Block(start, stop, 1.0, pca.mean_.astype(np.float32), matrix.astype(np.float32))])


def _head_space(name, x, y, weight=1.0):
    """A logistic-regression style head on the features; its class probabilities (square root)
    beside CLIP. Not a linear block, so returned as a function."""
    from sklearn.linear_model import LogisticRegression

    from artlens.metrics import l2_normalize

    lr = LogisticRegression(C=1.0, max_iter=500).fit(l2_normalize(x), y)

    def project(v):
        return np.hstack([l2_normalize(v[:, :512]), weight * l2_normalize(np.sqrt(lr.predict_proba(l2_normalize(v))))])

    return project


def style_candidates(x_fit, rows_fit, x_index, rows_index, sweep: bool):
    """name -> projection (features -> vectors), each fitted where its description says."""
    from artlens.retrieval.spaces import Space, fit_label_space, visual_space

    dim = x_index.shape[1]
    c = {"visual (raw CLIP cosine)": visual_space("clip-vit-b16", dim), "features (2,816)": Space.identity("features", dim)}
    c["centred CLIP (index)"] = _pca_space("c", x_index, 0, 512, 0, False)
    c["PCA-whitened CLIP 128 (index)"] = _pca_space("w", x_index, 0, 512, 128, True)
    c["PCA-whitened features 256 (index)"] = _pca_space("w", x_index, 0, dim, 256, True)
    c["PCA features 256 (index)"] = _pca_space("p", x_index, 0, dim, 256, False)
    styles_index = rows_index["style"].to_numpy()
    c["style (index labels)"] = fit_label_space("style", x_index, styles_index, backbone="clip-vit-b16")
    c["visual (unseen collection)"] = c["visual (raw CLIP cosine)"]  # the same smaller index, for comparison
    c["style (unseen collection)"] = fit_label_space("style", x_fit, rows_fit["style"].to_numpy(), backbone="clip-vit-b16")
    c["style head probs + CLIP (index labels)"] = _head_space("h", x_index, styles_index)
    c["artist (unseen collection)"] = _artist_space(x_fit, rows_fit)
    if sweep:
        for pca_dim, weight in ((512, 1.5), (1024, 1.0), (1024, 1.5), (1024, 2.0), (1024, 3.0), (1536, 1.5)):
            c[f"sweep: style (index labels) pca {pca_dim} w {weight}"] = fit_label_space(
                "style", x_index, styles_index, backbone="clip-vit-b16", pca_dim=pca_dim, weight=weight)
    return c


def _artist_space(x, rows):
    from artlens.retrieval.spaces import ARTIST_MIN_WORKS, fit_label_space

    return fit_label_space("artist", x, rows["artist"].to_numpy(), backbone="clip-vit-b16", min_per_class=ARTIST_MIN_WORKS)


def _project(space, x):
    return space(x) if callable(space) and not hasattr(space, "project") else space.project(x)


# --------------------------------------------------------------------------- runs
def style_table(rows, x, folds: int, sweep: bool, console) -> dict[str, dict]:
    fold = artist_folds(rows["artist"].to_numpy(), folds)
    styles, shas = rows["style"].to_numpy(), rows["sha256"].to_numpy()
    totals: dict[str, dict] = {}
    for f in range(folds):
        t0 = time.perf_counter()
        q = fold == f
        i = ~q
        # "unseen collection": index = the next fold, projection fitted on the remaining ones
        i2 = fold == (f + 1) % folds
        fit = ~q & ~i2
        cands = style_candidates(x[fit], rows[fit], x[i], rows[i], sweep)
        for name, space in cands.items():
            idx_mask = i2 if "unseen collection" in name else i
            r = ranking_scores(_project(space, x[idx_mask]), _project(space, x[q]), styles[idx_mask], styles[q],
                               shas[idx_mask], shas[q])
            acc = totals.setdefault(name, {"queries": 0, **{k: 0.0 for k in r}})
            n = int(q.sum())
            acc["queries"] += n
            for k, v in r.items():
                acc[k] += v * n
        console.print(f"fold {f + 1}/{folds}: {int(q.sum())} queries, {int(i.sum())} indexed ({time.perf_counter() - t0:.0f} s)")
    return {name: {"queries": a["queries"], **{k: a[k] / a["queries"] for k in a if k != "queries"}} for name, a in totals.items()}


def artist_table(rows, x, folds: int, console) -> dict[str, dict]:
    from artlens.retrieval.spaces import Space, fit_label_space, visual_space

    artists, shas = rows["artist"].to_numpy().astype(str), rows["sha256"].to_numpy()
    fold = artist_folds(artists, folds)
    totals: dict[str, dict] = {}
    dim = x.shape[1]
    for f in range(folds):
        fit = fold != f
        cands = {"visual (raw CLIP cosine)": visual_space("clip-vit-b16", dim), "features (2,816)": Space.identity("features", dim),
                 "style (unseen collection)": fit_label_space("style", x[fit], rows["style"].to_numpy()[fit], backbone="clip-vit-b16"),
                 "artist (unseen collection)": _artist_space(x[fit], rows[fit])}
        members = np.flatnonzero(fold == f)
        # alternate paintings of each artist with 4+ here: odd ones are queries, the rest indexed
        q = np.zeros(len(rows), bool)
        for a in np.unique(artists[members]):
            own = members[artists[members] == a]
            if len(own) >= 4:
                q[own[1::2]] = True
        i = (fold == f) & ~q
        for name, space in cands.items():
            r = ranking_scores(_project(space, x[i]), _project(space, x[q]), artists[i], artists[q], shas[i], shas[q])
            acc = totals.setdefault(name, {"queries": 0, **{k: 0.0 for k in r}})
            acc["queries"] += int(q.sum())
            for k, v in r.items():
                acc[k] += v * int(q.sum())
        console.print(f"artist fold {f + 1}/{folds}: {int(q.sum())} queries, {int(i.sum())} indexed")
    return {name: {"queries": a["queries"], **{k: a[k] / a["queries"] for k in a if k != "queries"}} for name, a in totals.items()}


def print_table(title: str, results: dict[str, dict], console, baseline: str = "visual (raw CLIP cosine)") -> None:
    from rich.table import Table

    table = Table(title=title)
    table.add_column("space", justify="left")
    for col in ("p@1", "p@5", "p@10", "mAP", "p@5 vs CLIP on the same index"):
        table.add_column(col, justify="right")
    for name, r in results.items():
        # rows on the smaller "unseen collection" index are compared with raw CLIP on that index
        ref = "visual (unseen collection)" if "unseen collection" in name and "visual (unseen collection)" in results else baseline
        base = results.get(ref, {}).get("p@5")
        delta = f"{r['p@5'] - base:+.3f}" if base is not None else ""
        table.add_row(name, f"{r['p@1']:.3f}", f"{r['p@5']:.3f}", f"{r['p@10']:.3f}", f"{r['mAP']:.3f}", delta)
    console.print(table)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="wikiart-styles folder (<Style>/<artist>_<title>.jpg)")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--store", type=Path, default=None, help="embedding store root (default: the shared cache)")
    ap.add_argument("--artist", action="store_true", help="also the artist table")
    ap.add_argument("--sweep", action="store_true", help="also LDA settings (PCA dim x weight)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)

    from rich.console import Console

    console = Console(stderr=True)
    if not args.root.is_dir():
        console.print(f"[red]error:[/red] {args.root} not found")
        return 1
    rows, x = load_wikiart(args.root, args.store, progress=console.is_terminal)
    console.print(f"{len(rows)} paintings, {rows['style'].nunique()} styles, {rows['artist'].nunique()} artists, "
                  f"{args.folds} folds by artist")
    out = {"paintings": len(rows), "folds": args.folds, "style": style_table(rows, x, args.folds, args.sweep, console)}
    print_table(f"style retrieval, queries by artists the index never saw ({len(rows)} queries, {args.folds} artist folds)",
                out["style"], Console())
    if args.artist:
        out["artist"] = artist_table(rows, x, args.folds, console)
        print_table("artist retrieval among artists no projection saw (half of each artist's paintings queried)",
                    out["artist"], Console())
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
