"""A plain CSV (or TSV) with a path column; label columns (style, artist, genre, origin,
generator, split) are read by name and every other column is kept as an extra.

Relative paths are resolved against the CSV's folder (or ``base``). Files listed but missing
are reported by the scan ("file not found"): a hand-made list means them to exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from artlens.data.sources import SourceError, normalise_split, records_frame, register

PATH_COLUMNS = ("path", "filepath", "file_path", "file", "filename", "image", "image_path")


def _detect(root: Path) -> bool:
    return root.is_file() and root.suffix.lower() in (".csv", ".tsv")


@register(
    "csv",
    detect=_detect,
    description="a CSV/TSV file with a path column and label columns",
    priority=10,
    options={"path_column": "column holding the image paths (default: path/file/filename/image)", "base": "folder relative paths start from (default: the CSV's folder)"},
)
def read_csv_table(root: Path, path_column: str | None = None, base: str | None = None):
    import pandas as pd

    if not root.is_file():
        raise SourceError(f"{root}: the csv layout needs a .csv file")
    sep = "\t" if root.suffix.lower() == ".tsv" else ","
    try:
        table = pd.read_csv(root, sep=sep, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise SourceError(f"{root}: cannot read the CSV ({exc})") from None
    table.columns = [str(c).strip() for c in table.columns]
    if path_column is None:
        lower = {c.lower(): c for c in table.columns}
        path_column = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    if path_column is None or path_column not in table.columns:
        raise SourceError(f"{root}: no path column (looked for {path_column or ', '.join(PATH_COLUMNS)}); columns: {list(table.columns)}")
    base_dir = Path(base).expanduser() if base else root.parent
    rows = []
    for rec in table.to_dict("records"):
        raw = rec.pop(path_column)
        if raw is None or (isinstance(raw, float)):
            continue
        p = Path(str(raw).strip()).expanduser()
        rec = {k: v for k, v in rec.items() if k != "path"}
        rec["path"] = os.path.abspath(p if p.is_absolute() else base_dir / p)
        if "split" in rec:
            rec["split"] = normalise_split(rec["split"]) if isinstance(rec["split"], str) else None
        rows.append(rec)
    return records_frame(rows)
