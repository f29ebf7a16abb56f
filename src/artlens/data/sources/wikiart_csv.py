"""WikiArt with the ArtGAN split CSVs (cs-chan/ArtGAN, ``WikiArt Dataset``).

Images: ``root/<Style>/<artist-slug>_<title>.jpg``. Labels: per task (style, genre, artist) a
class list (``style_class.txt``: ``0 Abstract_Expressionism``) and train/val CSVs of
``Style/file.jpg,<class index>`` (``artist_train`` has a header line and a double comma; the
style/genre CSVs have CRLF line ends). The three tasks are joined by path; ``split`` comes from
one task's CSVs (``split_from``, default style). Images on disk that no CSV lists keep the style
of their folder; CSV rows whose image is not on disk are counted in a note (the shared copy
holds a subset). Artist labels also come from the file names (the ``wikiart`` name pattern).
"""

from __future__ import annotations

import re
from pathlib import Path

from artlens.data.sources import SourceError, find_file, records_frame, register, walk_images

TASKS = ("style", "genre", "artist")
_ROW = re.compile(r"^(.*[^,\s])\s*,+\s*(\d+)\s*$")  # path, one or more commas, class index


def find_artgan_files(labels_dir: str | Path) -> dict[str, Path]:
    """``{task}_{train|val|class}`` -> file, searched in `labels_dir` and up to 2 levels below."""
    labels_dir = Path(labels_dir)
    out: dict[str, Path] = {}
    for task in TASKS:
        for kind in ("train", "val", "class"):
            key = f"{task}_{kind}"
            found = find_file(labels_dir, [key, f"{key}.csv", f"{key}.txt"], max_depth=2)
            if found is not None:
                out[key] = found
    return out


def read_artgan_csv(path: str | Path) -> list[tuple[str, int]]:
    """(relative image path, class index) rows; header and blank lines skipped."""
    rows = []
    with open(path, encoding="utf-8", errors="surrogateescape", newline=None) as fh:
        for line in fh:
            m = _ROW.match(line.strip())
            if m:
                rows.append((m.group(1).strip().replace("\\", "/"), int(m.group(2))))
    return rows


def read_class_list(path: str | Path) -> dict[int, str]:
    """``0 Abstract_Expressionism`` lines (or one name per line) -> {index: name}."""
    out: dict[int, str] = {}
    with open(path, encoding="utf-8", errors="replace") as fh:
        names = [line.strip() for line in fh if line.strip()]
    for i, line in enumerate(names):
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and parts[0].isdigit():
            out[int(parts[0])] = parts[1].strip()
        else:
            out[i] = line
    return out


def _detect(root: Path) -> bool:
    return root.is_dir() and find_file(root, ["style_train.csv", "style_class.txt", "genre_train.csv"], max_depth=1) is not None


@register(
    "wikiart_csv",
    detect=_detect,
    description="WikiArt images (<Style>/<artist>_<title>.jpg) joined with the ArtGAN style/genre/artist CSVs",
    priority=35,
    options={
        "labels": "folder with the ArtGAN CSVs and class lists (default: the root itself)",
        "split_from": "task whose train/val CSVs give the split: style (default), genre or artist",
    },
    name_pattern="wikiart",
)
def read_wikiart_csv(root: Path, labels: str | None = None, split_from: str = "style"):
    if split_from not in TASKS:
        raise SourceError(f"split_from must be one of {TASKS}, not {split_from!r}")
    labels_dir = Path(labels).expanduser() if labels else root
    files = find_artgan_files(labels_dir)
    if not any(k.endswith(("_train", "_val")) for k in files):
        raise SourceError(f"{labels_dir}: no ArtGAN CSVs (style_train.csv, genre_val.csv, artist_train...) found")
    table: dict[str, dict[str, str]] = {}
    for task in TASKS:
        classes = read_class_list(files[f"{task}_class"]) if f"{task}_class" in files else {}
        for split in ("train", "val"):
            if f"{task}_{split}" not in files:
                continue
            for rel, idx in read_artgan_csv(files[f"{task}_{split}"]):
                rec = table.setdefault(rel, {})
                rec[task] = classes.get(idx, str(idx))
                if task == split_from:
                    rec["split"] = split
    errors: list[tuple[str, str]] = []
    rows, seen = [], set()
    for path in walk_images(root, errors=errors):
        rel = path.relative_to(root).as_posix()
        seen.add(rel)
        row = {"path": str(path), **table.get(rel, {})}
        if "style" not in row and "/" in rel:
            row["style"] = rel.split("/", 1)[0]
        rows.append(row)
    frame = records_frame(rows, errors)
    missing = len(set(table) - seen)
    notes = [f"{len(seen & set(table)):,} of {len(seen):,} images on disk are listed in the ArtGAN CSVs"]
    if missing:
        notes.append(f"{missing:,} images listed in the ArtGAN CSVs are not under {root}")
    frame.attrs["notes"] = notes
    return frame
