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

from artlens.evaluate import plots
from artlens.evaluate.metrics import binary_detection, confusion, task_metrics, text_report
from artlens.models.artmodel import ArtModel
from artlens.paths import atomic_write_text

LOW_CONFIDENCE = 0.5
MANIFEST_SUFFIXES = (".parquet", ".csv")


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
    import pandas as pd

    p = Path(data)
    scan_errors = pd.DataFrame(columns=["path", "reason"])
    info: dict[str, Any] = {"source": str(p)}
    if p.is_dir():
        from artlens.data.manifest import scan

        res = scan(p, workers=workers, progress=progress)
        df, scan_errors = res.manifest, res.errors
        info["scanned"] = True
    elif p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:
        if p.suffix.lower() == ".parquet":
            from artlens.data.manifest import ManifestError, read_manifest

            try:
                df = read_manifest(p)
            except ManifestError as exc:
                raise EvaluateError(str(exc)) from None
        else:
            df = pd.read_csv(p)
        if "path" not in df.columns:
            raise EvaluateError(f"{p}: a manifest needs a 'path' column")
        df = df.assign(path=[str(q if Path(q).is_absolute() else p.parent / q) for q in df["path"].astype(str)])
    elif not p.exists():
        raise EvaluateError(f"{p}: no such file or folder")
    else:
        raise EvaluateError(f"{p}: expected a folder of images or a manifest (.parquet or .csv)")

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


def task_truth(df, column: str):
    """The task's true label per row (None where missing); `a+b` columns join their values with `_`."""
    import pandas as pd

    parts = str(column).split("+")
    if not all(c in df.columns for c in parts):
        return pd.Series([None] * len(df), index=df.index, dtype=object)
    cols = [df[c] for c in parts]
    present = np.logical_and.reduce([c.notna().to_numpy() for c in cols])
    joined = ["_".join(str(c.iloc[i]) for c in cols) if present[i] else None for i in range(len(df))]
    return pd.Series(joined, index=df.index, dtype=object)


# ---------------------------------------------------------------------------- embedding
def model_encoder(model: ArtModel):
    from artlens.embed import model_encoder as _model_encoder

    return _model_encoder(model)


def embed_rows(df, encoder, *, store_root=None, batch_size: int = 32, workers: int = 2, progress: bool = True):
    """(features, ok_mask, errors) for the rows, reusing the shared embedding store."""
    from artlens.embed import embed_manifest

    res = embed_manifest(df, encoder, store_root=store_root, batch_size=batch_size, workers=workers, progress=progress)
    return res.vectors, np.asarray(res.ok_mask, dtype=bool), res.errors


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
    feats, ok, errors = embed_rows(df, enc, store_root=store_root, batch_size=batch_size, workers=workers, progress=progress)
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
        res = _evaluate_task(t, df, full[t.name], ok, out, gallery_size, group_by, outlier_rows, files, galleries)
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
        metrics["robustness"] = _robustness(
            model, df, ok, enc, group_by, robustness_max, batch_size, progress, out, files
        )

    csv = None
    if logs is not None or model_dir is not None:
        from artlens.evaluate.curves import find_metrics_csv

        csv = find_metrics_csv(logs if logs is not None else model_dir)
        if csv is None and logs is not None:
            metrics["training_curves"] = {"error": f"{logs}: no metrics.csv found"}
    if csv is not None:
        metrics["training_curves"] = _curves(csv, out, files)

    metrics["files"] = {k: v.name for k, v in files.items()}
    files["metrics"] = out / "metrics.json"
    metrics["files"]["metrics"] = "metrics.json"
    if html:
        files["report"] = out / "report.html"
        metrics["files"]["report"] = "report.html"
    atomic_write_text(files["metrics"], json.dumps(_jsonable(metrics), indent=2, ensure_ascii=False) + "\n")
    if html:
        from artlens.evaluate.report import write_report

        write_report(metrics, out, files["report"])
    return EvalResult(out, metrics, files, errors)


