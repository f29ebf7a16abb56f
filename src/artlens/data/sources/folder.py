"""Class-per-folder: ``root/<label>/image.jpg``, nested levels allowed (``root/<split>/<genre>/``).

The levels are named with a pattern: ``{style}`` (default), ``{split}/{genre}`` (louvre-genre),
``{style}/{artist}``; ``{}`` skips a level. Without one, a root whose top folders are all split
names (train/val/test...) reads as ``{split}/{label}``, any other as ``{label}``.
"""

from __future__ import annotations

import re
from pathlib import Path

from artlens.data.sources import SPLIT_ALIASES, SourceError, normalise_split, records_frame, register, walk_images

_LEVEL = re.compile(r"^\{?(\w*)\}?$")


def parse_levels(levels: str) -> list[str | None]:
    """``{split}/{genre}`` -> ["split", "genre"]; ``{}``, ``*`` and ``_`` give None (level skipped)."""
    names: list[str | None] = []
    for part in str(levels).strip().strip("/").split("/"):
        part = part.strip()
        if part in ("*", "{}", "_", "{_}"):
            names.append(None)
            continue
        m = _LEVEL.match(part)
        if not m or not m.group(1):
            raise SourceError(f"bad level {part!r} in {levels!r}: write levels like '{{split}}/{{genre}}'")
        names.append(m.group(1))
    named = [n for n in names if n]
    if len(named) != len(set(named)):
        raise SourceError(f"levels {levels!r} name a column twice")
    return names


def default_levels(root: Path, label: str) -> list[str | None]:
    try:
        top = [p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    except OSError:
        top = []
    if not top:
        return []
    if all(name.lower() in SPLIT_ALIASES for name in top):
        return ["split", label]
    return [label]


def _detect(root: Path) -> bool:
    return root.is_dir()


@register(
    "folder",
    detect=_detect,
    description="class-per-folder: root/<label>/..., nested levels named with --levels",
    priority=90,
    options={
        "levels": "names of the folder levels, e.g. '{split}/{genre}' (default: '{style}', or '{split}/{style}' under train/val/test)",
        "label": "column for a single level of class folders (default: style)",
    },
)
def read_folder(root: Path, levels: str | None = None, label: str = "style"):
    if not root.is_dir():
        raise SourceError(f"{root}: the folder layout needs a directory")
    names = parse_levels(levels) if levels else default_levels(root, label)
    errors: list[tuple[str, str]] = []
    rows = []
    for path in walk_images(root, errors=errors):
        dirs = path.relative_to(root).parts[:-1]
        row: dict[str, str | None] = {"path": str(path)}
        for name, value in zip(names, dirs):
            if name == "split":
                row["split"] = normalise_split(value)
            elif name:
                row[name] = value
        rows.append(row)
    return records_frame(rows, errors)
