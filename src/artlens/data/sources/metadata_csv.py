"""A folder of images described by a ``metadata.csv`` with a ``file`` and an ``origin`` column
(``../shared/datasets/ai-generators``, ``human-sketches``, ``human-photos``).

``file`` is relative to the CSV's folder (or absolute); ``origin`` must be human or ai (the usual
synonyms such as real/fake are accepted): a row with any other value is reported as an error
naming the CSV line and left out. Every other column is kept: ``generator``, ``family``
(generator family, e.g. sd1, flux), ``kind`` (human kind, e.g. "pencil sketch"), ``artist``
(the imitated artist; the scan turns it into the common display-name scheme), ``prompt``...
The CSV's ``source`` (where the images came from) becomes ``provenance``: the manifest's
``source`` is the layout name. Files listed but missing are reported by the scan ("file not
found"), as for the other metadata readers.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from artlens.data.sources import SourceError, normalise_split, records_frame, register, walk_images

METADATA = "metadata.csv"
# CSV columns whose names the manifest computes itself: renamed so that neither side is lost
RENAMED = {"source": "provenance", "width": "metadata_width", "height": "metadata_height",
           "sha256": "metadata_sha256", "phash": "metadata_phash", "path": "metadata_path"}


def _metadata(root: Path) -> Path | None:
    if root.is_file():
        return root if root.suffix.lower() == ".csv" else None
    path = root / METADATA
    return path if path.is_file() else None


def _header(meta: Path) -> list[str]:
    with open(meta, encoding="utf-8-sig", errors="replace", newline="") as fh:
        return [h.strip().lower() for h in next(csv.reader(fh), [])]


def _detect(root: Path) -> bool:
    meta = _metadata(root) if root.is_dir() else None
    return meta is not None and {"file", "origin"} <= set(_header(meta))


@register(
    "metadata_csv",
    detect=_detect,
    description="images with metadata.csv (file, origin human/ai, generator, family, kind, artist, prompt, source...)",
    # after ai_sd_artists (20), whose metadata.csv has no origin column: what it reads stays its own
    priority=21,
)
def read_metadata_csv(root: Path):
    from artlens.data.columns import ORIGINS
    from artlens.data.manifest import normalise_origin

    meta = _metadata(root)
    if meta is None:
        raise SourceError(f"{root}: no {METADATA}")
    try:
        with open(meta, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip().lower() for h in next(reader, [])]
            missing = [c for c in ("file", "origin") if c not in header]
            if missing:
                raise SourceError(f"{meta}: no {missing} column(s) (columns: {header})")
            records = []
            line = reader.line_num + 1
            for values in reader:
                records.append((line, values))
                line = reader.line_num + 1  # a quoted field may span lines
    except (UnicodeDecodeError, csv.Error) as exc:
        raise SourceError(f"{meta}: cannot read the CSV ({exc})") from None

    rows, errors = [], []
    for line, values in records:
        if not any(v.strip() for v in values):
            continue
        rec = {col: v.strip() for col, v in zip(header, values) if v.strip()}
        file = rec.pop("file", None)
        if not file:
            errors.append((str(meta), f"{meta.name} line {line}: no file name (row left out)"))
            continue
        p = Path(file).expanduser()
        path = os.path.abspath(p if p.is_absolute() else meta.parent / p)
        raw_origin = rec.pop("origin", None)
        origin = normalise_origin(raw_origin)
        if origin not in ORIGINS:
            shown = repr(raw_origin) if raw_origin else "empty"
            errors.append((path, f"{meta.name} line {line}: origin {shown} is not human or ai (row left out)"))
            continue
        row = {"path": path, "origin": origin}
        for col, value in rec.items():
            if col == "split":
                row["split"] = normalise_split(value)
            elif col and not col.startswith("_"):
                row[RENAMED.get(col, col)] = value
        rows.append(row)

    frame = records_frame(rows, errors)
    if meta.parent.is_dir():
        listed = {r["path"] for r in rows} | {p for p, _ in errors}
        unlisted = sum(1 for p in walk_images(meta.parent) if str(p) not in listed)
        if unlisted:
            frame.attrs["notes"] = [f"{unlisted:,} images under {meta.parent} are not listed in {meta.name} (not read)"]
    return frame
