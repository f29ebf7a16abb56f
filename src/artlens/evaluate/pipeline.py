"""`evaluate(model, data, out_dir)`: score a model on a labelled manifest and write the report folder.

Embeddings come from the shared content-hash store (`artlens.embed.embed_manifest`), so evaluating
images that were already embedded for the model's backbone costs only the heads. Rows without a
task's label are left out of that task and counted; unreadable images are listed, never fatal.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from artlens.data.rows import read_rows
from artlens.embed import embed_manifest, model_encoder
from artlens.evaluate.curves import curves_section, find_metrics_csv
from artlens.evaluate.robustness import robustness_section
from artlens.evaluate.tasks import evaluate_task
from artlens.models.artmodel import ArtModel
from artlens.paths import atomic_write_text, jsonable



class EvaluateError(ValueError):
    """The evaluation cannot run (bad data, no labelled rows, model and data do not match)."""


@dataclass
class EvalResult:
    out_dir: Path
    metrics: dict
    files: dict[str, Path] = field(default_factory=dict)
    errors: Any = None  # DataFrame path, reason: unreadable images

    @property
    def n_failed(self) -> int:
        return 0 if self.errors is None else len(self.errors)


# ---------------------------------------------------------------------------- data
def load_rows(data: str | os.PathLike, split: str | None = "test", *, progress: bool = False, workers: int = 2):
    """Manifest rows to evaluate: `(df, info, scan_errors)`.

    `data` is a manifest (.parquet/.csv) or a folder (scanned with its layout detected). Rows of
    `split` are kept when the manifest has a split column; `split=None` or `"all"` keeps every row.
    """
    p = Path(data)
    info: dict[str, Any] = {"source": str(p)}
    try:
        df, scan_errors = read_rows(p, progress=progress, workers=workers)
    except ValueError as exc:  # a bad manifest, a missing path: one clear line
        raise EvaluateError(str(exc)) from None
    if p.is_dir():
        info["scanned"] = True
    info["rows_total"] = int(len(df))
    if split and split != "all" and "split" in df.columns and df["split"].notna().any():
        splits = sorted(str(s) for s in df["split"].dropna().unique())
        if split not in splits:
            raise EvaluateError(f"{p}: no rows with split {split!r} (the manifest has {', '.join(splits)})")
        df = df[df["split"] == split]
        info["split"] = split
    else:
        info["split"] = None
        if split and split != "all":
            info["note"] = f"no split column: all {len(df)} rows evaluated"
    if df.empty:
        raise EvaluateError(f"{p}: no images to evaluate")
    return df.reset_index(drop=True), info, scan_errors


# ---------------------------------------------------------------------------- main entry
def evaluate(
    model: str | os.PathLike | ArtModel,
    data,
    out_dir: str | os.PathLike,
    *,
    split: str | None = "test",
    robustness: bool = False,
    group_by: str | None = None,
    logs: str | os.PathLike | None = None,
    encoder=None,
    store_root=None,
    robustness_max: int | None = 600,
    gallery_size: int = 12,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    html: bool = True,
) -> EvalResult:
    """Evaluate `model` on `data` (manifest path, folder, or DataFrame) and write everything to `out_dir`.

    `encoder` overrides the model's backbone encoder (tests); `logs` points at a Lightning
    `metrics.csv` or a folder holding one (default: searched under the model directory).
    """
    import pandas as pd

    model_dir = None if isinstance(model, ArtModel) else Path(model)
    model = model if isinstance(model, ArtModel) else ArtModel.load(model)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    if isinstance(data, pd.DataFrame):
        df, info, scan_errors = data.reset_index(drop=True), {"source": "<DataFrame>", "split": None}, None
        if split and split != "all" and "split" in df.columns and df["split"].notna().any():
            df, info["split"] = df[df["split"] == split].reset_index(drop=True), split
        info["rows_total"] = len(data)
    else:
        df, info, scan_errors = load_rows(data, split, progress=progress, workers=workers)

    enc = encoder if encoder is not None else model_encoder(model)
    if int(enc.dim) != model.feature_dim:
        raise EvaluateError(
            f"the encoder gives {enc.dim}-d features, the model's heads expect {model.feature_dim} "
            f"(backbone {model.backbone_name})"
        )
    res = embed_manifest(df, enc, store_root=store_root, batch_size=batch_size, workers=workers, progress=progress)
    feats, ok, errors = res.vectors, np.asarray(res.ok_mask, dtype=bool), res.errors
    if scan_errors is not None and len(scan_errors):
        errors = pd.concat([scan_errors[["path", "reason"]], errors], ignore_index=True)
    proba = model.predict_proba(np.nan_to_num(feats[ok])) if ok.any() else {t.name: None for t in model.tasks}
    full = {}
    for t in model.tasks:  # back to one row per manifest row (NaN where unreadable)
        arr = np.full((len(df), len(t.labels)), np.nan)
        if ok.any():
            arr[ok] = proba[t.name]
        full[t.name] = arr

    files: dict[str, Path] = {}
    metrics: dict[str, Any] = {
        "artlens_version": _version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": {
            "path": str(model_dir) if model_dir else None,
            "backbone": model.backbone_name,
            "mode": model.mode,
            "tasks": model.task_names,
            "backbone_id": getattr(enc, "backbone_id", None),
        },
        "warnings": [],
        "data": {**info, "rows": int(len(df)), "embedded": int(ok.sum()), "unreadable": int((~ok).sum())},
        "tasks": {},
    }
    # A probe's heads only fit the embeddings they were trained on: say so when the encoder changed.
    trained_id = model.config.get("backbone", {}).get("backbone_id")
    if trained_id and getattr(enc, "backbone_id", None) and trained_id != enc.backbone_id:
        metrics["warnings"].append(
            f"the model was trained on embeddings {trained_id}, this evaluation used {enc.backbone_id} "
            "(the encoder changed since training): scores may be off; retrain the heads"
        )
    outlier_rows: list[dict] = []
    galleries: dict[str, dict[str, Path]] = {}
    for t in model.tasks:
        res = evaluate_task(t, df, full[t.name], ok, out, gallery_size, group_by, outlier_rows, files, galleries)
        metrics["tasks"][t.name] = res
    metrics["galleries"] = {t: {k: v.name for k, v in g.items()} for t, g in galleries.items()}

    if not any(m.get("n", 0) for m in metrics["tasks"].values()):
        cols = ", ".join(sorted({str(t.column) for t in model.tasks}))
        raise EvaluateError(f"no evaluated rows: none of the readable images has a label for the model's tasks ({cols})")

    outliers = pd.DataFrame(
        outlier_rows, columns=["task", "path", "true", "predicted", "confidence", "true_prob", "reason"]
    )
    files["outliers"] = out / "outliers.csv"
    atomic_write_text(files["outliers"], outliers.to_csv(index=False))
    metrics["outliers"] = {"file": "outliers.csv", "rows": int(len(outliers))}

    if errors is not None and len(errors):
        files["unreadable"] = out / "unreadable.csv"
        atomic_write_text(files["unreadable"], errors.to_csv(index=False))
    metrics["unreadable"] = [] if errors is None else errors.to_dict(orient="records")

    if robustness:
        metrics["robustness"] = robustness_section(
            model, df, ok, enc, group_by, robustness_max, batch_size, progress, out, files
        )

    csv = None
    if logs is not None or model_dir is not None:
        csv = find_metrics_csv(logs if logs is not None else model_dir)
        if csv is None and logs is not None:
            metrics["training_curves"] = {"error": f"{logs}: no metrics.csv found"}
    if csv is not None:
        metrics["training_curves"] = curves_section(csv, out, files)

    metrics["files"] = {k: v.name for k, v in files.items()}
    files["metrics"] = out / "metrics.json"
    metrics["files"]["metrics"] = "metrics.json"
    if html:
        files["report"] = out / "report.html"
        metrics["files"]["report"] = "report.html"
    atomic_write_text(files["metrics"], json.dumps(jsonable(metrics), indent=2, ensure_ascii=False) + "\n")
    if html:
        from artlens.evaluate.report import write_report

        write_report(metrics, out, files["report"])
    return EvalResult(out, metrics, files, errors)


# ---------------------------------------------------------------------------- helpers
def _version() -> str:
    from artlens import __version__

    return __version__
