"""Exact and near-duplicate images in a manifest: pHash band search, duplicate groups, label conflicts."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from artlens.data.columns import LABEL_COLUMNS

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

# pHash Hamming distance (of 64 bits) at or under which two images are near duplicates. On the
# WikiArt set, pairs at 0-4 are the same painting (re-encoded, resized, renamed); from 6 bits up
# different paintings of one series or similar composition start to appear.
NEAR_DUPLICATE_DISTANCE = 4


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