# ---------------------------------------------------------------------------- per task
def _evaluate_task(t, df, proba, ok, out: Path, gallery_size, group_by, outlier_rows, files, galleries) -> dict:
    truth = task_truth(df, t.column)
    has = truth.notna().to_numpy()
    known = truth.isin(t.labels).to_numpy()
    usable = ok & has & known
    unknown_counts = truth[has & ~known].value_counts()
    res: dict[str, Any] = {
        "column": t.column,
        "rows_with_label": int(has.sum()),
        "missing_label": int((~has).sum()),
        "unknown_label": {str(k): int(v) for k, v in unknown_counts.head(20).items()},
        "unknown_label_rows": int((has & ~known).sum()),
        "unreadable_with_label": int((has & ~ok).sum()),
    }
    if not usable.any():
        res["n"] = 0
        res["skipped"] = (
            f"no readable row has a known {t.column!r} label"
            if has.any() else f"no row has a {t.column!r} label"
        )
        return res

    index = {lab: i for i, lab in enumerate(t.labels)}
    rows = np.flatnonzero(usable)
    y = np.array([index[v] for v in truth.to_numpy()[rows]])
    p = proba[rows]
    res.update(task_metrics(y, p, t.labels, threshold=t.threshold))
    pred = p.argmax(axis=1)
    conf = p.max(axis=1)

    atomic_write_text(out / f"classification_report_{t.name}.txt", text_report(y, pred, t.labels))
    files[f"classification_report_{t.name}"] = out / f"classification_report_{t.name}.txt"
    counts, norm = confusion(y, pred, len(t.labels))
    res["confusion_matrix"] = counts.tolist()
    files[f"confusion_{t.name}"] = plots.confusion_matrix_png(
        norm, t.labels, out / f"confusion_{t.name}.png", counts=counts, title=f"{t.name}: confusion matrix (rows sum to 1)"
    )
    files[f"f1_{t.name}"] = plots.per_class_f1_png(res["per_class"], out / f"f1_{t.name}.png", title=f"{t.name}: F1 per class")
    files[f"reliability_{t.name}"] = plots.reliability_png(
        res["reliability"], out / f"reliability_{t.name}.png", ece=res["ece"], title=f"{t.name}: reliability"
    )

    paths = df["path"].astype(str).to_numpy()[rows]
    wrong = pred != y
    low = conf < LOW_CONFIDENCE
    for i in np.flatnonzero(wrong | low):
        reason = "misclassified" + (", low confidence" if low[i] else "") if wrong[i] else "low confidence"
        outlier_rows.append({
            "task": t.name, "path": paths[i], "true": t.labels[y[i]], "predicted": t.labels[pred[i]],
            "confidence": round(float(conf[i]), 4), "true_prob": round(float(p[i, y[i]]), 4), "reason": reason,
        })

    def items(sel: np.ndarray, ok_: bool) -> list[dict]:
        order = sel[np.argsort(-conf[sel], kind="stable")][:gallery_size]
        return [
            {"path": paths[i], "ok": ok_,
             "caption": f"true: {plots.display_label(t.labels[y[i]])}\n"
                        f"pred: {plots.display_label(t.labels[pred[i]])} ({conf[i]:.0%})"}
            for i in order
        ]

    g = {}
    for kind, sel, good in (("mistakes", np.flatnonzero(wrong), False), ("successes", np.flatnonzero(~wrong), True)):
        title = f"{t.name}: most confident {'mistakes' if kind == 'mistakes' else 'correct answers'}"
        png = plots.gallery_png(items(sel, good), out / f"gallery_{kind}_{t.name}.png", title=title)
        if png is not None:
            g[kind] = files[f"gallery_{kind}_{t.name}"] = png
    galleries[t.name] = g

    if group_by:
        res["by_group"] = _groups(t, df, truth, usable, proba, group_by)
    return res


