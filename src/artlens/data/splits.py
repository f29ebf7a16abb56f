"""Train/val/test splits and balanced sampling: pure functions on manifest DataFrames.

Guarantees of :func:`assign_splits`:

- **grouped**: exact duplicates (same sha256) and near duplicates (pHash within a few bits) always
  land in one split; with ``group_by="artist"`` so does every artist's work;
- **stratified** by a label column (sklearn's ``StratifiedGroupKFold``), so each split keeps the
  label proportions as far as the groups allow;
- **reproducible and order-free**: the assignment depends on the seed and the rows' content, not
  on their order (rows are put in sha256 order before anything random happens).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from artlens.data.duplicates import NEAR_DUPLICATE_DISTANCE, duplicate_groups

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

_MAX_FOLDS = 100


def _canonical_order(df: pd.DataFrame) -> np.ndarray:
    """Positions of `df`'s rows sorted by content (sha256, then path): the same set of rows in
    any order gives the same sequence."""
    import numpy as np

    keys = [df[c].astype(str).fillna("").to_numpy() for c in ("path", "sha256") if c in df.columns]
    if not keys:
        raise ValueError("a manifest needs a path or sha256 column to be split")
    return np.lexsort(keys)  # last key is primary: sha256, then path


def _union(n: int, labelings: Sequence[np.ndarray]) -> np.ndarray:
    """Connected components of rows linked by equal codes in any labeling (code < 0: no link)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    rows, cols, offset = [], [], n
    for codes in labelings:
        codes = np.asarray(codes)
        ok = codes >= 0
        rows.append(np.flatnonzero(ok))
        cols.append(offset + codes[ok])
        offset += int(codes.max(initial=-1)) + 1
    r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(offset, offset))
    labels = connected_components(graph, directed=False)[1][:n]
    return np.unique(labels, return_inverse=True)[1].ravel()


def split_groups(
    df: pd.DataFrame, *, group_by: str | Sequence[str] | None = None, near_distance: int | None = NEAR_DUPLICATE_DISTANCE
) -> np.ndarray:
    """Group id per row (in `df`'s order) of the units a split never cuts: duplicate groups,
    joined with equal non-null values of the `group_by` column(s)."""
    import numpy as np
    import pandas as pd

    labelings = [duplicate_groups(df, near_distance)]
    for col in [group_by] if isinstance(group_by, str) else list(group_by or []):
        if col not in df.columns:
            raise KeyError(f"cannot group by {col!r}: the manifest has no such column")
        codes, _ = pd.factorize(df[col].where(df[col].notna(), None), use_na_sentinel=True)
        labelings.append(np.asarray(codes))
    return _union(len(df), labelings)


def _n_folds(val: float, test: float) -> int:
    """Smallest fold count whose multiples give both fractions within half a percent."""
    for k in range(2, _MAX_FOLDS + 1):
        if all(abs(f * k - round(f * k)) <= 0.005 * k and (f == 0 or round(f * k) >= 1) for f in (val, test)):
            return k
    return _MAX_FOLDS


def assign_splits(
    df: pd.DataFrame,
    *,
    val: float = 0.1,
    test: float = 0.2,
    seed: int = 0,
    stratify: str | None = "style",
    group_by: str | Sequence[str] | None = None,
    near_distance: int | None = NEAR_DUPLICATE_DISTANCE,
) -> pd.DataFrame:
    """A copy of `df` with ``split`` set to train/val/test for every row.

    `stratify`: label column whose proportions each split keeps (ignored when absent or empty).
    `group_by`: column(s) whose values never straddle splits (e.g. ``"artist"``).
    """
    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"val ({val}) and test ({test}) must be fractions in [0, 1) with val + test < 1")
    out = df.copy()
    n = len(out)
    if n == 0:
        out["split"] = out.get("split", None)
        return out
    order = _canonical_order(out)
    canon = out.iloc[order].reset_index(drop=True)
    groups = split_groups(canon, group_by=group_by, near_distance=near_distance)
    n_groups = int(groups.max()) + 1
    if stratify and stratify in canon.columns and canon[stratify].notna().any():
        y = canon[stratify].astype(str).where(canon[stratify].notna(), "\0none").to_numpy()
    else:
        y = np.zeros(n, dtype=np.int64)
    k = _n_folds(val, test)
    if (val or test) and n_groups < k:  # a small collection: each group is a fold of its own
        k = n_groups
    n_val, n_test = round(val * k), round(test * k)
    split = np.full(n, "train", dtype=object)
    if val or test:
        if (val and not n_val) or (test and not n_test) or n_val + n_test >= k:
            raise ValueError(f"{n_groups} group(s) of duplicates/{group_by or 'rows'} are too few for a {val:g}/{test:g} split")
        if np.all(np.unique(y, return_counts=True)[1] < k):  # every class smaller than a fold count
            y = np.zeros(n, dtype=np.int64)  # sklearn refuses; split by groups alone
        cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "least populated class has only N members"
            folds = [test_idx for _, test_idx in cv.split(np.zeros(n), y, groups)]
        for i, idx in enumerate(folds):
            if i < n_val:
                split[idx] = "val"
            elif i < n_val + n_test:
                split[idx] = "test"
    result = np.empty(n, dtype=object)
    result[order] = split
    out["split"] = result
    return out


def balance(
    df: pd.DataFrame,
    per_class: int,
    *,
    by: str = "style",
    also_by: str | Sequence[str] | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """At most `per_class` rows per value of `by` (per `by` x `also_by`, e.g. style x origin, as
    AI-ArtBench's 5,000 per style per origin). Rows without a `by` label are dropped; the choice
    is seeded and independent of row order; the kept rows keep their order."""
    import numpy as np

    if per_class < 1:
        raise ValueError("per_class must be at least 1")
    cols = [by, *([also_by] if isinstance(also_by, str) else list(also_by or []))]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise KeyError(f"cannot balance by {missing}: the manifest has no such column")
    labelled = df[df[by].notna()]
    if labelled.empty:
        return labelled.copy()
    order = _canonical_order(labelled)
    canon = labelled.iloc[order]
    rank = np.random.default_rng(seed).permutation(len(canon))
    keys = canon[cols].astype(str).where(canon[cols].notna(), "\0none")
    position = keys.assign(_rank=rank).groupby(cols, sort=False)["_rank"].rank(method="first")
    keep = np.zeros(len(labelled), dtype=bool)
    keep[order] = (position <= per_class).to_numpy()
    return labelled[keep].copy()


def split_leaks(df: pd.DataFrame, *, group_by: str | None = None, near_distance: int | None = NEAR_DUPLICATE_DISTANCE) -> dict[str, int]:
    """How many duplicate groups (and `group_by` values) sit in more than one split: 0 means clean."""
    import pandas as pd

    if "split" not in df.columns:
        return {}
    assigned = df[df["split"].notna()]
    groups = pd.Series(duplicate_groups(assigned, near_distance), index=assigned.index)
    out = {"duplicate_groups_across_splits": int((assigned.groupby(groups)["split"].nunique() > 1).sum())}
    if group_by and group_by in assigned.columns:
        labelled = assigned[assigned[group_by].notna()]
        out[f"{group_by}_across_splits"] = int((labelled.groupby(group_by)["split"].nunique() > 1).sum())
    return out
