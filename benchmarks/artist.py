"""Artist attribution on WikiArt: the artist head beside a nearest-centroid baseline, and the open set.

Artists with >= 40 paintings in ../shared/datasets/wikiart-styles are the known ones (split by
painting: 60% train, 20% validation, 20% test; near-duplicates on one side); the other artists are
unknown ones, split *by artist* (40/30/30% of their paintings) into background training (the head's
"someone else" logits: one per kept-out artist with >= 5 paintings, one for the rest), validation
(to choose the open-set rule and its threshold) and test. With
`--validation crossfit` (the default, as shipped) train and validation parts are pooled and every
choice is made on out-of-fold scores of 5 folds (kept-out artists whole to a fold), then the head is
trained on the whole pool; `--validation holdout` trains on train and chooses on validation. The
test parts are the same either way. For every seed the script prints

- closed set (known artists' held-out paintings): accuracy, macro-F1, top-5 of the artist head and
  of a nearest-centroid classifier on the same CLIP embeddings;
- open set: AUROC known-vs-unknown of max probability, energy, centroid distance and background
  ("someone else") logits trained on other kept-out artists (validation and test), the chosen rule,
  and on test the false attribution rate, the share of unknown-artist paintings called `unknown
  artist` and of known-artist paintings keeping their correct name (through `Predictor`, as users
  see them); targets >= 80% and >= 80%;
- attribution by similarity (gallery: the known artists' training paintings): how often the nearest
  artist by max cosine / mean of the 3 closest / centroid is the right one.

CLIP embeddings come from the shared embedding store (`artlens embed` fills it); nothing is computed
unless `--embed` is given.

    .venv/bin/python benchmarks/artist.py
    .venv/bin/python benchmarks/artist.py --seeds 0 1 2 3 4 --json artist.json

It ends with issue #10's Done-when numbers (mean over the seeds): macro-F1 and top-5 of the head and
of the nearest-centroid baseline, and at the chosen threshold the share of unknown-artist paintings
called `unknown artist` and of known-artist paintings keeping their correct name (targets 80%).
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


def store_vectors(df, store_root: Path | None, backbone_id: str | None):
    """Vectors of the manifest rows from the store: by default the current CLIP encoder's (the one
    `predict` uses), else the CLIP store directory covering most rows."""
    import json as _json

    from artlens.embed import EmbeddingStore, default_store_root

    root = Path(store_root) if store_root else default_store_root()
    ids = [backbone_id] if backbone_id else []
    if not ids:
        try:
            from artlens.embed import get_encoder

            ids.append(get_encoder(BACKBONE).backbone_id)
        except Exception as exc:  # no weights here: fall back to whatever the store holds
            print(f"(CLIP encoder not available: {exc})", file=sys.stderr)
        ids += [
            _json.loads((d / "backbone.json").read_text())["backbone_id"]
            for d in sorted(root.glob(f"{BACKBONE}-*")) if (d / "backbone.json").is_file()
        ]
    best = None
    for bid in dict.fromkeys(ids):  # in order of preference; a later one must cover strictly more
        store = EmbeddingStore(root, bid)
        vectors, found = store.get(list(df["sha256"]))
        if best is None or found.sum() > best[1].sum():
            best = (vectors, found, bid)
    if best is None:
        return None, np.zeros(len(df), bool), None
    return best


def attribution_accuracy(Xg, yg, Xq, yq, n_classes: int) -> dict:
    """Top-1 / top-3 accuracy of the nearest artist by similarity, for each scoring method."""
    from artlens.metrics import l2_normalize, top_k_accuracy

    G, Q = l2_normalize(Xg), l2_normalize(Xq)
    sims = Q @ G.T
    out = {}
    for method in ("max", "topk", "centroid"):
        scores = np.full((len(Q), n_classes), -np.inf, dtype=np.float32)
        for c in range(n_classes):
            s = sims[:, yg == c]
            if method == "max":
                scores[:, c] = s.max(axis=1)
            elif method == "topk":
                scores[:, c] = -np.sort(-s, axis=1)[:, :3].mean(axis=1)
            else:
                scores[:, c] = Q @ l2_normalize(G[yg == c].mean(axis=0, keepdims=True))[0]
        out[method] = {"top1": round(top_k_accuracy(yq, scores, 1), 4), "top3": round(top_k_accuracy(yq, scores, 3), 4)}
    return out


def run(df, vectors, ok, args, seed: int) -> dict:
    from artlens.train.artist import ROLE_COL, SPLIT_COL, train_artist_task

    t0 = time.perf_counter()
    art = train_artist_task(df, vectors, ok, min_per_class=args.min_per_class, seed=seed, validation=args.validation,
                            target_known=args.target_known, target_unknown=args.target_unknown, known_rate=args.known_rate,
                            backbone={"name": BACKBONE}, background_min_paintings=args.background_min_paintings,
                            threads=args.threads)
    m = dict(art.metrics)
    m["train_seconds"] = round(time.perf_counter() - t0, 1)
    f = art.split.frame
    rows = np.flatnonzero(ok)[f["row"].to_numpy()]
    X = vectors[rows]
    idx = {a: i for i, a in enumerate(art.labels)}
    y = np.array([idx.get(a, -1) for a in f["artist_label"]])
    tr = ((f[ROLE_COL] == "known") & (f[SPLIT_COL] == "train")).to_numpy()
    te = ((f[ROLE_COL] == "known") & (f[SPLIT_COL] == "test")).to_numpy()
    m["attribution_test"] = attribution_accuracy(X[tr], y[tr], X[te], y[te], len(art.labels))
    m["rule"] = art.task.unknown
    # The other reading of the known target: `correct` (keep their correct name) vs `accepted` (keep a name).
    from artlens.train.artist import TASK, UNKNOWN_LABEL
    from artlens.train.openset import calibrate_scores, evaluate_rule

    scoring = art.to_model(all_openset=True)
    ut = ((f[ROLE_COL] == "unknown") & (f[SPLIT_COL] == "test")).to_numpy()
    c = art.calibration_scores  # the validation (out-of-fold with cross-fitting) scores the rule was chosen on
    _, alt_rule, _ = calibrate_scores(c["known"], c["correct"], c["unknown"], methods=[m["rule"]["method"]],
                                      target_known=args.target_known, target_unknown=args.target_unknown,
                                      known_rate=other(args.known_rate), label=UNKNOWN_LABEL)
    m["other_reading"] = {"known_rate": other(args.known_rate), "rule": alt_rule,
                          "test": evaluate_rule(scoring, TASK, alt_rule, X[te], y[te], X[ut])}
    m["temperature"] = art.task.temperature
    return m


def other(known_rate: str) -> str:
    return "correct" if known_rate == "accepted" else "accepted"


def print_seed(seed: int, m: dict) -> None:
    s = m["split"]
    print(f"\n== seed {seed}: {s['known_artists']} known artists (>= {s['min_per_class']} paintings): "
          f"train {s.get('known_train', 0)}, val {s.get('known_val', 0)}, test {s.get('known_test', 0)} paintings; "
          f"{s['kept_out_artists']} artists kept out ({s['kept_out_paintings']} paintings): "
          f"{s['unknown_train_artists']} artists / {s.get('unknown_train', 0)} paintings train the background logit, "
          f"{s['unknown_val_artists']} / {s.get('unknown_val', 0)} for validation, "
          f"{s['unknown_test_artists']} / {s.get('unknown_test', 0)} for test")
    print(f"validation: {s.get('validation', 'holdout')}")
    print(f"head: {m['selected_head']}  temperature {m['temperature']:.3f}  ({m['train_seconds']} s incl. calibration)")
    print(f"{'closed set (test)':<24}{'accuracy':>10}{'macro-F1':>10}{'top-5':>10}")
    for name, key in (("artist head", "closed_set_test"), ("nearest centroid", "nearest_centroid_test")):
        r = m[key]
        print(f"{name:<24}{r['accuracy']:>10.3f}{r['macro_f1']:>10.3f}{r['top5_accuracy']:>10.3f}")
    v, t = m["open_set_validation"], m["open_set_test"]
    print(f"{'open set (own val threshold)':<30}{'AUROC val':>10}{'test':>8}{'test: unknown rejected':>24}{'known correct name':>20}")
    for meth, r in v["methods"].items():
        mark = "  <- chosen" if meth == v["method"] else ""
        bm = t.get("by_method", {}).get(meth, {})
        print(f"{meth:<30}{r['auroc']:>10.3f}{t['auroc_by_method'].get(meth, float('nan')):>8.3f}"
              f"{bm.get('unknown_rejected', float('nan')):>24.1%}{bm.get('known_correct', float('nan')):>20.1%}{mark}")
    op = v["methods"][v["method"]]["operating_point"]
    print(f"rule {m['rule']}  (validation: known correct {op['known_correct']:.1%}, unknown rejected "
          f"{op['unknown_rejected']:.1%}; {op['criterion']})")
    p = t["predict"]
    print(f"test: known-artist paintings keeping their correct name {p['known_correct_name']:.1%} "
          f"(called unknown {p['known_called_unknown']:.1%}, wrong name {p['known_wrong_name']:.1%}); "
          f"unknown-artist paintings called 'unknown artist' {p['unknown_called_unknown']:.1%}; "
          f"false attribution rate {p['false_attribution_rate']:.1%}")
    o = m["other_reading"]
    r = o["test"]
    what = "their correct name" if o["known_rate"] == "correct" else "a name (right or wrong)"
    print(f"(threshold chosen so that known paintings keep {what} instead: {o['rule']['threshold']:.4g} -> "
          f"test known named {r['known_accepted']:.1%}, correctly {r['known_correct']:.1%}; unknown called 'unknown artist' "
          f"{r['unknown_rejected']:.1%})")
    a = m["attribution_test"]
    print("attribution by similarity (test, gallery = training paintings): " + ", ".join(
        f"{k} top-1 {v['top1']:.3f} / top-3 {v['top3']:.3f}" for k, v in a.items()))


def summary(results: dict[int, dict]) -> dict:
    def stat(get):
        vals = np.array([get(m) for m in results.values()], dtype=float)
        return {"mean": round(float(vals.mean()), 4), "std": round(float(vals.std()), 4), "values": [round(float(x), 4) for x in vals]}

    out = {
        "head_macro_f1": stat(lambda m: m["closed_set_test"]["macro_f1"]),
        "head_top5": stat(lambda m: m["closed_set_test"]["top5_accuracy"]),
        "head_accuracy": stat(lambda m: m["closed_set_test"]["accuracy"]),
        "centroid_macro_f1": stat(lambda m: m["nearest_centroid_test"]["macro_f1"]),
        "centroid_top5": stat(lambda m: m["nearest_centroid_test"]["top5_accuracy"]),
        "centroid_accuracy": stat(lambda m: m["nearest_centroid_test"]["accuracy"]),
        "rule_auroc_test": stat(lambda m: m["open_set_test"]["rule"]["auroc"]),
        "known_correct_name": stat(lambda m: m["open_set_test"]["predict"]["known_correct_name"]),
        "unknown_called_unknown": stat(lambda m: m["open_set_test"]["predict"]["unknown_called_unknown"]),
        "false_attribution_rate": stat(lambda m: m["open_set_test"]["predict"]["false_attribution_rate"]),
        "known_named": stat(lambda m: m["open_set_test"]["predict"]["known_correct_name"] + m["open_set_test"]["predict"]["known_wrong_name"]),
        "other_reading_known_named": stat(lambda m: m["other_reading"]["test"]["known_accepted"]),
        "other_reading_known_correct": stat(lambda m: m["other_reading"]["test"]["known_correct"]),
        "other_reading_unknown_rejected": stat(lambda m: m["other_reading"]["test"]["unknown_rejected"]),
        "attribution_max_top1": stat(lambda m: m["attribution_test"]["max"]["top1"]),
        "attribution_topk_top1": stat(lambda m: m["attribution_test"]["topk"]["top1"]),
        "attribution_centroid_top1": stat(lambda m: m["attribution_test"]["centroid"]["top1"]),
    }
    for meth in ("max_prob", "energy", "centroid", "background"):
        out[f"auroc_test_{meth}"] = stat(lambda m, meth=meth: m["open_set_test"]["auroc_by_method"].get(meth, float("nan")))
        for k in ("unknown_rejected", "known_correct"):
            out[f"{k}_test_{meth}"] = stat(lambda m, meth=meth, k=k: m["open_set_test"].get("by_method", {}).get(meth, {}).get(k, float("nan")))
    out["chosen_methods"] = [m["rule"]["method"] for m in results.values()]
    return out


def print_done_when(summ: dict, results: dict[int, dict], args) -> None:
    """Issue #10's Done-when numbers: test split, mean (min-max) over the seeds."""
    def cell(key: str, pct: bool = False) -> str:
        v = summ[key]
        lo, hi = min(v["values"]), max(v["values"])
        if pct:
            return f"{v['mean']:.1%} ({lo:.1%}-{hi:.1%})" if len(v["values"]) > 1 else f"{v['mean']:.1%}"
        return f"{v['mean']:.3f} ({lo:.3f}-{hi:.3f})" if len(v["values"]) > 1 else f"{v['mean']:.3f}"

    first = next(iter(results.values()))
    s = first["split"]
    n = len(results)
    print(f"\n== issue #10 Done-when: test split, {'mean (min-max) over ' + str(n) + ' seeds' if n > 1 else 'seed ' + str(next(iter(results)))}")
    print(f"{s['known_artists']} artists with >= {s['min_per_class']} paintings, split by painting "
          f"({s.get('known_test', 0)} test paintings in seed {next(iter(results))}'s split); {s['unknown_test_artists']} "
          f"kept-out artists ({s.get('unknown_test', 0)} paintings) never seen by any choice; validation: {args.validation}")
    print(f"{'closed set':<20}{'macro-F1':>24}{'top-5':>24}{'accuracy':>24}")
    for name, pre in (("artist head", "head"), ("nearest centroid", "centroid")):
        print(f"{name:<20}{cell(pre + '_macro_f1'):>24}{cell(pre + '_top5'):>24}{cell(pre + '_accuracy'):>24}")
    methods = ", ".join(f"{m} x{summ['chosen_methods'].count(m)}" for m in dict.fromkeys(summ["chosen_methods"]))
    print(f"open set: rule {methods} (threshold chosen on validation artists held out whole, --known-rate "
          f"{args.known_rate}); test AUROC {cell('rule_auroc_test')}")
    for label, key, target in (("unknown-artist paintings called 'unknown artist'", "unknown_called_unknown", args.target_unknown),
                               ("known-artist paintings keeping their correct name", "known_correct_name", args.target_known)):
        mean = summ[key]["mean"]
        verdict = "met" if mean >= target else f"NOT met ({100 * (mean - target):+.1f} points)"
        print(f"  {label:<52}{cell(key, True):>24}   target >= {target:.0%}: {verdict}")
    print(f"  (known-artist paintings keeping a name: {cell('known_named', True)}; the head alone is right on "
          f"{cell('head_accuracy', True)}, the ceiling of the correct-name share)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--manifest", type=Path, help="A scanned manifest of --root (default: scan once, cached).")
    ap.add_argument("--store", type=Path, help="Embedding store root (default: the shared user cache).")
    ap.add_argument("--backbone-id", help="Store folder's backbone id (default: the CLIP one covering most images).")
    ap.add_argument("--embed", action="store_true", help="Compute the embeddings the store lacks (slow on a CPU).")
    ap.add_argument("--min-per-class", type=int, default=40)
    ap.add_argument("--target-known", type=float, default=0.8)
    ap.add_argument("--target-unknown", type=float, default=0.8)
    ap.add_argument("--validation", choices=("crossfit", "holdout"), default="crossfit",
                    help="Where the head's choices and the open-set threshold are made: out-of-fold scores over the "
                         "train+val paintings (the shipped way), or a held-out val part (the former way).")
    ap.add_argument("--known-rate", choices=("correct", "accepted"), default="correct",
                    help="What --target-known counts on validation: known paintings keeping their correct name (as "
                         "shipped), or a name.")
    from artlens.train.artist import BACKGROUND_MIN_PAINTINGS

    ap.add_argument("--background-min-paintings", type=int, default=BACKGROUND_MIN_PAINTINGS,
                    help="A kept-out artist with this many paintings gets a background class of its own (0: one class).")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, help="Write every number to this file.")
    args = ap.parse_args(argv)

    if not args.root.is_dir():
        print(f"{args.root}: not there", file=sys.stderr)
        return 1
    df = load_manifest(args.root, args.manifest)
    if args.embed:
        from artlens.embed import embed_manifest

        vectors, ok = embed_manifest(df, BACKBONE, store_root=args.store, progress=sys.stderr.isatty())[:2]
        bid = "computed"
    else:
        vectors, ok, bid = store_vectors(df, args.store, args.backbone_id)
    coverage = ok.mean() if len(ok) else 0.0
    print(f"{len(df)} images, {df['sha256'].nunique()} distinct; embeddings from store {bid}: {ok.sum()} ({coverage:.1%})")
    if coverage < 0.95:
        print("the store lacks most of these images: run `artlens embed` on the folder first, or pass --embed", file=sys.stderr)
        return 1

    results = {}
    for seed in args.seeds:
        results[seed] = run(df, vectors, ok, args, seed)
        print_seed(seed, results[seed])
    summ = summary(results)
    if len(results) > 1:
        print(f"\n== over {len(results)} seeds (mean +- std)")
        for k, v in summ.items():
            if isinstance(v, dict):
                print(f"{k:<36}{v['mean']:.3f} +- {v['std']:.3f}")
        print(f"{'chosen methods':<36}{', '.join(summ['chosen_methods'])}")
    print_done_when(summ, results, args)
    if args.json:
        args.json.write_text(json.dumps({"backbone_id": bid, "summary": summ, "seeds": {str(k): v for k, v in results.items()}}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
