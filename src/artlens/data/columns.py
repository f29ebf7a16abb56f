"""The manifest's column contract: its columns, label columns, split names and origin values."""

from __future__ import annotations

LABEL_COLUMNS = ("style", "artist", "genre", "origin", "generator")
MANIFEST_COLUMNS = ("path", *LABEL_COLUMNS, "width", "height", "sha256", "phash", "split", "source")
STRING_COLUMNS = ("path", *LABEL_COLUMNS, "sha256", "phash", "split", "source")
SPLITS = ("train", "val", "test")
ORIGINS = ("human", "ai")
