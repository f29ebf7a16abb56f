"""Training curves from Lightning's CSVLogger `metrics.csv` (one row per logging call, NaN elsewhere)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from artlens.evaluate import plots


class CurvesError(ValueError):
    """No usable training log, with the reason."""


def find_metrics_csv(path: str | os.PathLike) -> Path | None:
    """`path` itself if it is a CSV, else the newest `metrics.csv` below the folder (None when none)."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        return None
    from artlens.data.walk import walk_files

    found = [q for q in walk_files(p, keep=lambda name: name == "metrics.csv") if q.is_file()]
    return max(found, key=lambda q: (q.stat().st_mtime, str(q))) if found else None


def read_epoch_metrics(csv_path: str | os.PathLike):
    """One row per epoch: every logged metric averaged over the epoch's logging calls.

    `*_step` columns are dropped when Lightning also logged the `*_epoch` aggregate, and the `_epoch`
    suffix is removed, so `train_loss_epoch` and a plain `train_loss` end up under the same name.
    """
    import pandas as pd

    try:
        df = pd.read_csv(csv_path)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CurvesError(f"{csv_path}: cannot read the training log ({exc})") from None
    if "epoch" not in df.columns:
        raise CurvesError(f"{csv_path}: no 'epoch' column (not a Lightning CSVLogger metrics.csv)")
    df = df.dropna(subset=["epoch"])
    cols = [c for c in df.columns if c not in ("epoch", "step") and pd.api.types.is_numeric_dtype(df[c])]
    keep = [c for c in cols if not (c.endswith("_step") and f"{c[:-5]}_epoch" in cols)]
    per_epoch = df.groupby(df["epoch"].astype(int))[keep].mean()
    per_epoch.columns = [c[: -len("_epoch")] if c.endswith("_epoch") else c for c in per_epoch.columns]
    per_epoch = per_epoch.T.groupby(level=0).mean().T  # merge duplicate names after renaming
    per_epoch = per_epoch.dropna(axis=1, how="all")
    if per_epoch.empty:
        raise CurvesError(f"{csv_path}: no metrics logged per epoch")
    return per_epoch


def curve_groups(per_epoch) -> dict[str, list[str]]:
    """Columns to draw on the loss panel and on the score panel (accuracy, F1, AUC)."""
    loss = [c for c in per_epoch.columns if "loss" in c.lower()]
    score = [
        c for c in per_epoch.columns
        if c not in loss and any(k in c.lower() for k in ("acc", "f1", "auc"))
    ]
    return {"loss": loss, "score": score}


def summarise(per_epoch) -> dict:
    """JSON-ready curves: epochs, each column's values, and the best epoch by validation loss."""
    out = {
        "epochs": [int(e) for e in per_epoch.index],
        "series": {c: [None if np.isnan(v) else round(float(v), 6) for v in per_epoch[c]] for c in per_epoch.columns},
    }
    # the overall validation loss (`val_loss`, `val/loss`), else the first per-task one
    vl = sorted((c for c in per_epoch.columns if c.lower().startswith("val") and "loss" in c.lower()), key=len)
    if vl and per_epoch[vl[0]].notna().any():
        out["best_epoch_metric"] = vl[0]
        out["best_epoch_val_loss"] = int(per_epoch[vl[0]].idxmin())
    return out


def curves_section(csv: Path, out: Path, files) -> dict:
    """The evaluation report's training curves: per-epoch summary of `csv`, plot written under `out`."""
    try:
        per_epoch = read_epoch_metrics(csv)
    except CurvesError as exc:
        return {"error": str(exc)}
    groups = curve_groups(per_epoch)
    res = {"source": str(csv), **summarise(per_epoch)}
    if any(groups.values()):
        files["training_curves"] = plots.curves_png(per_epoch, groups, out / "training_curves.png")
    return res
