"""Painting-91 (Khan et al., 2014): 4,266 paintings by 91 artists, 2,338 of them with 13 styles.

Published layout (``Paintings91.zip``): ``Images/<ARTIST_NAME>_<n>.jpg``; ``Labels/`` with MATLAB
files ``image_names.mat`` (cell array of file names), ``labels.mat`` (one-hot, images x 91),
``trainset.mat`` / ``testset.mat`` (logical); ``Labels_Style/`` the same with ``_style``
suffixes (images x 13). Plain-text lists (``image_names.txt``, ``labels.txt`` with one class index
or one-hot row per line) are read as well. The 91 artist names come from the file names; the 13
style names are not stored in the files: they follow the paper's (alphabetical) order unless
``style_names`` gives them. ``split`` comes from the artist task (or ``split_from=style``).
Known issue: some archives carry mojibake in Manet's file names (``ÉDOUARD``); names are matched
after the same repair the artist slugs use.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from artlens.data.sources import SourceError, records_frame, register, walk_images

STYLES = (
    "Abstract_Expressionism", "Baroque", "Constructivism", "Cubism", "Impressionism", "Neoclassicism",
    "Pop_Art", "Post_Impressionism", "Realism", "Renaissance", "Romanticism", "Surrealism", "Symbolism",
)


def _base(root: Path) -> Path:
    return root / "Paintings91" if (root / "Paintings91").is_dir() and not (root / "Images").is_dir() else root


def _detect(root: Path) -> bool:
    base = _base(root)
    return root.is_dir() and (base / "Images").is_dir() and (base / "Labels").is_dir()


def _load(folder: Path, stem: str):
    """A label array from ``stem.mat`` (MATLAB) or ``stem.txt``; None when neither exists."""
    import numpy as np

    mat = folder / f"{stem}.mat"
    if mat.is_file():
        from scipy.io import loadmat

        data = loadmat(mat)
        keys = [k for k in data if not k.startswith("__")]
        key = stem if stem in data else keys[0]
        arr = data[key]
        if arr.dtype == object:  # cell array of strings
            return [str(np.asarray(x).ravel()[0]) if np.asarray(x).size else "" for x in arr.ravel()]
        return np.asarray(arr)
    txt = folder / f"{stem}.txt"
    if txt.is_file():
        lines = [ln.strip() for ln in txt.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        if stem.startswith("image_names"):
            return lines
        return np.asarray([[float(v) for v in re.split(r"[\s,]+", ln)] for ln in lines])
    return None


def _class_indices(labels) -> list[int]:
    import numpy as np

    arr = np.asarray(labels)
    if arr.ndim == 2 and arr.shape[1] > 1:  # one-hot
        return [int(i) for i in arr.argmax(axis=1)]
    return [int(v) - (1 if arr.min() >= 1 else 0) for v in arr.ravel()]  # MATLAB 1-based indices


def _task(folder: Path, suffix: str):
    names = _load(folder, f"image_names{suffix}")
    labels = _load(folder, f"labels{suffix}")
    if names is None or labels is None:
        return None
    idx = _class_indices(labels)
    if len(idx) != len(names):
        raise SourceError(f"{folder}: {len(names)} image names but {len(idx)} labels")
    train = _load(folder, f"trainset{suffix}")
    split = ["train" if bool(t) else "test" for t in train.ravel()] if train is not None else [None] * len(names)
    return list(zip(names, idx, split))


def _key(name: str) -> str:
    from artlens.data.taxonomy import fix_mojibake

    return fix_mojibake(name).lower().replace(".jpeg", ".jpg")


def _artist_of(filename: str) -> str:
    return re.sub(r"[_\s-]*\(?\d+\)?$", "", Path(filename).stem)


@register(
    "painting91",
    detect=_detect,
    description="Painting-91: Images/ + Labels/ (artist) and Labels_Style/ (.mat or .txt lists)",
    priority=30,
    options={"style_names": "comma-separated names of the 13 style classes, in label order", "split_from": "artist (default) or style"},
)
def read_painting91(root: Path, style_names: str | None = None, split_from: str = "artist"):
    from artlens.data.taxonomy import fix_mojibake

    base = _base(root)
    styles = [s.strip() for s in style_names.split(",")] if style_names else list(STYLES)
    artist_rows = _task(base / "Labels", "") or []
    style_rows = _task(base / "Labels_Style", "_style") if (base / "Labels_Style").is_dir() else None
    if not artist_rows and not style_rows:
        raise SourceError(f"{base}: no image_names/labels lists in Labels/ or Labels_Style/")
    # Artist class index -> name: the most common file-name prefix in the class.
    prefixes: dict[int, Counter] = {}
    for name, idx, _ in artist_rows:
        prefixes.setdefault(idx, Counter())[_artist_of(fix_mojibake(name))] += 1
    artist_names = {idx: c.most_common(1)[0][0] for idx, c in prefixes.items()}
    labels: dict[str, dict] = {}
    for name, idx, split in artist_rows:
        rec = labels.setdefault(_key(name), {})
        rec["artist"] = artist_names[idx]
        if split_from == "artist":
            rec["split"] = split
    for name, idx, split in style_rows or []:
        rec = labels.setdefault(_key(name), {})
        if idx >= len(styles):
            raise SourceError(f"style index {idx} but only {len(styles)} style names: give style_names")
        rec["style"] = styles[idx]
        if split_from == "style":
            rec["split"] = split
    errors: list[tuple[str, str]] = []
    rows, matched = [], set()
    for path in walk_images(base / "Images", errors=errors):
        key = _key(path.name)
        rec = labels.get(key)
        row = {"path": str(path), **(rec or {"artist": _artist_of(fix_mojibake(path.name))})}
        matched.add(key)
        rows.append(row)
    frame = records_frame(rows, errors)
    missing = len(set(labels) - matched)
    if missing:
        frame.attrs["notes"] = [f"{missing:,} images in the label lists are not in {base / 'Images'}"]
    return frame
