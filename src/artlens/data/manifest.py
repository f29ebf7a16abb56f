"""The manifest: one row per image (path, labels, size, content hash, perceptual hash, split).

`scan()` reads a dataset root through a source adapter, decodes and hashes every image
(`artlens.data.decode`: a bad file becomes one line in ``errors``, never the end of the scan),
normalises the labels and finds exact and near duplicates (`artlens.data.duplicates`). The
manifest is saved as one Parquet file (`write_manifest`, atomic) and read back with
`read_manifest`. Its columns are `artlens.data.columns`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artlens.data.columns import LABEL_COLUMNS, MANIFEST_COLUMNS, SPLITS, STRING_COLUMNS
from artlens.data.decode import DEFAULT_WORKERS, decode_files
from artlens.data.duplicates import NEAR_DUPLICATE_DISTANCE, find_duplicates
from artlens.data.images import MAX_PIXELS
from artlens.data.summary import summarize

if TYPE_CHECKING:
    import pandas as pd

_ORIGIN_SYNONYMS = {
    "ai": "ai", "generated": "ai", "fake": "ai", "synthetic": "ai", "aiartdata": "ai",
    "human": "human", "real": "human", "authentic": "human", "realart": "human",
}


class ManifestError(ValueError):
    """A manifest file that is missing, unreadable or lacks the required columns."""


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def normalise_manifest(df: pd.DataFrame) -> pd.DataFrame:
    """Columns in contract order (missing ones added as null), contract dtypes; extras kept after."""
    import pandas as pd

    out = df.copy()
    for col in MANIFEST_COLUMNS:
        if col not in out.columns:
            out[col] = None
    for col in STRING_COLUMNS:
        out[col] = out[col].astype("str").where(out[col].notna(), None) if len(out) else out[col].astype("str")
    for col in ("width", "height"):
        out[col] = pd.to_numeric(out[col], errors="coerce").astype("Int64" if out[col].isna().any() else "int64")
    extras = [c for c in out.columns if c not in MANIFEST_COLUMNS]
    return out[list(MANIFEST_COLUMNS) + extras].reset_index(drop=True)


def validate_manifest(df: pd.DataFrame, *, name: str = "manifest") -> None:
    missing = [c for c in ("path", "sha256") if c not in df.columns]
    if missing:
        raise ManifestError(f"{name}: not a manifest, missing column(s) {missing}")
    if "split" in df.columns:
        bad = sorted(set(df["split"].dropna().astype(str)) - set(SPLITS))
        if bad:
            raise ManifestError(f"{name}: unknown split value(s) {bad}; expected {SPLITS}")


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """Read a manifest Parquet file (columns normalised to the contract)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: no such manifest file")
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises its own types for non-Parquet files
        raise ManifestError(f"{path}: not a readable Parquet manifest ({exc})") from None
    validate_manifest(df, name=str(path))
    return normalise_manifest(df)


