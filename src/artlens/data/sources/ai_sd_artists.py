"""AI images prompted "style of <artist>" with a metadata CSV (``../shared/datasets/ai-sd-artists``).

``metadata.csv`` columns: file, artist (``Jasinski, Aaron``), born, died, tags, checkpoint
(``Deliberate 2.0``), prompt, tile. Every row is ``origin=ai``; ``generator`` is the base model
and the checkpoint slug (``stable-diffusion-1.5/deliberate-2.0``); ``family`` the base model's
family (``sd1``, as in ``ai-generators``, so one family head spans both sets); ``artist`` is the
imitated artist (turned into the common display-name scheme by the scan). With ``artist_styles``
(the ArtGAN labels folder) each image also gets the most common WikiArt style of its artist, the
way AI-ArtBench labels its AI images.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from artlens.data.sources import SourceError, records_frame, register

METADATA = "metadata.csv"
BASE_MODEL = "stable-diffusion-1.5"


def generator_name(checkpoint: str | None, base: str = BASE_MODEL) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", str(checkpoint or "").strip().lower()).strip("-.")
    return f"{base}/{slug}" if slug else base


def base_family(base: str) -> str | None:
    """Generator family of a Stable Diffusion base: ...-1.5 -> sd1, ...-2.1 -> sd2, SDXL -> sdxl; else None."""
    b = str(base).strip().lower()
    if re.search(r"(?:^|[^a-z])(?:sd|stable-?diffusion)[-_ ]?xl", b):
        return "sdxl"
    m = re.search(r"(?:^|[^a-z])(?:sd|stable-?diffusion)[-_ ]?v?(\d)", b)
    return f"sd{m.group(1)}" if m else None


def _metadata(root: Path) -> Path | None:
    if root.is_file():
        return root if root.suffix.lower() == ".csv" else None
    path = root / METADATA
    return path if path.is_file() else None


def _detect(root: Path) -> bool:
    meta = _metadata(root) if root.is_dir() else None
    if meta is None:
        return False
    with open(meta, encoding="utf-8-sig", errors="replace") as fh:
        header = {h.strip().lower() for h in fh.readline().split(",")}
    return {"file", "artist", "checkpoint"} <= header


@register(
    "ai_sd_artists",
    detect=_detect,
    description="AI images with metadata.csv (file, artist, checkpoint, tags, prompt): origin=ai",
    priority=20,
    options={
        "base": f"base model the checkpoints were tuned from (default: {BASE_MODEL})",
        "artist_styles": "ArtGAN labels folder: give each image its artist's most common WikiArt style",
    },
)
def read_ai_sd_artists(root: Path, base: str = BASE_MODEL, artist_styles: str | None = None):
    import pandas as pd

    meta = _metadata(root)
    if meta is None:
        raise SourceError(f"{root}: no {METADATA}")
    table = pd.read_csv(meta, dtype=str, keep_default_na=False, na_values=[""], encoding="utf-8-sig")
    table.columns = [c.strip().lower() for c in table.columns]
    for col in ("file", "artist"):
        if col not in table.columns:
            raise SourceError(f"{meta}: no {col!r} column (columns: {list(table.columns)})")
    styles = {}
    if artist_styles:
        from artlens.data.taxonomy import artist_styles_from_artgan

        styles = artist_styles_from_artgan(artist_styles)
    from artlens.data.taxonomy import artist_display_name

    family = base_family(base)
    rows = []
    for rec in table.to_dict("records"):
        file = rec.get("file")
        if not isinstance(file, str) or not file.strip():
            continue
        artist = rec.get("artist") if isinstance(rec.get("artist"), str) else None
        row = {
            "path": os.path.abspath(meta.parent / file.strip()),
            "artist": artist,
            "origin": "ai",
            "generator": generator_name(rec.get("checkpoint") if isinstance(rec.get("checkpoint"), str) else None, base),
            "family": family,
        }
        if styles:
            row["style"] = styles.get(artist_display_name(artist))
        for extra in ("tags", "prompt", "born", "died"):
            if isinstance(rec.get(extra), str):
                row[extra] = rec[extra].replace("\\'", "'")
        rows.append(row)
    return records_frame(rows)
