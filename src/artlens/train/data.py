"""From a recipe's `data` and `tasks` sections to labelled, split training rows.

1. Each source is read: a manifest (`.parquet`/`.csv`) as is, a folder through
   `artlens.data.manifest.scan` (cached under the user cache, keyed by the folder's file listing,
   so a second run does not decode and hash every image again).
2. Per-source `labels` fill missing label columns (e.g. `origin: human` for a painting folder).
3. Joint task columns (`origin+style`) are built: values joined with `_`, null if a part is null.
4. Optional balanced subsampling (`max_per_class`, over the first task's labels).
5. Rows without a split get one (stratified by the first task, duplicates kept together; the
   project's `artlens.data.splits` when present). Existing splits are kept unless `resplit`.
6. Targets per task: class indices over the labels seen in the training rows, -1 where missing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from artlens.data.rows import MANIFEST_SUFFIXES, read_rows
from artlens.data.splits import assign_splits

log = logging.getLogger(__name__)


@dataclass
class Prepared:
    df: Any  # pandas DataFrame, index 0..N-1, with `split`
    tasks: list[dict]  # recipe tasks, each with `labels`
    targets: dict[str, np.ndarray]  # task -> (N,) int64, -1 = no label
    errors: Any  # DataFrame path, reason (files the scans could not read)
    notes: list[str] = field(default_factory=list)
    kept_out: dict[str, dict[str, int]] = field(default_factory=dict)  # task -> {label: rows} under its min_count

    @property
    def split(self) -> np.ndarray:
        return self.df["split"].astype(str).to_numpy()

    def counts(self) -> dict:
        out = {}
        for t in self.tasks:
            y = self.targets[t["name"]]
            out[t["name"]] = {s: int(((self.split == s) & (y >= 0)).sum()) for s in ("train", "val", "test")}
        return out


# ----------------------------------------------------------------------------- reading
def _folder_signature(root: Path) -> str:
    """The folder's files (through symlinked folders too, as the scan sees them), sizes and times."""
    from artlens.data.walk import walk_files

    h = hashlib.sha256()
    for p in walk_files(root):
        try:
            st = os.stat(p)
        except OSError:
            continue
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:24]


def _reader_signature() -> str:
    """The readers' own code: a cached manifest made by an older reader (without a column a new
    reader adds, say) is not reused."""
    from artlens.data import columns, decode, duplicates, manifest, sources

    h = hashlib.sha256()
    readers = [Path(m.__file__) for m in (manifest, columns, decode, duplicates)]
    for f in sorted(Path(sources.__file__).parent.glob("*.py")) + readers:
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cached_manifest(path: str, layout: str | None = None, options: dict | None = None, *, use_cache: bool = True,
                    progress: bool = True):
    """(manifest, errors) for one recipe source: a manifest file (Parquet / CSV) read and validated,
    or a folder scanned once and then read from the cache until its files or the readers change."""
    import pandas as pd

    from artlens.data import manifest as M

    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"{p}: data source not found")
    if p.is_file() and p.suffix.lower() in MANIFEST_SUFFIXES:  # training needs content hashes: a full manifest
        df, errors = read_rows(p)
        M.validate_manifest(df, name=str(p))
        return M.normalise_manifest(df), errors
    cache = None
    if use_cache and p.is_dir():
        from artlens.paths import cache_dir

        key = hashlib.sha256(json.dumps([str(p.resolve()), layout, options or {}, _folder_signature(p), _reader_signature()], sort_keys=True).encode()).hexdigest()[:20]
        cache = cache_dir() / "manifests" / f"{p.name}-{key}.parquet"
        if cache.is_file():
            try:
                df = pd.read_parquet(cache)
                errors = pd.read_parquet(cache.with_suffix(".errors.parquet"))
                log.info("%s: manifest from cache %s", p, cache)
                return M.normalise_manifest(df), errors
            except Exception as exc:  # a damaged cache file is rebuilt
                log.warning("%s: ignoring cached manifest (%s)", cache, exc)
    res = M.scan(p, layout, progress=progress, options=options or None)
    if cache is not None:
        M.write_manifest(res.manifest, cache)
        res.errors.to_parquet(cache.with_suffix(".errors.parquet"), index=False)
    return res.manifest, res.errors


