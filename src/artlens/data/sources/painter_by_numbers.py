"""Painter by Numbers (Kaggle competition, WikiArt-based).

``all_data_info.csv`` (artist, date, genre, pixelsx, pixelsy, size_bytes, source, style, title,
artist_group, in_train, new_filename) with images in ``train/`` and ``test/`` (the download also
comes as ``train_1`` ... ``train_9``: files are found by name anywhere under the root).
``train_info.csv`` (filename, artist hash, title, style, genre, date) is read when
``all_data_info.csv`` is absent. ``split`` is train/test from ``in_train``; CSV rows whose file is
not on disk are counted in a note (partial downloads are common).
"""

from __future__ import annotations

from pathlib import Path

from artlens.data.sources import SourceError, records_frame, register, walk_images

CSV_NAMES = ("all_data_info.csv", "train_info.csv")


def _detect(root: Path) -> bool:
    return root.is_dir() and any((root / n).is_file() for n in CSV_NAMES)


@register(
    "painter_by_numbers",
    detect=_detect,
    description="Painter by Numbers: all_data_info.csv + train/ and test/",
    priority=22,
)
def read_painter_by_numbers(root: Path):
    import pandas as pd

    from artlens.data.taxonomy import canonical_genre, canonical_style

    csv_path = next((root / n for n in CSV_NAMES if (root / n).is_file()), None)
    if csv_path is None:
        raise SourceError(f"{root}: no all_data_info.csv or train_info.csv")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False, na_values=[""])
    name_col = "new_filename" if "new_filename" in table.columns else "filename"
    if name_col not in table.columns:
        raise SourceError(f"{csv_path}: no new_filename/filename column")
    errors: list[tuple[str, str]] = []
    on_disk: dict[str, list[Path]] = {}
    for path in walk_images(root, errors=errors):
        on_disk.setdefault(path.name, []).append(path)
    rows, missing = [], 0
    for rec in table.to_dict("records"):
        name = rec.get(name_col)
        if not isinstance(name, str):
            continue
        in_train = str(rec.get("in_train", "")).strip().lower()
        split = "train" if in_train == "true" else "test" if in_train == "false" else None
        if name_col == "filename":  # train_info.csv describes the training set only
            split = "train"
        candidates = on_disk.get(name, [])
        if split and len(candidates) > 1:  # same file name in train/ and test/: pick by split
            candidates = [p for p in candidates if p.parent.name.startswith(split)] or candidates
        if not candidates:
            missing += 1
            continue
        row = {"path": str(candidates[0]), "split": split}
        if isinstance(rec.get("style"), str):
            row["style"] = canonical_style(rec["style"])
        if isinstance(rec.get("genre"), str):
            row["genre"] = canonical_genre(rec["genre"])
        # all_data_info names the artist; train_info.csv only has an anonymised hash
        if isinstance(rec.get("artist"), str) and name_col == "new_filename":
            row["artist"] = rec["artist"]
        for extra in ("title", "date"):
            if isinstance(rec.get(extra), str):
                row[extra] = rec[extra]
        rows.append(row)
    frame = records_frame(rows, errors)
    if missing:
        frame.attrs["notes"] = [f"{missing:,} images listed in {csv_path.name} are not under {root}"]
    return frame
