"""The manifest: one row per image (path, labels, size, content hash, perceptual hash, split).

`scan()` reads a dataset root through a source adapter, decodes every image in a process pool
(a bad file becomes one line in ``errors``, never the end of the scan), hashes it (SHA-256 of the
bytes, imagehash's pHash of the pixels) and finds exact and near duplicates, flagging groups
filed under different labels. The manifest is saved as one Parquet file (`write_manifest`,
atomic) and read back with `read_manifest`.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from artlens.data.images import MAX_PIXELS, ImageDecodeError, probe_image_bytes, read_image_file

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

LABEL_COLUMNS = ("style", "artist", "genre", "origin", "generator")
MANIFEST_COLUMNS = ("path", *LABEL_COLUMNS, "width", "height", "sha256", "phash", "split", "source")
STRING_COLUMNS = ("path", *LABEL_COLUMNS, "sha256", "phash", "split", "source")
SPLITS = ("train", "val", "test")
ORIGINS = ("human", "ai")
# pHash Hamming distance (of 64 bits) at or under which two images are near duplicates. On the
# WikiArt set, pairs at 0-4 are the same painting (re-encoded, resized, renamed); from 6 bits up
# different paintings of one series or similar composition start to appear.
NEAR_DUPLICATE_DISTANCE = 4
DEFAULT_WORKERS = 2
_PARALLEL_MIN = 48  # fewer files than this decode in-process: a pool costs more than it saves
_ORIGIN_SYNONYMS = {
    "ai": "ai", "generated": "ai", "fake": "ai", "synthetic": "ai", "aiartdata": "ai",
    "human": "human", "real": "human", "authentic": "human", "realart": "human",
}


class ManifestError(ValueError):
    """A manifest file that is missing, unreadable or lacks the required columns."""


# --------------------------------------------------------------------------------------------
# Reading and writing
# --------------------------------------------------------------------------------------------


def empty_manifest() -> pd.DataFrame:
    import pandas as pd

    cols = {c: pd.Series([], dtype="str") for c in MANIFEST_COLUMNS}
    cols["width"] = pd.Series([], dtype="int64")
    cols["height"] = pd.Series([], dtype="int64")
    return pd.DataFrame(cols)


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
# Decoding (in worker processes)
# --------------------------------------------------------------------------------------------


def probe_file(path: str, max_pixels: int = MAX_PIXELS) -> tuple[str, str | None, int, int, str, str]:
    """(path, error reason or None, width, height, sha256, phash). Never raises."""
    try:
        import imagehash

        data = read_image_file(path)
        sha = hashlib.sha256(data).hexdigest()
        probe = probe_image_bytes(data, path, max_pixels=max_pixels)
        return (path, None, probe.width, probe.height, sha, str(imagehash.phash(probe.thumbnail)))
    except ImageDecodeError as exc:
        return (path, exc.reason, 0, 0, "", "")
    except Exception as exc:  # a bug must not end the scan either; say what it was
        return (path, f"unexpected error: {type(exc).__name__}: {exc}", 0, 0, "", "")


def _pool_context():
    import multiprocessing as mp
    import threading

    # fork is the fastest start and, unlike spawn/forkserver, does not re-run the caller's
    # __main__ (a script calling scan() at top level works), but it is only safe while this
    # process runs a single thread; otherwise forkserver (scripts then need the __main__ guard).
    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1 and "fork" in methods:
        return mp.get_context("fork")
    if sys.platform != "win32" and "forkserver" in methods:
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def decode_files(
    paths: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
    max_pixels: int = MAX_PIXELS,
    chunksize: int = 16,
) -> Iterator[tuple[str, str | None, int, int, str, str]]:
    """`probe_file` over `paths`, in order, in a process pool of `workers`.

    A worker that dies (a decoder crash, the OOM killer) breaks the pool: the files already done
    are kept, the rest are retried one at a time until the file that kills a worker is found,
    reported as an error, and the scan goes on in a fresh pool.
    """
    pending = list(paths)
    if workers <= 1 or len(pending) < _PARALLEL_MIN:
        for p in pending:
            yield probe_file(p, max_pixels)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = _pool_context()
    crash = "the decoder crashed on this file (its worker process died)"
    careful = False
    while pending:
        if not careful:
            done = 0
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    for res in pool.map(probe_file, pending, itertools.repeat(max_pixels), chunksize=chunksize):
                        done += 1
                        yield res
                pending = []
            except BrokenProcessPool:
                pending = pending[done:]
                careful = True
            continue
        # One file at a time in a one-worker pool: the file in flight when it breaks is the one.
        # The culprit is among the files that were in flight, so this lasts a few dozen files.
        budget = workers * (chunksize + 1) + 2
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                while pending and budget > 0:
                    res = pool.submit(probe_file, pending[0], max_pixels).result()
                    pending = pending[1:]
                    budget -= 1
                    yield res
        except BrokenProcessPool:
            yield (pending[0], crash, 0, 0, "", "")
            pending = pending[1:]
        careful = False


# --------------------------------------------------------------------------------------------
# Duplicates
# --------------------------------------------------------------------------------------------


def _popcount(x: np.ndarray) -> np.ndarray:
    import numpy as np

    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x)
    return np.unpackbits(x.astype(np.uint64).view(np.uint8).reshape(*x.shape, 8), axis=-1).sum(-1)


def phash_to_int(values: Iterable[Any]) -> np.ndarray:
    """Hex pHash strings -> uint64 (invalid or missing -> 0, with a mask)."""
    import numpy as np

    out = np.zeros(len(values) if hasattr(values, "__len__") else 0, dtype=np.uint64)
    for i, v in enumerate(values):
        try:
            out[i] = np.uint64(int(str(v), 16) & 0xFFFFFFFFFFFFFFFF)
        except (TypeError, ValueError):
            out[i] = 0
    return out


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int = NEAR_DUPLICATE_DISTANCE) -> np.ndarray:
    """Index pairs (i < j) of 64-bit hashes within `max_distance` bits of each other.

    Pigeonhole (multi-index hashing): split the 64 bits into max_distance + 1 bands; two hashes
    within the distance agree exactly on at least one band, so only hashes sharing a band value
    are compared. Near-linear for well-spread hashes instead of n^2.
    """
    import numpy as np

    h = np.asarray(hashes, dtype=np.uint64)
    n = len(h)
    if n < 2 or max_distance < 0:
        return np.zeros((0, 2), dtype=np.int64)
    bands = min(max_distance + 1, 64)
    widths = [64 // bands + (1 if b < 64 % bands else 0) for b in range(bands)]
    found: list[np.ndarray] = []
    offset = 0
    for width in widths:
        mask = np.uint64((1 << width) - 1)
        key = (h >> np.uint64(offset)) & mask
        offset += width
        order = np.argsort(key, kind="stable")
        sk = key[order]
        cuts = np.flatnonzero(sk[1:] != sk[:-1]) + 1
        starts = np.concatenate([[0], cuts])
        ends = np.concatenate([cuts, [n]])
        for s, e in zip(starts[(ends - starts) > 1], ends[(ends - starts) > 1]):
            idx = order[s:e]
            block = h[idx]
            step = max(1, 4_000_000 // len(idx))  # bound the distance matrix's memory
            for r0 in range(0, len(idx), step):
                d = _popcount(block[r0 : r0 + step, None] ^ block[None, :])
                ii, jj = np.nonzero(d <= max_distance)
                ii = ii + r0
                keep = ii < jj
                if keep.any():
                    found.append(np.stack([idx[ii[keep]], idx[jj[keep]]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=np.int64)
    pairs = np.concatenate(found)
    pairs = np.sort(pairs, axis=1)
    return np.unique(pairs, axis=0).astype(np.int64)


def duplicate_groups(df: pd.DataFrame, near_distance: int | None = NEAR_DUPLICATE_DISTANCE) -> np.ndarray:
    """A group id per row: rows with the same sha256, or pHashes within `near_distance`
    (transitively), share an id; other rows get ids of their own. Ids follow first appearance.

    `near_distance=None` (or negative) groups exact duplicates only.
    """
    import numpy as np
    import pandas as pd
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    n = len(df)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    rows, cols = [], []
    offset = n
    sha = df["sha256"] if "sha256" in df.columns else pd.Series([None] * n)
    sha_codes, _ = pd.factorize(sha.where(sha.notna() & (sha.astype(str) != ""), None), use_na_sentinel=True)
    ok = sha_codes >= 0
    rows.append(np.flatnonzero(ok))
    cols.append(offset + sha_codes[ok])
    offset += int(sha_codes.max(initial=-1)) + 1
    if near_distance is not None and near_distance >= 0 and "phash" in df.columns:
        ph = df["phash"]
        valid = ph.notna().to_numpy() & (ph.astype(str).str.len() > 0).to_numpy()
        if valid.any():
            ints = phash_to_int(list(ph[valid]))
            uniq, inverse = np.unique(ints, return_inverse=True)
            rows.append(np.flatnonzero(valid))
            cols.append(offset + inverse.ravel())
            pairs = near_duplicate_pairs(uniq, near_distance)
            if len(pairs):
                rows.append(offset + pairs[:, 0])
                cols.append(offset + pairs[:, 1])
            offset += len(uniq)
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(offset, offset))
    _, labels = connected_components(graph, directed=False)
    _, first_ids = np.unique(labels[:n], return_inverse=True)
    # renumber by first appearance so the ids do not depend on scipy's numbering
    _, first_pos = np.unique(first_ids, return_index=True)
    rank = np.empty(len(first_pos), dtype=np.int64)
    rank[np.argsort(first_pos)] = np.arange(len(first_pos))
    return rank[first_ids.ravel()]


def find_duplicates(
    manifest: pd.DataFrame, near_distance: int | None = NEAR_DUPLICATE_DISTANCE
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(manifest with ``dup_group`` / ``conflict`` columns, duplicates table).

    The table has one row per image in a group of two or more: ``group``, ``kind`` (``exact``
    when every member has the same bytes, else ``near``), ``size``, path, hashes, labels,
    ``conflict`` (the members disagree on some label) and ``conflict_columns``.
    """
    import pandas as pd

    out = manifest.copy()
    groups = duplicate_groups(out, near_distance)
    sizes = pd.Series(groups).map(pd.Series(groups).value_counts()).to_numpy()
    in_group = sizes > 1
    # dense ids 0..k-1 for the groups of two or more, in order of first appearance
    gid = pd.Series(groups[in_group]).pipe(lambda s: pd.factorize(s)[0])
    dup_group = pd.Series(pd.NA, index=out.index, dtype="Int64")
    dup_group[in_group] = gid
    out["dup_group"] = dup_group
    label_cols = [c for c in LABEL_COLUMNS if c in out.columns]
    conflict = pd.Series(False, index=out.index)
    conflict_cols = pd.Series(None, index=out.index, dtype=object)
    kind = pd.Series(None, index=out.index, dtype=object)
    members = out[in_group]
    for g, part in members.groupby("dup_group", sort=True):
        cols = [c for c in label_cols if part[c].dropna().nunique() > 1]
        if cols:
            conflict[part.index] = True
            conflict_cols[part.index] = ",".join(cols)
        kind[part.index] = "exact" if part["sha256"].nunique() == 1 else "near"
    out["conflict"] = conflict.astype(bool)
    # only the table's own columns: a manifest extra named like one of them (e.g. a human
    # dataset's ``kind``) must not collide with the table's
    table = out.loc[in_group, [c for c in ("path", "sha256", "phash", *label_cols, "conflict") if c in out.columns]].copy()
    table.insert(0, "group", out.loc[in_group, "dup_group"].astype("int64"))
    table.insert(1, "kind", kind[in_group])
    table.insert(2, "size", sizes[in_group])
    table["conflict_columns"] = conflict_cols[in_group]
    table = table.sort_values(["group", "path"]).reset_index(drop=True)
    return out, table


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


# --------------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------------


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
        from artlens.data.splits import split_leaks

        out["leaks"] = split_leaks(manifest)
    if errors is not None:
        out["errors"] = [{"path": str(p), "reason": str(r)} for p, r in zip(errors["path"], errors["reason"])]
    if notes:
        out["notes"] = list(notes)
    return out