def load_sources(sources: list[dict], *, use_cache: bool = True, progress: bool = True):
    """(concatenated manifest, errors) for a recipe's normalised `data.sources`."""
    import pandas as pd

    frames, errors = [], []
    for s in sources:
        df, err = cached_manifest(s["path"], s.get("layout"), s.get("options"), use_cache=use_cache, progress=progress)
        df = df.copy()
        for col, value in (s.get("labels") or {}).items():
            if col not in df.columns:
                df[col] = None
            df[col] = df[col].where(df[col].notna(), value)
        if s.get("max_per_class"):
            df = balanced_subsample(df, None, int(s["max_per_class"]))
        frames.append(df)
        if len(err):
            errors.append(err)
    if not frames:
        raise ValueError("no data: give sources in the recipe (data.sources) or with --data")
    df = pd.concat(frames, ignore_index=True)
    df = df.drop_duplicates("path", keep="first").reset_index(drop=True)
    err = pd.concat(errors, ignore_index=True) if errors else pd.DataFrame(columns=["path", "reason"])
    return df, err


# ----------------------------------------------------------------------------- labels
def task_values(df, column: str):
    """The label of each row for a task column; `a+b` joins columns with `_` (null if any is)."""
    import pandas as pd

    parts = column.split("+")
    for c in parts:
        if c not in df.columns:
            raise KeyError(f"task column {c!r} is not in the data (columns: {', '.join(map(str, df.columns))})")
    values = df[parts[0]].astype("object")
    if len(parts) == 1:
        return values.where(values.notna(), None)
    out = values.astype(str)
    missing = values.isna()
    for c in parts[1:]:
        out = out + "_" + df[c].astype(str)
        missing |= df[c].isna()
    return pd.Series(np.where(missing, None, out), index=df.index, dtype="object")


def balanced_subsample(df, column: str | None, per_class: int, seed: int = 0):
    """At most `per_class` rows per label of `column` (the first label column present when None);
    rows without a label are kept."""
    if column is None:
        column = next((c for c in ("style", "genre", "origin", "artist", "generator")
                       if c in df.columns and df[c].notna().any()), None)
        if column is None:
            return df
    values = task_values(df, column).to_numpy(dtype=object)
    rng = np.random.default_rng(seed)
    missing = np.array([v is None for v in values])
    keep = missing.copy()
    for label in sorted({v for v in values[~missing]}):
        idx = np.flatnonzero(values == label)
        keep[rng.permutation(idx)[:per_class]] = True
    return df[keep].reset_index(drop=True)


# ----------------------------------------------------------------------------- splits
def ensure_splits(df, tasks: list[dict], split_cfg: dict, seed: int = 0):
    """Fill `split` where it is missing (or everywhere with `resplit`), the way `artlens split`
    does (`artlens.data.splits.assign_splits`: duplicates grouped, stratified by the split's
    `group` column or the first task's). Too few rows for a val/test split: all of them train."""
    df = df.copy()
    if "split" not in df.columns:
        df["split"] = None
    todo = df["split"].isna().to_numpy() | bool(split_cfg.get("resplit"))
    if todo.any():
        column = split_cfg.get("group") or tasks[0]["column"]
        sub = df[todo].reset_index(drop=True)
        sub["_stratum"] = task_values(sub, column) if _has(sub, column) else None
        try:
            sides = assign_splits(sub, val=float(split_cfg["val"]), test=float(split_cfg["test"]),
                                  seed=int(split_cfg.get("seed", seed)), stratify="_stratum")["split"]
        except ValueError as exc:  # too few groups for the fractions asked
            log.warning("%s: every row is used for training", exc)
            sides = ["train"] * len(sub)
        df.loc[todo, "split"] = np.asarray(sides, dtype=object)
    return df


