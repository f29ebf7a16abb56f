"""Accuracy side by side: the seed projects' recipe against artlens's default, on one split.

Data: ../shared/datasets/wikiart-styles (11 styles, human) + ai-sd-artists (AI), one manifest, split
once (70/15/15, duplicates on one side, stratified by style) by `artlens.train.data.prepare`; a
balanced subset of it (`--per-class` paintings per style, `--ai` AI images) keeps the CPU run under
30 minutes. Both methods train on the same train/val rows and are scored on the same test rows, by
`artlens.evaluate` (full reports are written under --out).

- seed recipe: an ImageNet CNN (EfficientNet-Lite0 from its offline weight package) fine-tuned end
  to end with the seed projects' choices: early layers frozen (their ResNet18 froze the stem and the
  first two stages: here the first half of the layers), random-resized-crop/flip/rotation
  augmentation, Adam 3e-4 with label smoothing 0.1, early stopping. Same heads: style + origin.
- artlens default: CLIP ViT-B/16 embeddings (shared embedding store) + probe heads, the default
  recipe's search over linear/MLP heads on the validation rows, temperature calibration.

Columns: macro-F1, accuracy and balanced accuracy on the test rows (style: the 11 styles; origin:
human vs AI), training time (probe: embedding the train+val images + fitting heads; images already
in the embedding store are not embedded again, so the time says how many were computed), and
prediction images/s from files through `Predictor` (decode + preprocess + network + heads).

    .venv/bin/python benchmarks/accuracy.py --quick          # smoke run, a few minutes
    .venv/bin/python benchmarks/accuracy.py                  # the table (< 30 min on 2 CPU cores)
    .venv/bin/python benchmarks/accuracy.py --json acc.json --out runs/bench-accuracy
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "datasets"
TASKS = [{"name": "style", "column": "style"}, {"name": "origin", "column": "origin"}]


def sources() -> list[dict]:
    return [
        {"path": str(DATA / "wikiart-styles"), "labels": {"origin": "human"}},
        {"path": str(DATA / "ai-sd-artists"), "labels": {"origin": "ai"}},
    ]


def probe_recipe(seed: int) -> dict:
    """artlens's default recipe (train/config.py DEFAULTS) on CLIP, with our two tasks."""
    from artlens.train.config import load_recipe

    return load_recipe(None, {"name": "bench-clip-probe", "mode": "probe", "seed": seed,
                              "backbone.name": "clip-vit-b16", "tasks": TASKS, "data.sources": sources(),
                              "probe.threads": 2})


def seed_recipe(seed: int, backbone: str, epochs: int, quick: bool) -> dict:
    from artlens.train.config import load_recipe

    return load_recipe(None, {
        "name": f"bench-seed-{backbone}", "mode": "finetune", "seed": seed, "backbone.name": backbone,
        "tasks": TASKS, "data.sources": sources(),
        "finetune.epochs": epochs, "finetune.batch_size": 32, "finetune.num_workers": 2,
        "finetune.augment": "standard",
        "finetune.freeze.strategy": "top", "finetune.freeze.trainable_fraction": 0.5,
        "finetune.optimizer.name": "adam", "finetune.optimizer.lr": 3e-4, "finetune.optimizer.weight_decay": 0.0,
        "finetune.scheduler.name": "none",
        "finetune.loss.name": "ce", "finetune.loss.label_smoothing": 0.1,
        "finetune.early_stopping.patience": 3,
        "finetune.loggers": ["csv"], "finetune.progress": "none",
        "finetune.limit_val_batches": 2 if quick else None,
    })


def pick_subset(prepared, per_class: int, n_ai: int, seed: int):
    """Balanced rows of the prepared (already split) data: `per_class` per style, `n_ai` AI images."""
    from artlens.train.probe import subset

    df = prepared.df
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(df), bool)
    style = df["style"]
    for s in sorted(style.dropna().unique()):
        idx = np.flatnonzero((style == s).to_numpy() & (df["origin"] == "human").to_numpy())
        keep[rng.permutation(idx)[:per_class]] = True
    ai = np.flatnonzero((df["origin"] == "ai").to_numpy())
    keep[rng.permutation(ai)[:n_ai]] = True
    return subset(prepared, keep)


def test_scores(model_dir: Path, df, out: Path, store_root) -> dict:
    """macro-F1 / accuracy / balanced accuracy per task on the test rows, via artlens.evaluate."""
    from artlens.evaluate.pipeline import evaluate

    res = evaluate(model_dir, df, out, split="test", store_root=store_root, progress=False)
    return {t: {k: m.get(k) for k in ("n", "macro_f1", "accuracy", "balanced_accuracy", "roc_auc")}
            for t, m in res.metrics["tasks"].items()}


