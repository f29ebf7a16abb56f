#!/usr/bin/env python
"""Origin (human / AI) on groups the head never saw: the old recipe beside the shipped one.

    .venv/bin/python benchmarks/origin.py [--recipe configs/default-model.yaml] [--json out.json]

Every AI family and every human kind of the recipe's data is held out in turn; a head fitted on
the rest scores it (artlens.train.origin.leave_one_group_out). Printed per group, in one run:
- old: the plain probe the default model shipped first (all 2816 features, every source, P >= 0.5);
- prev: the recipe shipped before this one (block-9 patch means, every group, its own band);
- new: the recipe's choice (features and weight decay chosen on these same out-of-group numbers),
  at P >= 0.5 and with its band (P >= accept: `ai`; between reject and accept: `unsure`).
Then the same for each WikiArt style held out on its own (a new kind of painting, other painting
styles still in training), the group-balanced out-of-group ROC AUC of both, and AI images of
artists held out (seen families, new content: 5 artist-grouped folds), and, for a recipe trained
on pairs, each paired family held out of the pairs (the others' pairs only).
Needs ../shared/datasets; embeddings come from the shared cache (first run: ~20 min to embed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OLD = {"blocks": ["all"], "weight_decay": 1e-2}
PREV = {"blocks": ["block9"], "weight_decay": 1e-1}  # shipped 2026-12-05: every group, held out in turn


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "configs/default-model.yaml")
    ap.add_argument("--json", type=Path, help="write every number here too")
    ap.add_argument("--cap", type=int, default=1500, help="rows per group in each fit")
    args = ap.parse_args(argv)

    from artlens.train.config import load_recipe
    from artlens.train.data import prepare
    from artlens.train.origin import (calibrated_band, leave_one_group_out, origin_content, origin_groups,
                                      select_recipe, trains_on_pairs)
    from artlens.train.probe import embed_rows

    t0 = time.perf_counter()
    recipe = load_recipe(args.recipe)
    prepared = prepare(recipe, progress=False)
    X, prepared, _, _ = embed_rows(prepared, recipe, progress=False)
    df = prepared.df
    groups = origin_groups(df)
    have = np.array([g is not None for g in groups])
    X, df, groups = X[have], df[have].reset_index(drop=True), groups[have].astype(str)
    Z = (X - X.mean(0)) / np.maximum(X.std(0), 1e-6)
    is_ai = np.char.startswith(groups, "ai:")
    content = origin_content(df)
    print(f"{len(df)} images, {len(set(groups))} groups, embedded in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    ocfg = recipe["origin"]
    new, candidates, v_new = select_recipe(Z, is_ai, groups, ocfg.get("candidates"), max_fpr=float(ocfg["max_fpr"]),
                                           cap=args.cap, content=content)
    v_old = leave_one_group_out(Z, is_ai, groups, OLD, cap=args.cap)
    v_prev = leave_one_group_out(Z, is_ai, groups, PREV, cap=args.cap)
    # the shipped band: calibrated on the out-of-group scores (as artlens.train.origin.add_origin)
    t_new, _, op = calibrated_band(v_new, ocfg)
    _, _, op_prev = calibrated_band(v_prev, ocfg)
    # the new band's accept threshold on the raw (uncalibrated) scores, for heads refitted below
    accept_raw = float(1 / (1 + np.exp(-np.log(op["accept"] / (1 - op["accept"])) * t_new))) if op["accept"] < 1 else 1.0

    # Finer human kinds: each WikiArt style held out alone (the other styles stay in training).
    styles = df["style"].where(df["kind"].eq("painting")) if "style" in df and "kind" in df else None
    fine = groups.copy()
    if styles is not None:
        m = styles.notna().to_numpy()
        fine[m] = "human:painting/" + styles[m].astype(str).to_numpy()
    held = sorted({g for g in fine if g.startswith("human:painting/")})
    s_old = leave_one_group_out(Z, is_ai, fine, OLD, held=held, cap=args.cap) if held else None
    s_new = leave_one_group_out(Z, is_ai, fine, new, held=held, cap=args.cap, content=content) if held else None

    print("\nCandidates (out-of-group, each family / human kind held out in turn):")
    print(f"{'features':22s} {'trained on':>10s} {'wd':>6s} {'AUC':>6s} {'AI recall@.5':>13s} {'worst human@.5':>15s} "
          f"{'accept*':>8s} {'AI recall@accept':>17s}  (*uncalibrated P)")
    for c in candidates:
        mark = " <- chosen" if c["recipe"] == new else ""
        print(f"{'+'.join(c['recipe']['blocks']):22s} {c['recipe'].get('train', 'groups'):>10s} {c['recipe']['weight_decay']:6g} {c['auc']:6.3f} "
              f"{c['mean_ai_recall']:13.3f} {c['max_human_called_ai']:15.3f} {c['accept']:8.4f} "
              f"{c['mean_ai_recall_at_accept']:17.3f}{mark}")

    r_old, r_new, r_band, r_prev = v_old.rates(0.5), v_new.rates(0.5), op["validation"], op_prev["validation"]
    print(f"\nShare called AI by a head that never saw the group. old = plain probe, all features, P >= 0.5; "
          f"prev = block9 wd 0.1 over every other group, its band (ai at P >= {op_prev['accept']:.4f}); new = "
          f"{'+'.join(new['blocks'])} wd {new['weight_decay']:g} trained on {new.get('train', 'groups')}; "
          f"band: ai at P >= {op['accept']:.4f}, human at <= {op['reject']:.4f}")
    print(f"{'held-out group':30s} {'n':>6s} {'old@.5':>7s} {'prev: ai':>9s} {'unsure':>7s} {'new@.5':>7s} "
          f"{'new: ai':>8s} {'unsure':>7s}")
    for part in ("ai:", "human:"):
        for g in sorted(k for k in r_old if k.startswith(part)):
            print(f"{g:30s} {int(np.sum(groups == g)):6d} {r_old[g]:7.3f} {r_prev[g]['called_ai']:9.3f} "
                  f"{r_prev[g]['unsure']:7.3f} {r_new[g]:7.3f} {r_band[g]['called_ai']:8.3f} {r_band[g]['unsure']:7.3f}")
    ai_g = [g for g in r_old if g.startswith("ai:")]
    hu_g = [g for g in r_old if g.startswith("human:")]
    summary = {
        "old": {"auc": round(v_old.auc(), 4), "mean_ai_recall": _mean(r_old, ai_g), "max_human_called_ai": _max(r_old, hu_g)},
        "prev band": {"auc": round(v_prev.auc(), 4),
                      "mean_ai_recall": _mean({g: r_prev[g]["called_ai"] for g in ai_g}, ai_g),
                      "max_human_called_ai": _max({g: r_prev[g]["called_ai"] for g in hu_g}, hu_g),
                      "max_unsure": round(max(r["unsure"] for r in r_prev.values()), 4)},
        "new@0.5": {"auc": round(v_new.auc(), 4), "mean_ai_recall": _mean(r_new, ai_g), "max_human_called_ai": _max(r_new, hu_g)},
        "new band": {"mean_ai_recall": _mean({g: r_band[g]["called_ai"] for g in ai_g}, ai_g),
                     "max_human_called_ai": _max({g: r_band[g]["called_ai"] for g in hu_g}, hu_g),
                     "max_unsure": round(max(r["unsure"] for r in r_band.values()), 4)},
    }
    for k, s in summary.items():
        print(f"{k:10s} " + ", ".join(f"{a} {b}" for a, b in s.items()))

    if held:
        band_rates = s_new.rates(accept_raw)
        print("\nEach WikiArt style held out alone: share called AI")
        print(f"{'held-out style':36s} {'n':>6s} {'old@.5':>7s} {'new@.5':>7s} {'new: ai':>8s}")
        so, sn = s_old.rates(0.5), s_new.rates(0.5)
        for g in held:
            print(f"{g:36s} {int(np.sum(fine == g)):6d} {so[g]:7.3f} {sn[g]:7.3f} {band_rates[g]:8.3f}")
        summary["styles"] = {"old@0.5_mean": _mean(so, held), "new@0.5_mean": _mean(sn, held),
                             "new_band_mean": _mean(band_rates, held), "new_band_max": _max(band_rates, held)}
        print("styles    " + ", ".join(f"{a} {b}" for a, b in summary["styles"].items()))
    # Seen families, unseen artists: AI images whose `artist` is held out (5 artist-grouped folds).
    art = df["artist"].fillna("").astype(str).to_numpy() if "artist" in df else np.full(len(df), "")
    if np.sum(is_ai & (art != "")) >= 50:
        ua = unseen_artist_recall(Z, is_ai, groups, art, new, accept_raw, args.cap, content)
        print("\nAI images of artists held out (5 artist-grouped folds): share called AI")
        for g, r in ua.items():
            print(f"{g:30s} n {r['n']:5d}  at 0.5 {r['at_0.5']:.3f}  band `ai` {r['band_ai']:.3f}")
        summary["unseen_artists"] = ua
    if trains_on_pairs(new) and content is not None:
        # Stricter for the paired families: each one out of the pairs, trained on the others' pairs only.
        lf = paired_family_out(Z, is_ai, groups, new, accept_raw, content)
        print("\nEach paired family held out of the pairs (trained on the other families' pairs): share called AI")
        for g, r in lf.items():
            print(f"{g:30s} n {r['n']:5d}  at 0.5 {r['at_0.5']:.3f}  band `ai` {r['band_ai']:.3f}")
        summary["paired_family_out"] = lf
    print(f"\n{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        out = {"recipe_chosen": new, "prev_operating_point": op_prev, "candidates": [{k: v for k, v in c.items() if k != "table"} for c in candidates], "operating_point": op, "summary": summary,
               "old_at_0.5": r_old, "new_at_0.5": r_new}
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


def unseen_artist_recall(Z, is_ai, groups, art, recipe, accept, cap, content) -> dict:
    from sklearn.model_selection import GroupKFold

    from artlens.train.origin import fit_head, trains_on_pairs

    rng = np.random.default_rng(0)
    idx = np.nonzero(is_ai & (art != ""))[0]
    z = np.full(len(groups), np.nan)
    for _, te_i in GroupKFold(5).split(idx, groups=art[idx]):
        te = np.zeros(len(groups), bool)
        te[idx[te_i]] = True
        use = np.zeros(len(groups), bool)
        for g in sorted(set(groups[~te])):
            use[rng.permutation(np.nonzero(~te & (groups == g))[0])[:cap]] = True
        if trains_on_pairs(recipe):  # every pair whose artist is not held out
            use = ~te
        w, b = fit_head(Z, is_ai, groups, recipe, use, content)
        z[te] = Z[te] @ w + b
    return {g: _shares(z[m], accept) for g in sorted(set(groups[idx])) for m in [(groups == g) & (art != "") & is_ai]}


def paired_family_out(Z, is_ai, groups, recipe, accept, content) -> dict:
    """Each AI group with rows in the content pairs scored by a pairs head that never saw that group."""
    from artlens.train.origin import content_pairs, fit_head

    out = {}
    for g in sorted(set(groups[is_ai & content_pairs(content, is_ai)])):
        held = groups == g
        head = fit_head(Z, is_ai, groups, recipe, ~held, content)
        if head is not None:  # None: the other families pair with no artist
            out[g] = _shares(Z[held] @ head[0] + head[1], accept)
    return out


def _shares(z: np.ndarray, accept: float) -> dict:
    """Rows, and the shares at P >= 0.5 and at the band's (uncalibrated) accept, of raw scores `z`."""
    z_acc = np.log(accept / (1 - accept)) if accept < 1 else np.inf
    return {"n": int(len(z)), "at_0.5": round(float(np.mean(z >= 0)), 4), "band_ai": round(float(np.mean(z >= z_acc)), 4)}


def _mean(r: dict, keys) -> float:
    return round(float(np.mean([r[k] for k in keys])), 4)


def _max(r: dict, keys) -> float:
    return round(float(np.max([r[k] for k in keys])), 4)


if __name__ == "__main__":
    raise SystemExit(main())