def _groups(t, df, truth, usable, proba, column: str) -> dict:
    """Per value of `column`: the task's numbers on those rows. For the human-vs-AI task, each
    group's AI rows are scored against all human rows (human work has no generator)."""
    from sklearn.metrics import f1_score

    if column not in df.columns:
        return {"column": column, "error": f"the manifest has no column {column!r}"}
    values = df[column]
    out: dict[str, Any] = {"column": column, "groups": {}}
    if t.column == "origin" and "ai" in t.labels:
        j = t.labels.index("ai")
        is_ai = (truth == "ai").to_numpy()
        human = usable & ~is_ai
        for g in sorted(values[usable & is_ai].dropna().astype(str).unique()):
            rows = human | (usable & is_ai & (values.astype(str) == g).to_numpy())
            out["groups"][g] = binary_detection(proba[rows, j], is_ai[rows])
        return out
    index = {lab: i for i, lab in enumerate(t.labels)}
    for g in sorted(values[usable].dropna().astype(str).unique()):
        rows = usable & (values.astype(str) == g).to_numpy()
        y = np.array([index[v] for v in truth.to_numpy()[rows]])
        pred = proba[rows].argmax(axis=1)
        out["groups"][g] = {
            "n": int(rows.sum()),
            "accuracy": round(float((pred == y).mean()), 6),
            "macro_f1": round(float(f1_score(y, pred, average="macro", zero_division=0)), 6),
        }
    return out


# ---------------------------------------------------------------------------- robustness
def _robustness(model, df, ok, enc, group_by, max_rows, batch_size, progress, out: Path, files) -> dict:
    from artlens.evaluate import robustness as rb

    try:
        task_name, p_ai = rb.origin_scorer(model)
    except ValueError as exc:
        return {"error": str(exc)}
    if "origin" not in df.columns:
        return {"error": "the data has no 'origin' column (human / ai)"}
    origin = df["origin"].astype("string").str.lower()
    sel = df[ok & origin.isin(["human", "ai"]).to_numpy()]
    if sel.empty or sel["origin"].str.lower().nunique() < 2:
        return {"error": "robustness needs readable rows of both origins (human and ai)"}
    sample = rb.sample_rows(sel, max_rows)
    rows = sample.index.to_numpy()
    # "original" is embedded again in the same pass: an encoder whose output depends on the batch
    # (dynamically quantised ONNX) would otherwise differ from the transformed runs for that reason.
    conditions = dict(rb.CONDITIONS)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(TextColumn("robustness"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                   console=Console(stderr=True), disable=not progress, transient=True)
    with bar:
        job = bar.add_task("robustness", total=len(rows))
        cond_feats, cond_ok, reasons = rb.embed_conditions(
            sample["path"].astype(str).tolist(), enc, conditions, batch_size=min(batch_size, 16),
            on_progress=lambda n: bar.advance(job, n),
        )
    keep = cond_ok
    scores = {}
    for c in conditions:
        scores[c] = p_ai(model.predict_proba(cond_feats[c][keep]))
    is_ai = rb.is_ai_labels(sample["origin"].to_numpy()[keep])
    groups = None
    if group_by and group_by in sample.columns:
        groups = sample[group_by].to_numpy(dtype=object)[keep]
    table = rb.detection_table(scores, is_ai, groups)
    res = {
        "task": task_name,
        "rows": int(keep.sum()),
        "rows_available": int(len(sel)),
        "sampled": bool(len(sample) < len(sel)),
        "failed": [{"path": str(sample["path"].iloc[i]), "reason": r} for i, r in reasons.items()],
        "group_by": group_by if groups is not None else None,
        **table,
    }
    files["robustness"] = plots.robustness_png(table["conditions"], out / "robustness.png")
    return res


# ---------------------------------------------------------------------------- curves
def _curves(csv: Path, out: Path, files) -> dict:
    from artlens.evaluate.curves import CurvesError, curve_groups, read_epoch_metrics, summarise

    try:
        per_epoch = read_epoch_metrics(csv)
    except CurvesError as exc:
        return {"error": str(exc)}
    groups = curve_groups(per_epoch)
    res = {"source": str(csv), **summarise(per_epoch)}
    if any(groups.values()):
        files["training_curves"] = plots.curves_png(per_epoch, groups, out / "training_curves.png")
    return res


# ---------------------------------------------------------------------------- helpers
def _version() -> str:
    from artlens import __version__

    return __version__


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return None if np.isnan(obj) else float(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is not None and not isinstance(obj, (str, int, bool)):
        try:
            import pandas as pd

            if pd.isna(obj):
                return None
        except (TypeError, ValueError):
            pass
        return str(obj)
    return obj
