"""Best Artworks of All Time (Kaggle ``ikarus777/best-artworks-of-all-time``).

``artists.csv`` (id, name, years, genre, nationality, bio, wikipedia, paintings) and
``images/<Artist_Name>/<Artist_Name>_<n>.jpg`` (the download nests it as ``images/images/``);
``resized/`` holds the same works flat (``<Artist_Name>_<n>.jpg``) and is read when ``images/``
is absent. The artist comes from the folder or file name, matched to artists.csv by slug; the
CSV's ``genre`` (the artist's movements, e.g. ``Impressionism,Post-Impressionism``) goes to
``movements``, and to ``style`` when it names a single one.
"""

from __future__ import annotations

import re
from pathlib import Path

from artlens.data.sources import SourceError, records_frame, register, walk_images


def _detect(root: Path) -> bool:
    return root.is_dir() and (root / "artists.csv").is_file() and ((root / "images").is_dir() or (root / "resized").is_dir())


def _image_root(root: Path) -> tuple[Path, bool]:
    """(folder, whether it is flat)."""
    images = root / "images"
    if images.is_dir():
        while (images / "images").is_dir():
            images = images / "images"
        return images, False
    resized = root / "resized"
    while (resized / "resized").is_dir():
        resized = resized / "resized"
    return resized, True


@register(
    "best_artworks",
    detect=_detect,
    description="Best Artworks of All Time: artists.csv + images/<Artist_Name>/",
    priority=25,
)
def read_best_artworks(root: Path):
    import pandas as pd

    from artlens.data.taxonomy import artist_slug, canonical_style

    if not (root / "artists.csv").is_file():
        raise SourceError(f"{root}: no artists.csv")
    artists = pd.read_csv(root / "artists.csv", dtype=str, keep_default_na=False)
    info = {}
    for rec in artists.to_dict("records"):
        slug = artist_slug(rec.get("name"))
        if slug:
            info[slug] = rec
    folder, flat = _image_root(root)
    if not folder.is_dir():
        raise SourceError(f"{root}: no images/ or resized/ folder")
    errors: list[tuple[str, str]] = []
    rows = []
    for path in walk_images(folder, errors=errors):
        rel = path.relative_to(folder).parts
        raw_artist = re.sub(r"_\d+$", "", path.stem) if flat or len(rel) < 2 else rel[0]
        row = {"path": str(path), "artist": raw_artist.replace("_", " ")}
        rec = info.get(artist_slug(raw_artist) or "")
        if rec:
            row["artist"] = rec.get("name") or row["artist"]
            movements = [canonical_style(m) for m in str(rec.get("genre", "")).split(",") if m.strip()]
            row["movements"] = ",".join(m for m in movements if m) or None
            if len(movements) == 1:
                row["style"] = movements[0]
            for extra in ("nationality", "years"):
                if rec.get(extra):
                    row[extra] = rec[extra]
        rows.append(row)
    return records_frame(rows, errors)