def write_manifest(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `df` as Parquet atomically (readers see the old file or the new one, never a part)."""
    import tempfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    validate_manifest(df, name=str(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        normalise_manifest(df).to_parquet(tmp, index=False)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


# --------------------------------------------------------------------------------------------
# Scanning
# --------------------------------------------------------------------------------------------


@dataclass
class ScanResult:
    manifest: pd.DataFrame
    errors: pd.DataFrame  # path, reason
    duplicates: pd.DataFrame  # see find_duplicates
    layout: str = ""
    root: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        return summarize(self.manifest, self.errors, self.duplicates, layout=self.layout, root=self.root, notes=self.notes)


def normalise_origin(value: Any) -> str | None:
    if value is None or (isinstance(value, float) and value != value):
        return None
    key = "".join(ch for ch in str(value).lower() if ch.isalnum())
    return _ORIGIN_SYNONYMS.get(key, str(value).strip().lower() or None)


def normalise_labels(df: pd.DataFrame) -> pd.DataFrame:
    """Blank labels to null, artists to display names, origin to human/ai."""
    from artlens.data.taxonomy import artist_display_name

    out = df.copy()
    for col in LABEL_COLUMNS:
        if col in out.columns:
            out[col] = out[col].map(lambda v: None if v is None or (isinstance(v, float) and v != v) or not str(v).strip() else str(v).strip())
    if "artist" in out.columns:
        names = {v: artist_display_name(v) for v in out["artist"].dropna().unique()}
        out["artist"] = out["artist"].map(lambda v: names.get(v) if v is not None else None)
    if "origin" in out.columns:
        out["origin"] = out["origin"].map(normalise_origin)
    return out


def apply_name_pattern(df: pd.DataFrame, pattern: str) -> pd.DataFrame:
    """Fill labels from file names (``{artist}_{title}``, or the preset ``wikiart``). Values the
    layout already gave win; the pattern only fills what is missing."""
    from artlens.data.sources import labels_from_names

    parsed = labels_from_names(df["path"].tolist(), pattern)
    out = df.copy()
    for col in parsed.columns:
        values = parsed[col].to_numpy()
        if col in out.columns:
            out[col] = out[col].where(out[col].notna(), values)
        else:
            out[col] = values
    return out


def scan(
    source: str | os.PathLike,
    layout: str | None = None,
    *,
    name_pattern: str | None = None,
    taxonomies: Sequence[str] = (),
    workers: int = DEFAULT_WORKERS,
    near_distance: int | None = NEAR_DUPLICATE_DISTANCE,
    max_pixels: int = MAX_PIXELS,
    progress: bool | Callable[[int, int], None] = False,
    options: dict[str, str] | None = None,
) -> ScanResult:
    """Scan a dataset root into a manifest.

    `layout`: a registered layout name (``artlens.data.sources.list_sources()``), detected when
    None. `name_pattern`: labels from file names (``wikiart`` or e.g. ``{artist}_{title}``; the
    layout's default when None, ``""`` for none). `taxonomies`: names of label mappings to add
    (e.g. ``wikiart-movements``). `progress`: True for a Rich progress bar on stderr, or a
    callback ``(done, total)``. `options`: layout options (e.g. ``{"levels": "{split}/{genre}"}``).
    `workers`: decoding processes (0 or 1: in this process). Workers fork from a single-threaded
    caller; a caller already running threads gets forkserver workers, and a script calling
    `scan` at top level then needs the usual ``if __name__ == "__main__":`` guard.
    """
    import numpy as np
    import pandas as pd

    from artlens.data.sources import read_source
    from artlens.data.taxonomy import apply_taxonomy

    records, adapter = read_source(source, layout, **(options or {}))
    notes = list(records.attrs.get("notes", []))
    records = records.drop_duplicates("path", keep="first").reset_index(drop=True)
    pre_errors = records[records["_error"].notna()][["path", "_error"]].rename(columns={"_error": "reason"})
    records = records[records["_error"].isna()].drop(columns="_error").reset_index(drop=True)

    pattern = adapter.name_pattern if name_pattern is None else name_pattern
    if pattern and len(records):
        records = apply_name_pattern(records, pattern)
    records = normalise_labels(records)

    paths = records["path"].tolist()
    results: dict[str, tuple] = {}
    bar = _progress_bar(progress, len(paths), f"scanning {Path(source).name}")
    try:
        for i, res in enumerate(decode_files(paths, workers=workers, max_pixels=max_pixels), start=1):
            results[res[0]] = res
            bar(i)
    finally:
        bar(None)
    ok_mask = np.array([results[p][1] is None for p in paths], dtype=bool)
    failed = [p for p, ok in zip(paths, ok_mask) if not ok]
    decode_errors = pd.DataFrame({"path": failed, "reason": [results[p][1] for p in failed]}, dtype=object)
    good = records.loc[ok_mask].copy()
    good["width"] = [results[p][2] for p in good["path"]]
    good["height"] = [results[p][3] for p in good["path"]]
    good["sha256"] = [results[p][4] for p in good["path"]]
    good["phash"] = [results[p][5] for p in good["path"]]
    good["source"] = adapter.name
    manifest = normalise_manifest(good)
    for name in taxonomies:
        manifest = apply_taxonomy(manifest, name)
    manifest, duplicates = find_duplicates(manifest, near_distance)
    errors = pd.concat([pre_errors, decode_errors], ignore_index=True)
    errors = errors.astype({"path": "str", "reason": "str"}).reset_index(drop=True)
    return ScanResult(manifest, errors, duplicates, layout=adapter.name, root=str(Path(source).expanduser().absolute()), notes=notes)


def _progress_bar(progress, total: int, label: str) -> Callable[[int | None], None]:
    """A callable `update(done)`; `update(None)` closes it."""
    if callable(progress) and not isinstance(progress, bool):
        return lambda done: progress(done, total) if done is not None else None
    if not progress or total == 0:
        return lambda done: None
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
        console=Console(stderr=True), transient=False,
        auto_refresh=False,  # no refresh thread: the decode pool forks, which wants one thread
    )
    bar.start()
    task = bar.add_task(label, total=total)
    last = [0]

    def update(done: int | None) -> None:
        if done is None:
            bar.update(task, completed=last[0], refresh=True)
            bar.stop()
            return
        last[0] = done
        if done == total or done % 25 == 0:  # redraws are not free on 2 cores
            bar.update(task, completed=done, refresh=True)

    return update
