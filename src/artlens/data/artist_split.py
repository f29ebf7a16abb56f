"""Splits for the artist task: who is *known*, who stands for the *unknown* artists, and the folds.

`open_set_split(manifest)` gives one row per distinct painting with its artist's display name, its
role (`known`: artists with >= `min_per_class` paintings, the head's classes; `unknown`: the others)
and its part (`train` / `val` / `test`): known artists' paintings are split by painting, unknown
artists *whole* (an artist is in one part only). `crossfit_folds(frame)` deals the train+val rows to
folds for out-of-fold choices (artlens.train.artist):

- `shift="period"` (the default): each known artist's paintings in another style than the
  artist's main one go to one fold together (a style of the artist's the other folds never saw), and
  the dated ones (a year in the title) in contiguous periods, one period per fold; only undated
  paintings are dealt one at a time. The held-out fold is then "other periods / styles of the same
  artists", closer to a collection the model never saw than a random painting is.
- `shift="painting"`: paintings dealt one at a time (near-duplicates together), every artist evenly.

Unknown artists go to the folds whole either way (largest first, to the emptiest fold).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from artlens.data.duplicates import duplicate_groups
from artlens.data.taxonomy import artist_labels, wikiart_name_fields

SPLIT_COL = "artist_split"  # train / val / test / None (not used)
ROLE_COL = "artist_role"  # known / unknown
GROUP_COL = "painting_group"  # near-duplicates share one (they always travel together)
FOLD_COL = "artist_fold"  # cross-fitting fold of the train+val rows (-1 elsewhere)
SHIFTS = ("period", "painting")
# A style needs this many of an artist's pool paintings to be held out as a block of its own.
MIN_STYLE_BLOCK = 10
_YEAR = re.compile(r"(?<!\d)(1[2-9]\d\d|20[0-2]\d)(?!\d)")


def title_year(title) -> float:
    """The last year-like number (1200-2029) in a title (`water lilies 1916` -> 1916), else NaN."""
    if not isinstance(title, str):
        return float("nan")
    found = _YEAR.findall(title)
    return float(found[-1]) if found else float("nan")


@dataclass
class ArtistSplit:
    frame: Any  # DataFrame: the distinct images with `artist_label`, SPLIT_COL, ROLE_COL, GROUP_COL, `row` (index in the input)
    known: list[str]  # the head's classes, sorted
    kept_out: dict[str, int]  # artist -> paintings, for artists under min_per_class
    min_per_class: int

    def counts(self) -> dict:
        f = self.frame
        out: dict[str, Any] = {
            "known_artists": len(self.known),
            "kept_out_artists": len(self.kept_out),
            "kept_out_paintings": int(sum(self.kept_out.values())),
            "min_per_class": self.min_per_class,
        }
        for role in ("known", "unknown"):
            for part in ("train", "val", "test"):
                n = int(((f[ROLE_COL] == role) & (f[SPLIT_COL] == part)).sum())
                if n:
                    out[f"{role}_{part}"] = n
        for part in ("train", "val", "test"):
            out[f"unknown_{part}_artists"] = int(f.loc[(f[ROLE_COL] == "unknown") & (f[SPLIT_COL] == part), "artist_label"].nunique())
        return out


def open_set_split(
    df,
    *,
    column: str = "artist",
    min_per_class: int = 40,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    unknown_fractions: tuple[float, float, float] = (0.4, 0.3, 0.3),
    seed: int = 0,
    human_only: bool = True,
    known: list[str] | None = None,
) -> ArtistSplit:
    """Known artists split by painting, kept-out artists split by artist.

    `fractions`: train/val/test shares of each known artist's paintings (test may be 0 for a final
    model). `unknown_fractions`: train/val/test shares of the kept-out artists' paintings, whole
    artists to each part. Exact duplicates (the same file under two styles) count once; near-
    duplicates travel together. With `human_only`, rows whose `origin` is `ai` are left out (an AI
    image "in the style of" an artist is not by that artist).
    """
    import pandas as pd

    if min_per_class < 2:
        raise ValueError("min_per_class must be at least 2")
    f = pd.DataFrame({"row": np.arange(len(df)), "path": df["path"].astype(str).to_numpy()})
    f["artist_label"] = artist_labels(df, column)
    for c in ("sha256", "phash", "title", "style"):
        if c in df.columns:
            f[c] = df[c].to_numpy()
    if "title" not in f.columns:
        f["title"] = [t.replace("-", " ") if t else None for t in wikiart_name_fields(f["path"], "title")]
    keep = np.array(f["artist_label"].notna(), dtype=bool)
    if human_only and "origin" in df.columns:
        keep &= (df["origin"].astype(str).str.lower() != "ai").to_numpy()
    f = f[keep]
    if "sha256" in f.columns:
        f = f[~(f["sha256"].notna() & f.duplicated("sha256"))]
    f = f.reset_index(drop=True)
    f[GROUP_COL] = duplicate_groups(f)

    counts = f.groupby("artist_label")[GROUP_COL].nunique()
    named = counts.index.isin(known) if known is not None else (counts >= min_per_class).to_numpy()
    known = sorted(counts[named].index)
    kept_out = {str(k): int(v) for k, v in counts[~named].sort_values(ascending=False).items()}
    if len(known) < 2:
        raise ValueError(
            f"only {len(known)} artist(s) have >= {min_per_class} paintings; lower --min-per-class "
            f"(the most frequent: {', '.join(f'{a} {n}' for a, n in counts.nlargest(3).items())})"
        )
    rng = np.random.default_rng(seed)
    split = np.full(len(f), None, dtype=object)
    role = np.where(f["artist_label"].isin(known), "known", "unknown").astype(object)

    fr = np.asarray(fractions, dtype=float)
    fr = fr / fr.sum()
    for artist in known:
        idx = np.flatnonzero((f["artist_label"] == artist).to_numpy())
        groups = np.array(sorted(set(f[GROUP_COL].iloc[idx])))
        rng.shuffle(groups)
        n = len(groups)
        n_val = max(1, int(round(n * fr[1]))) if fr[1] > 0 else 0
        n_test = max(1, int(round(n * fr[2]))) if fr[2] > 0 else 0
        part = {g: "val" for g in groups[:n_val]}
        part.update({g: "test" for g in groups[n_val : n_val + n_test]})
        for i in idx:
            split[i] = part.get(f[GROUP_COL].iloc[i], "train")

    unknown_artists = np.array(sorted(kept_out))
    rng.shuffle(unknown_artists)
    total = sum(kept_out.values())
    ufr = np.asarray(unknown_fractions, dtype=float)
    bounds = np.cumsum(ufr / ufr.sum()) * total
    part_of, acc = {}, 0
    for a in unknown_artists:  # whole artists, in random order, fill train, then val, then test
        k = int(np.searchsorted(bounds, acc, side="right"))
        part_of[a] = ("train", "val", "test")[min(k, 2)]
        acc += kept_out[a]
    is_unknown = role == "unknown"
    split[is_unknown] = [part_of[a] for a in f["artist_label"].to_numpy()[is_unknown]]
    f[SPLIT_COL] = split
    f[ROLE_COL] = role
    return ArtistSplit(frame=f, known=known, kept_out=kept_out, min_per_class=min_per_class)


def _blocks(frame, idx: np.ndarray, shift: str, n_folds: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(blocks that go to one fold whole, rows dealt one painting group at a time) of one known artist."""
    if shift == "painting":
        return [], idx
    blocks: list[np.ndarray] = []
    rest = idx
    if "style" in frame.columns:
        style = frame["style"].to_numpy()[idx].astype(str)
        names, counts = np.unique(style, return_counts=True)
        main = names[np.argmax(counts)]
        for s, n in zip(names, counts):
            if s != main and n >= MIN_STYLE_BLOCK:
                blocks.append(idx[style == s])
        rest = idx[~np.isin(style, [s for s, n in zip(names, counts) if s != main and n >= MIN_STYLE_BLOCK])]
    years = np.array([title_year(t) for t in frame["title"].to_numpy()[rest]]) if "title" in frame.columns else np.full(len(rest), np.nan)
    dated = rest[np.isfinite(years)]
    if len(dated) >= 2 * n_folds:  # contiguous periods, one per fold
        order = dated[np.argsort(years[np.isfinite(years)], kind="stable")]
        blocks += [b for b in np.array_split(order, n_folds) if len(b)]
        rest = rest[~np.isfinite(years)]
    return blocks, rest


