"""Save a trained model as an ArtModel directory, with the run's metrics, recipe and data.

`out/` holds `config.json` + `model.safetensors` (the ArtModel: `artlens predict --model out`),
`metrics.json` (everything measured, per class and per trial), `recipe.yaml` (the resolved
recipe) and `manifest.parquet` (the rows trained on, with their split).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from artlens.paths import jsonable
from artlens.train.calibrate import calibrate_task, classification_metrics

log = logging.getLogger(__name__)

_SUMMARY_KEYS = ("n", "accuracy", "macro_f1", "nll", "ece", "ece_uncalibrated", "coverage", "accuracy_accepted")


def backbone_info(spec, recipe: dict, feature_dim: int | None = None) -> dict:
    pretrained = bool(recipe["backbone"].get("pretrained", True))
    return {
        "name": recipe["backbone"]["name"],
        "weights_id": (getattr(spec, "weights_id", None) if pretrained else "random-init"),
        "feature_dim": int(feature_dim or spec.feature_dim),
    }


def spec_preprocessing(spec) -> dict:
    return spec.preprocessing.to_config()


def calibrate_and_score(tasks: list[dict], logits: dict[str, dict[str, np.ndarray]], ys: dict[str, np.ndarray],
                        calibration: dict) -> tuple[list, dict]:
    """TaskConfigs with temperature/threshold from the validation logits, and metrics per split.

    `logits[split][task]`: (N, C); `ys[split]`: (N, n_tasks) targets in the order of `tasks`.
    """
    from artlens.models.artmodel import TaskConfig

    cfgs, metrics = [], {}
    for i, t in enumerate(tasks):
        name = t["name"]
        if "val" in logits:
            temperature, threshold = calibrate_task(logits["val"][name], ys["val"][:, i], calibration)
        else:
            temperature, threshold = 1.0, 0.0
        for part in logits:
            m = classification_metrics(logits[part][name], ys[part][:, i], t["labels"], temperature, threshold)
            if part == "val" and m.get("n"):
                raw = classification_metrics(logits[part][name], ys[part][:, i], t["labels"], 1.0, 0.0)
                m["ece_uncalibrated"], m["nll_uncalibrated"] = raw["ece"], raw["nll"]
            metrics.setdefault(part, {})[name] = m
        cfgs.append(TaskConfig(name=name, labels=list(t["labels"]), column=t["column"], hidden=list(t.get("hidden") or []),
                               dropout=float(t.get("dropout") or 0.0), temperature=temperature, threshold=threshold))
        metrics.setdefault("selected", {})[name] = {"temperature": temperature, "threshold": threshold}
    return cfgs, metrics


def compact(metrics: dict) -> dict:
    """The numbers that go into config.json (no per-class tables, no trials)."""
    out: dict[str, Any] = {}
    for part, tasks in metrics.items():
        if part in ("train", "val", "test"):
            out[part] = {k: {m: v[m] for m in _SUMMARY_KEYS if m in v} for k, v in tasks.items()}
        elif part == "selected":
            out[part] = tasks
        elif part == "origin":  # trained by groups: its held-out numbers and band
            out[part] = {k: tasks[k] for k in ("recipe", "auc_out_of_group", "operating_point", "family") if k in tasks}
    return out


def save_run(recipe: dict, task_cfgs: list, heads, metrics: dict, out: Path, *, mode: str, spec,
             preprocessing: dict | None = None, backbone_state: dict | None = None, prepared=None,
             extra: dict | None = None, feature_dim: int | None = None) -> dict:
    from artlens.models.artmodel import ArtModel
    from artlens.paths import atomic_write_text
    from artlens.train.config import dump_recipe

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(extra or {})
    if prepared is not None:
        info["rows"] = prepared.counts()
        info["notes"] = list(prepared.notes)
        info["unreadable_files"] = int(len(prepared.errors))
    summary = compact(metrics)
    summary["run"] = jsonable(info)
    config = {
        "mode": mode,
        "backbone": backbone_info(spec, recipe, feature_dim),
        "preprocessing": preprocessing or spec_preprocessing(spec),
        "tasks": task_cfgs,
        "recipe": jsonable(recipe),
        "metrics": jsonable(summary),
    }
    model = ArtModel.from_torch(config, heads, backbone_state=backbone_state)
    model.save(out)
    atomic_write_text(out / "metrics.json", json.dumps(jsonable({**metrics, "run": info}), indent=2) + "\n")
    atomic_write_text(out / "recipe.yaml", dump_recipe(jsonable(recipe)))
    if prepared is not None:
        try:
            from artlens.data.manifest import write_manifest

            write_manifest(prepared.df, out / "manifest.parquet")
        except Exception as exc:  # a manifest without hashes (plain paths) is still trainable
            log.warning("manifest.parquet not written: %s", exc)
            prepared.df.to_parquet(out / "manifest.parquet", index=False)
    return {"model_dir": str(out), "metrics": metrics, "config": model.config, "mode": mode}


def export_model(recipe: dict, tasks: list[dict], heads, logits, ys, out: Path, *, mode: str, spec,
                 preprocessing=None, backbone_state=None, prepared=None, extra=None) -> dict:
    """Calibrate on validation logits, score val/test, save (fine-tune mode)."""
    task_cfgs, metrics = calibrate_and_score(tasks, logits, ys, recipe["calibration"])
    return save_run(recipe, task_cfgs, heads, metrics, out, mode=mode, spec=spec, preprocessing=preprocessing,
                    backbone_state=backbone_state, prepared=prepared, extra=extra)


def origin_table(origin: dict):
    """A Rich table of origin's held-out groups (artlens.train.origin), or None."""
    from rich.table import Table

    op = (origin or {}).get("operating_point")
    if not op:
        return None
    table = Table(title=f"origin, each group held out in turn: ai at P >= {op['accept']:.4f}, "
                        f"human at <= {op['reject']:.4f} (AUC {origin.get('auc_out_of_group', 0):.3f})")
    for col in ("held-out group", "n", "called AI", "unsure"):
        table.add_column(col, justify="left" if col == "held-out group" else "right")
    for g, r in op["validation"].items():
        table.add_row(g, str(r["n"]), f"{r['called_ai']:.3f}", f"{r['unsure']:.3f}")
    return table


def summary_table(result: dict, title: str = "artlens train"):
    """A Rich table: one row per task and split."""
    from rich.table import Table

    table = Table(title=title)
    for col in ("task", "split", "n", "accuracy", "macro-F1", "ECE", "T", "threshold", "coverage"):
        table.add_column(col, justify="left" if col in ("task", "split") else "right")
    metrics = result.get("metrics", {})
    selected = metrics.get("selected", {})
    names = list(selected) or sorted({k for p in ("val", "test") for k in metrics.get(p, {})})
    for name in names:
        sel = selected.get(name, {})
        for part in ("train", "val", "test"):
            m = metrics.get(part, {}).get(name)
            if not m or not m.get("n"):
                continue
            table.add_row(name, part, str(m["n"]), f"{m['accuracy']:.3f}", f"{m['macro_f1']:.3f}", f"{m['ece']:.3f}",
                          f"{sel.get('temperature', 1.0):.2f}", f"{sel.get('threshold', 0.0):.2f}",
                          f"{m.get('coverage', 1.0):.2f}")
    return table
