"""One task's numbers on the evaluated rows: metrics, confusion, plots, outliers, galleries, groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from artlens.evaluate import plots
from artlens.evaluate.metrics import binary_detection, confusion, task_metrics, text_report
from artlens.paths import atomic_write_text

LOW_CONFIDENCE = 0.5


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


def evaluate_task(t, df, proba, ok, out: Path, gallery_size, group_by, outlier_rows, files, galleries) -> dict:
    """Task `t`'s numbers on the readable rows with a known label; writes its report, plots and
    galleries under `out` (recorded in `files` / `galleries`) and appends its outliers to `outlier_rows`."""
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
        res["by_group"] = group_scores(t, df, truth, usable, proba, group_by)
    return res


def group_scores(t, df, truth, usable, proba, column: str) -> dict:
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