def images_per_s(model_dir: Path, paths: list[str]) -> float:
    """End-to-end prediction speed from files (nothing cached), after one warm-up batch."""
    from artlens.predict import Predictor

    pred = Predictor(model_dir)
    pred.predict_paths(paths[:4], batch_size=4)
    t = time.perf_counter()
    rows = pred.predict_paths(paths, batch_size=32)
    dt = time.perf_counter() - t
    ok = sum(1 for r in rows if not r["error"])
    return ok / dt if dt > 0 else float("nan")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 per style, 24 AI, 1 epoch")
    ap.add_argument("--per-class", type=int, default=100, help="paintings per style (all splits together)")
    ap.add_argument("--ai", type=int, default=300, help="AI images")
    ap.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs (seed recipe)")
    ap.add_argument("--backbone", default="efficientnet-lite0", help="seed CNN: efficientnet-lite0 or mobilenet-v2")
    ap.add_argument("--speed-images", type=int, default=96, help="test images timed for prediction images/s")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="runs and reports (default: a cache folder)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.quick:
        args.per_class, args.ai, args.epochs, args.speed_images = 8, 24, 1, 16

    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    from artlens.paths import cache_dir
    from artlens.train.data import prepare
    from artlens.train.finetune import run_finetune
    from artlens.train.probe import run_probe

    out = args.out or cache_dir() / "benchmarks" / ("accuracy-quick" if args.quick else "accuracy")
    if out.exists():
        shutil.rmtree(out)  # fine-tuning refuses to overwrite a run
    out.mkdir(parents=True)
    t_all = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - t_all:6.0f}s] {msg}", file=sys.stderr, flush=True)

    recipe_p = probe_recipe(args.seed)
    say("reading and splitting the data (manifests are cached after the first scan)")
    prepared = prepare(recipe_p, progress=sys.stderr.isatty())
    sub = pick_subset(prepared, args.per_class, args.ai, args.seed)
    counts = sub.counts()
    say(f"subset: {len(sub.df)} images; rows per split {counts}")
    manifest_df = sub.df

    results = {}
    # ---- artlens default: CLIP embeddings + probe heads
    say("artlens default: embedding (shared store) + probe heads")
    t = time.perf_counter()
    res_p = run_probe(recipe_p, out / "clip-probe", prepared=sub, show_progress=sys.stderr.isatty())
    train_p = time.perf_counter() - t
    emb = res_p["config"]["metrics"].get("run", {}).get("embedding", {})
    say(f"probe trained in {train_p:.0f}s (embedded {emb.get('computed', '?')}, reused {emb.get('reused', '?')})")
    results["clip-probe"] = {"train_s": train_p, "embedded": emb.get("computed"), "reused": emb.get("reused"),
                             "model_dir": res_p["model_dir"]}

    # ---- seed recipe: ImageNet CNN fine-tuned
    say(f"seed recipe: fine-tuning {args.backbone} for {args.epochs} epoch(s)")
    recipe_f = seed_recipe(args.seed, args.backbone, args.epochs, args.quick)
    t = time.perf_counter()
    res_f = run_finetune(recipe_f, out / "seed-finetune", prepared=sub)
    train_f = time.perf_counter() - t
    say(f"fine-tuned in {train_f:.0f}s")
    results["seed-finetune"] = {"train_s": train_f, "model_dir": res_f["model_dir"]}

    # ---- the same test rows, scored the same way
    test_paths = manifest_df.loc[manifest_df["split"] == "test", "path"].astype(str).tolist()
    rng = np.random.default_rng(args.seed)
    speed_paths = [test_paths[i] for i in rng.permutation(len(test_paths))[: args.speed_images]]
    for name, store in (("clip-probe", None), ("seed-finetune", out / "store-finetuned")):
        r = results[name]
        say(f"{name}: scoring the test rows")
        r["test"] = test_scores(Path(r["model_dir"]), manifest_df, out / f"eval-{name}", store)
        say(f"{name}: prediction speed on {len(speed_paths)} images")
        r["images_per_s"] = images_per_s(Path(r["model_dir"]), speed_paths)

    total = time.perf_counter() - t_all
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()} (shared with other jobs)",
        "quick": args.quick, "per_class": args.per_class, "ai": args.ai, "epochs": args.epochs,
        "backbone": args.backbone, "rows": counts, "images": int(len(manifest_df)), "total_s": round(total, 1),
    }
    print_table(results, info)
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": results}, indent=2, default=str) + "\n")
    return 0


def print_table(results: dict, info: dict) -> None:
    def f(v, pct=False):
        return "-" if v is None else (f"{100 * v:.1f}" if pct else f"{v:.3f}")

    r = info["rows"]
    print(f"\naccuracy benchmark, {info['date']}, {info['machine']}{' [QUICK]' if info['quick'] else ''}")
    print(f"data: {info['images']} images = {info['per_class']} per WikiArt style (11) + {info['ai']} AI "
          f"(ai-sd-artists); style rows train/val/test {r['style']['train']}/{r['style']['val']}/{r['style']['test']}, "
          f"origin {r['origin']['train']}/{r['origin']['val']}/{r['origin']['test']}")
    names = {"seed-finetune": f"seed: {info['backbone']} fine-tuned ({info['epochs']} ep, subset)",
             "clip-probe": "artlens: CLIP ViT-B/16 + probe heads"}
    head = (f"{'method':<52} {'task':<7} {'macro-F1':>8} {'acc %':>6} {'bal.acc %':>9} {'AUC':>6} "
            f"{'train s':>8} {'pred img/s':>10}")
    print(head)
    print("-" * len(head))
    for key in ("seed-finetune", "clip-probe"):
        res = results[key]
        for i, task in enumerate(("style", "origin")):
            m = res["test"].get(task, {})
            train = f"{res['train_s']:.0f}" if i == 0 else ""
            speed = f"{res['images_per_s']:.1f}" if i == 0 else ""
            print(f"{names[key] if i == 0 else '':<52} {task:<7} {f(m.get('macro_f1')):>8} {f(m.get('accuracy'), True):>6} "
                  f"{f(m.get('balanced_accuracy'), True):>9} {f(m.get('roc_auc')):>6} {train:>8} {speed:>10}")
    p = results["clip-probe"]
    d = results["clip-probe"]["test"]["style"]["macro_f1"] - results["seed-finetune"]["test"]["style"]["macro_f1"]
    print(f"\nstyle macro-F1, artlens minus seed: {100 * d:+.1f} points. Probe training time includes embedding "
          f"{p.get('embedded')} images (another {p.get('reused')} came from the embedding store). "
          f"Total wall time {info['total_s']:.0f}s; timings are disturbed by other jobs on the machine.")


if __name__ == "__main__":
    raise SystemExit(main())
