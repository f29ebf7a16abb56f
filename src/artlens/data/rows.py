"""The rows a command works on, from what a user points it at: a manifest (.parquet / .csv), an
image folder (scanned into a manifest), or one image file. One reader for every command, so a
folder, a manifest and a relative path in a CSV mean the same thing everywhere."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from artlens.data.images import IMAGE_EXTENSIONS

if TYPE_CHECKING:
    import pandas as pd

MANIFEST_SUFFIXES = (".parquet", ".csv")


def read_rows(source: str | os.PathLike, *, layout: str | None = None, progress: bool = False, workers: int = 2,
              image: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """`(rows, unreadable)` for `source`: a manifest's rows (any table with a `path` column;
    relative paths taken from the manifest's folder; the columns as they are),
    or a folder scanned with its layout detected (or `layout`), whose files that could not be read
    are `unreadable` (path, reason); with `image=True` also a single image file. ValueError (a
    `ManifestError` for a bad table), with the path, for anything else."""
    import pandas as pd

    from artlens.data.manifest import ManifestError, scan

    p = Path(source)
    none = pd.DataFrame(columns=["path", "reason"])
    if p.is_dir():
        res = scan(p, layout=layout, workers=workers, progress=progress)
        return res.manifest, res.errors
    suffix = p.suffix.lower()
    if p.is_file() and suffix in MANIFEST_SUFFIXES:
        try:
            df = pd.read_parquet(p) if suffix == ".parquet" else pd.read_csv(p)
        except Exception as exc:  # pyarrow and pandas raise their own types for unreadable tables
            raise ManifestError(f"{p}: not a readable {suffix[1:]} table ({exc})") from None
        if "path" not in df.columns:
            raise ManifestError(f"{p}: a manifest needs a 'path' column")
        df["path"] = [str(q if Path(q).is_absolute() else p.parent / q) for q in df["path"].astype(str)]
        return df, none
    if image and p.is_file() and suffix in IMAGE_EXTENSIONS:
        return pd.DataFrame({"path": [str(p.resolve())]}), none
    if not p.exists():
        raise ValueError(f"{p}: no such file or folder")
    what = "a manifest (.parquet/.csv), an image folder" + (" or an image" if image else "")
    raise ValueError(f"{p}: expected {what}")
