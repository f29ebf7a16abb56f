"""Counts over a manifest for reports and ``--json``: labels per split, duplicates, leaks, errors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from artlens.data.columns import LABEL_COLUMNS, SPLITS
from artlens.data.splits import split_leaks

if TYPE_CHECKING:
    import pandas as pd


def label_counts(df: pd.DataFrame, column: str) -> dict[str, dict[str, int]]:
    """{label: {split: count, ..., "total": count}} for one column (null split -> "none")."""
    if column not in df.columns or not df[column].notna().any():
        return {}
    import pandas as pd

    split = df["split"].fillna("none") if "split" in df.columns else pd.Series("none", index=df.index)
    sub = df[df[column].notna()]
    out: dict[str, dict[str, int]] = {}
    counts = sub.groupby([sub[column], split[sub.index]]).size()
    for (label, sp), n in counts.items():
        out.setdefault(str(label), {})[str(sp)] = int(n)
    for label, d in out.items():
        d["total"] = sum(d.values())
    return dict(sorted(out.items(), key=lambda kv: (-kv[1]["total"], kv[0])))


def summarize(
    manifest: pd.DataFrame,
    errors: pd.DataFrame | None = None,
    duplicates: pd.DataFrame | None = None,
    *,
    layout: str = "",
    root: str = "",
    notes: Sequence[str] = (),
) -> dict:
    """Counts for reports and ``--json``: images, labels per split, duplicates, unreadable files."""
    extra_labels = [c for c in ("movement", "aiartbench_style", "joint", "family", "kind") if c in manifest.columns]
    splits = manifest["split"].fillna("none").value_counts().to_dict() if "split" in manifest.columns else {}
    out: dict[str, Any] = {
        "root": root,
        "layout": layout,
        "images": int(len(manifest)),
        "unreadable": int(len(errors)) if errors is not None else 0,
        "splits": {str(k): int(splits[k]) for k in sorted(splits, key=lambda s: (SPLITS + ("none",)).index(s) if s in SPLITS + ("none",) else 9)},
        "labels": {c: label_counts(manifest, c) for c in (*LABEL_COLUMNS, *extra_labels) if c in manifest.columns},
    }
    out["labels"] = {k: v for k, v in out["labels"].items() if v}
    out["label_counts"] = {k: len(v) for k, v in out["labels"].items()}
    if duplicates is not None:
        conflicts = []
        if len(duplicates):
            label_cols = [c for c in LABEL_COLUMNS if c in duplicates.columns]
            for g, part in duplicates[duplicates["conflict"]].groupby("group", sort=True):
                members = [
                    {"path": rec["path"], **{c: rec[c] for c in label_cols if isinstance(rec.get(c), str)}}
                    for rec in part[["path", *label_cols]].to_dict("records")
                ]
                conflicts.append({"group": int(g), "kind": str(part["kind"].iloc[0]), "columns": str(part["conflict_columns"].iloc[0]), "members": members})
        kinds = duplicates.drop_duplicates("group")["kind"].value_counts().to_dict() if len(duplicates) else {}
        out["duplicates"] = {
            "groups": int(duplicates["group"].nunique()) if len(duplicates) else 0,
            "exact_groups": int(kinds.get("exact", 0)),
            "near_groups": int(kinds.get("near", 0)),
            "images_in_groups": int(len(duplicates)),
            "conflicting_groups": len(conflicts),
            "conflicts": conflicts,
        }
    if "split" in manifest.columns and manifest["split"].notna().any():
        out["leaks"] = split_leaks(manifest)
    if errors is not None:
        out["errors"] = [{"path": str(p), "reason": str(r)} for p, r in zip(errors["path"], errors["reason"])]
    if notes:
        out["notes"] = list(notes)
    return out