def _has(df, column: str) -> bool:
    return all(c in df.columns for c in column.split("+"))


# ----------------------------------------------------------------------------- everything
def encode_targets(df, tasks: list[dict], kept_out: dict | None = None) -> tuple[list[dict], dict[str, np.ndarray], list[str]]:
    """Label lists from the training rows; rows with other labels are masked (noted).

    A task's `min_count` keeps out labels with fewer labelled rows (all splits together: for an
    artist task, paintings) than that; they are named in a note and, when `kept_out` is a dict,
    recorded in it as `{task: {label: rows}}` (most rows first).
    """
    notes = []
    split = df["split"].astype(str).to_numpy()
    out_tasks, targets = [], {}
    for t in tasks:
        values = task_values(df, t["column"]) if _has(df, t["column"]) else None
        if values is None:
            raise KeyError(f"task {t['name']!r}: column {t['column']!r} is in none of the data sources")
        train_vals = values[(split == "train") & values.notna().to_numpy()]
        counts = train_vals.value_counts()
        min_count = int(t.get("min_count", 1) or 1)
        all_counts = values[values.notna()].value_counts()
        labels = sorted(str(v) for v in counts.index if all_counts.get(v, 0) >= min_count)
        under = {str(v): int(c) for v, c in all_counts.sort_values(ascending=False, kind="stable").items() if c < min_count}
        if under:
            shown = ", ".join(f"{k} ({n})" for k, n in list(under.items())[:10])
            more = f" and {len(under) - 10} more" if len(under) > 10 else ""
            notes.append(f"task {t['name']}: {len(under)} label(s) with fewer than {min_count} rows are kept out of it "
                         f"({sum(under.values())} rows): {shown}{more}")
            if kept_out is not None:
                kept_out[t["name"]] = under
        if len(labels) < 2:
            raise ValueError(f"task {t['name']!r}: needs at least 2 labels in the training rows, found {labels}")
        index = {lab: i for i, lab in enumerate(labels)}
        y = np.array([index.get(v, -1) if v is not None else -1 for v in values], dtype=np.int64)
        dropped = int((values.notna().to_numpy() & (y < 0)).sum())
        if dropped:
            notes.append(f"task {t['name']}: {dropped} rows have labels unseen in training (or under "
                         f"min_count) and are left out of it")
        out_tasks.append({**t, "labels": labels})
        targets[t["name"]] = y
    return out_tasks, targets, notes


def prepare(recipe: dict, *, use_cache: bool = True, progress: bool = True) -> Prepared:
    df, errors = load_sources(recipe["data"]["sources"], use_cache=use_cache, progress=progress)
    tasks = recipe["tasks"]
    if recipe["data"].get("max_per_class"):
        df = balanced_subsample(df, tasks[0]["column"], int(recipe["data"]["max_per_class"]), recipe["seed"])
    # keep rows labelled for at least one task (origin, when the recipe trains it by groups)
    labelled = np.zeros(len(df), bool)
    for t in tasks:
        if _has(df, t["column"]):
            labelled |= task_values(df, t["column"]).notna().to_numpy()
    if (recipe.get("origin") or {}).get("enabled") and _has(df, "origin"):
        labelled |= df["origin"].notna().to_numpy()
    df = df[labelled].reset_index(drop=True)
    if not len(df):
        raise ValueError("no row of the data carries a label for any task "
                         f"({', '.join(t['column'] for t in tasks)})")
    df = ensure_splits(df, tasks, recipe["data"]["split"], recipe["seed"])
    kept_out: dict[str, dict[str, int]] = {}
    tasks, targets, notes = encode_targets(df, tasks, kept_out)
    return Prepared(df, tasks, targets, errors, notes, kept_out)
