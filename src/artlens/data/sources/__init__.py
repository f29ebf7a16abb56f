"""Source adapters: one module per published dataset layout, behind one registry.

An adapter turns a dataset root into a table of records, one per image file: ``path`` (absolute)
plus whatever labels the layout carries (manifest label columns, ``split`` when the layout has a
published split, extras such as ``title``). It does not open images: `artlens.data.manifest.scan`
decodes, hashes and de-duplicates. Records known bad before decoding carry a reason in
``_error`` (e.g. an unreadable directory) and go straight to the scan's error report.

Adding a layout: a module here with a function decorated by :func:`register`, imported at the
bottom of this file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from artlens.data.images import IMAGE_EXTENSIONS, UNSUPPORTED_IMAGE_EXTENSIONS
from artlens.data.walk import collect_skipped, printable_path, walk_files

if TYPE_CHECKING:
    import pandas as pd


class SourceError(ValueError):
    """A dataset root that does not fit the layout asked for (or any layout)."""


@dataclass(frozen=True)
class SourceAdapter:
    name: str
    read: Callable[..., pd.DataFrame]  # read(root: Path, **options) -> records
    detect: Callable[[Path], bool]
    description: str = ""
    priority: int = 50  # detection order: lower first; the generic folder layout goes last
    options: dict[str, str] = field(default_factory=dict)  # option -> help
    name_pattern: str | None = None  # file-name pattern applied by default (e.g. "wikiart")


_REGISTRY: dict[str, SourceAdapter] = {}


def register(
    name: str,
    *,
    detect: Callable[[Path], bool],
    description: str = "",
    priority: int = 50,
    options: dict[str, str] | None = None,
    name_pattern: str | None = None,
):
    """Decorator: register `read(root, **options) -> DataFrame` as the layout `name`."""

    def deco(read: Callable[..., pd.DataFrame]):
        _REGISTRY[name] = SourceAdapter(name, read, detect, description, priority, dict(options or {}), name_pattern)
        return read

    return deco


def list_sources() -> list[str]:
    return sorted(_REGISTRY)


def get_source(name: str) -> SourceAdapter:
    key = name.replace("-", "_")
    if key not in _REGISTRY:
        raise SourceError(f"unknown layout {name!r}; known: {', '.join(list_sources())}")
    return _REGISTRY[key]


def detect_source(root: str | Path) -> SourceAdapter:
    """The first adapter (by priority) that recognises `root`."""
    root = Path(root)
    if not root.exists():
        raise SourceError(f"{root}: no such file or directory")
    for adapter in sorted(_REGISTRY.values(), key=lambda a: (a.priority, a.name)):
        try:
            if adapter.detect(root):
                return adapter
        except OSError:
            continue
    raise SourceError(f"{root}: cannot tell the layout; pass --layout ({', '.join(list_sources())})")


def read_source(root: str | Path, layout: str | None = None, **options) -> tuple[pd.DataFrame, SourceAdapter]:
    """Records of `root` read with `layout` (detected when None)."""
    root = Path(root).expanduser()
    adapter = get_source(layout) if layout else detect_source(root)
    unknown = sorted(set(options) - set(adapter.options))
    if unknown:
        accepted = ", ".join(f"{k} ({v})" for k, v in adapter.options.items()) or "none"
        raise SourceError(f"layout {adapter.name} has no option(s) {unknown}; it accepts: {accepted}")
    if not root.exists():
        raise SourceError(f"{root}: no such file or directory")
    with collect_skipped() as skipped:
        frame = adapter.read(Path(os.path.abspath(root)), **options)
    if skipped:  # folder links not followed: named in the scan's notes
        frame.attrs["notes"] = list(frame.attrs.get("notes", [])) + skipped
    if "path" not in frame.columns:
        raise SourceError(f"layout {adapter.name} returned no path column")
    return frame, adapter


# --------------------------------------------------------------------------------------------
# Helpers shared by the adapters
# --------------------------------------------------------------------------------------------


def is_image_name(name: str) -> bool:
    """A file a folder walk hands to the decoder (unsupported picture formats too: they are reported)."""
    ext = os.path.splitext(name)[1].lower()
    return not name.startswith(".") and (ext in IMAGE_EXTENSIONS or ext in UNSUPPORTED_IMAGE_EXTENSIONS)


def walk_images(root: Path, *, errors: list[tuple[str, str]] | None = None) -> list[Path]:
    """Image files under `root` (sorted, hidden entries skipped, folder links followed once each:
    see `artlens.data.walk`).

    Directories that cannot be listed are appended to `errors` as (path, reason).
    """
    walk_errors: list[tuple[str, str]] = []
    files = walk_files(root, keep=is_image_name, errors=walk_errors)
    found: list[Path] = []
    for path in files:
        if _utf8(str(path)):
            found.append(path)
        elif errors is not None:  # Parquet, JSON and pandas strings need valid UTF-8
            errors.append((printable_path(str(path)), "file name is not valid UTF-8 (rename the file)"))
    if errors is not None:
        errors.extend((printable_path(path), reason) for path, reason in walk_errors)
    return found


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def records_frame(rows: Iterable[dict], errors: Iterable[tuple[str, str]] = ()) -> pd.DataFrame:
    """Records (and pre-decode errors) as one DataFrame with at least `path` and `_error`."""
    import pandas as pd

    rows = list(rows)
    rows += [{"path": path, "_error": reason} for path, reason in errors]
    frame = pd.DataFrame(rows)
    if frame.empty:
        frame = pd.DataFrame({"path": pd.Series([], dtype="str")})
    if "_error" not in frame.columns:
        frame["_error"] = None
    return frame


def find_file(root: Path, names: Iterable[str], max_depth: int = 2) -> Path | None:
    """The first file called one of `names` in `root` or up to `max_depth` levels below it."""
    names = list(names)
    if root.is_file():
        return root if root.name in names else None
    level = [root]
    for _ in range(max_depth + 1):
        nxt: list[Path] = []
        for d in level:
            for name in names:
                if (d / name).is_file():
                    return d / name
            try:
                nxt.extend(sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")))
            except OSError:
                continue
        level = nxt
    return None


SPLIT_ALIASES = {
    "train": "train", "training": "train", "trn": "train",
    "val": "val", "valid": "val", "validation": "val", "dev": "val",
    "test": "test", "testing": "test", "tst": "test",
}


def normalise_split(value: str | None) -> str | None:
    if value is None:
        return None
    return SPLIT_ALIASES.get(str(value).strip().lower())


# --------------------------------------------------------------------------------------------
# File-name patterns: labels from names such as WikiArt's "claude-monet_water-lilies-1916.jpg"
# --------------------------------------------------------------------------------------------

NAME_PATTERNS = {
    # WikiArt (and the ArtGAN CSVs): <artist-slug>_<title-slug>
    "wikiart": "{artist}_{title}",
}

_FIELD = re.compile(r"\{(\w*)\}")


@dataclass(frozen=True)
class NamePattern:
    """A pattern like ``{artist}_{title}`` matched against file names without their extension.

    Each ``{field}`` matches as little as possible, the last one the rest of the name; ``{}`` or
    ``{_...}`` matches without keeping the value.
    """

    pattern: str
    regex: re.Pattern
    fields: tuple[str, ...]

    def parse(self, filename: str) -> dict[str, str] | None:
        stem = Path(filename).stem if Path(filename).suffix else filename
        m = self.regex.fullmatch(stem)
        if not m:
            return None
        return {k: v for k, v in m.groupdict().items() if v}


def compile_name_pattern(pattern: str) -> NamePattern:
    pattern = NAME_PATTERNS.get(pattern, pattern)
    pieces = _FIELD.split(pattern)  # literal, field, literal, field, ..., literal
    if len(pieces) < 3:
        raise SourceError(f"name pattern {pattern!r} has no {{field}}; presets: {', '.join(NAME_PATTERNS)}")
    regex, fields = "", []
    n_fields = len(pieces) // 2
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            regex += re.escape(piece)
            continue
        last = i // 2 == n_fields - 1
        body = ".+" if last else ".+?"
        if not piece or piece.startswith("_"):
            regex += f"(?:{body})"
        else:
            if piece in fields:
                raise SourceError(f"name pattern {pattern!r} names {{{piece}}} twice")
            fields.append(piece)
            regex += f"(?P<{piece}>{body})"
    return NamePattern(pattern, re.compile(regex, re.DOTALL), tuple(fields))


def labels_from_names(paths: Iterable[str], pattern: str | NamePattern) -> pd.DataFrame:
    """One row per path with the pattern's fields (null where the name does not match)."""
    import pandas as pd

    pat = pattern if isinstance(pattern, NamePattern) else compile_name_pattern(pattern)
    rows = [pat.parse(os.path.basename(p)) or {} for p in paths]
    return pd.DataFrame(rows, columns=list(pat.fields), dtype=object)


# Adapters register themselves on import.
from artlens.data.sources import (  # noqa: E402,F401
    ai_sd_artists,
    aiartbench,
    best_artworks,
    folder,
    metadata_csv,
    painter_by_numbers,
    painting91,
    plain_csv,
    wikiart_csv,
)