def crossfit_folds(frame, n_folds: int = 5, seed: int = 0, shift: str = "period") -> np.ndarray:
    """A fold id (0..n_folds-1) per row of an `open_set_split` frame's train+val rows (-1 elsewhere).

    Known artists: with `shift="period"`, each artist's minority styles (>= MIN_STYLE_BLOCK paintings)
    and its dated paintings in `n_folds` contiguous periods go to folds as blocks (largest first, to
    the fold with the fewest of this artist's paintings), the undated ones one painting group at a
    time; with `shift="painting"`, all one painting group at a time. Near-duplicates share a fold.
    Kept-out artists go to the folds whole (largest first, to the fold with the fewest paintings).
    """
    if n_folds < 2:
        raise ValueError("cross-fitting needs at least 2 folds")
    if shift not in SHIFTS:
        raise ValueError(f"shift must be one of {', '.join(SHIFTS)}, not {shift!r}")
    rng = np.random.default_rng(seed)
    role = frame[ROLE_COL].to_numpy()
    pool = np.isin(frame[SPLIT_COL].to_numpy().astype(str), ["train", "val"])
    groups = frame[GROUP_COL].to_numpy()
    artists = frame["artist_label"].to_numpy()
    fold = np.full(len(frame), -1, dtype=np.int64)
    start = 0
    for artist in sorted(set(artists[pool & (role == "known")])):
        idx = np.flatnonzero(pool & (role == "known") & (artists == artist))
        blocks, loose = _blocks(frame, idx, shift, n_folds)
        filled = np.zeros(n_folds)
        for b in sorted(blocks, key=len, reverse=True):  # stable: equal sizes keep their order
            k = int(np.argmin(np.roll(filled, -start))) + start
            fold[b] = k % n_folds
            filled[k % n_folds] += len(b)
        gs = np.array(sorted(set(groups[loose])))
        rng.shuffle(gs)
        for g in gs:  # one painting group at a time to the emptiest fold, from a rotating start
            k = (int(np.argmin(np.roll(filled, -start))) + start) % n_folds
            members = loose[groups[loose] == g]
            fold[members] = k
            filled[k] += len(members)
        start = (start + len(idx)) % n_folds
    first: dict = {}
    for i in np.flatnonzero(fold >= 0):  # a near-duplicate group split by two blocks: its first member's fold
        fold[i] = first.setdefault(groups[i], fold[i])
    unknown = pool & (role == "unknown")
    names = np.array(sorted(set(artists[unknown])))
    rng.shuffle(names)
    sizes = {a: int((artists[unknown] == a).sum()) for a in names}
    filled = np.zeros(n_folds)
    of = {}
    for a in sorted(names, key=lambda a: -sizes[a]):  # stable: ties keep the shuffled order
        k = int(np.argmin(filled))
        of[a] = k
        filled[k] += sizes[a]
    fold[unknown] = [of[a] for a in artists[unknown]]
    return fold
