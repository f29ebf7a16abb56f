#!/usr/bin/env python
"""Does the shipped origin answer hold when the same picture comes in another encoding or size?

    .venv/bin/python benchmarks/origin_robustness.py [--per-group 25] [--model DIR] [--json out.json]

`--per-group` images of every AI family and human kind of the default recipe's data (seeded draw)
are written again as JPEG quality 30 and 95, as a 4x bicubic upscale saved as PNG (a large,
lossless file like a generator's own output), at half size, and blurred (Gaussian, radius 1), then
predicted by the model as `artlens predict` does. Printed per variant: the mean and mean absolute
change of P(ai) against the original file, the share of answers that change, and per group the
mean P(ai) and the share called `ai`. A detector that keyed on the JPEG encoding or the size of
`../shared`'s images (all 224 px JPEG quality 75) would move here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def variants(im, stem: str, out: Path) -> dict[str, Path]:
    from PIL import Image, ImageFilter

    w, h = im.size
    paths = {k: out / f"{stem}_{k}.{ext}" for k, ext in
             (("jpeg30", "jpg"), ("jpeg95", "jpg"), ("png_4x", "png"), ("half", "jpg"), ("blur", "jpg"))}
    im.save(paths["jpeg30"], quality=30)
    im.save(paths["jpeg95"], quality=95)
    im.resize((w * 4, h * 4), Image.BICUBIC).save(paths["png_4x"])
    im.resize((max(1, w // 2), max(1, h // 2)), Image.BICUBIC).save(paths["half"], quality=90)
    im.filter(ImageFilter.GaussianBlur(1.0)).save(paths["blur"], quality=90)
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=REPO / "configs/default-model.yaml")
    ap.add_argument("--model", type=Path, help="model directory (default: the shipped model)")
    ap.add_argument("--per-group", type=int, default=25)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from PIL import Image

    from artlens.predict import Predictor
    from artlens.train.config import load_recipe
    from artlens.train.data import prepare
    from artlens.train.origin import origin_groups

    t0 = time.perf_counter()
    df = prepare(load_recipe(args.recipe), progress=False).df
    groups = origin_groups(df)
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.permutation(np.nonzero(groups == g)[0])[:args.per_group]
                           for g in sorted({g for g in groups if g is not None})])
    groups = groups[rows].astype(str)
    originals = [str(p) for p in df["path"].to_numpy()[rows]]
    predictor = Predictor(args.model) if args.model else Predictor()

    def answers(paths):
        res = predictor.predict_paths([str(p) for p in paths])
        p_ai = np.array([next(t["prob"] for t in r["tasks"]["origin"]["top"] if t["label"] == "ai") for r in res])
        return p_ai, np.array([r["tasks"]["origin"]["label"] for r in res])

    with tempfile.TemporaryDirectory() as tmp:
        made: dict[str, list[Path]] = {}
        for i, path in enumerate(originals):
            with Image.open(path) as im:
                for k, p in variants(im.convert("RGB"), f"{i:05d}", Path(tmp)).items():
                    made.setdefault(k, []).append(p)
        results = {"original": answers(originals)}
        for k, paths in made.items():
            results[k] = answers(paths)

    p0, a0 = results["original"]
    names = sorted(set(groups))
    print(f"{len(originals)} images ({args.per_group} per group), model {args.model or 'shipped'}; "
          "per group: mean P(ai) / share called `ai`")
    print(f"{'variant':9s} {'mean dP':>8s} {'mean |dP|':>9s} {'answer changed':>15s}  " + " ".join(f"{g.split(':')[1][:10]:>10s}" for g in names))
    summary = {}
    for k, (p, a) in results.items():
        d = p - p0
        summary[k] = {"mean_dP": round(float(d.mean()), 4), "mean_abs_dP": round(float(np.abs(d).mean()), 4),
                      "answer_changed": round(float(np.mean(a != a0)), 4),
                      "groups": {g: {"mean_p_ai": round(float(p[groups == g].mean()), 4),
                                     "called_ai": round(float(np.mean(a[groups == g] == "ai")), 4)} for g in names}}
        print(f"{k:9s} {d.mean():+8.3f} {np.abs(d).mean():9.3f} {np.mean(a != a0):15.3f}  "
              + " ".join(f"{p[groups == g].mean():.2f}/{np.mean(a[groups == g] == 'ai'):.2f}".rjust(10) for g in names))
    print(f"{time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
