"""Folder walks: every recursive listing of a folder in artlens goes through `walk_files`.

Directory symlinks are followed (a class folder is often a link to a shared disk), with loop
protection: each real directory is walked once, so a link back to an ancestor or to a folder
already walked is skipped and named, and a file reachable through two links is listed once.
Hidden entries (names starting with ".") are skipped; order is sorted, depth first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

log = logging.getLogger(__name__)

# Where skipped-link messages go: a list while `collect_skipped` is active (a scan turns them into
# notes in its report), else a logged warning (one line on stderr from the CLI).
_collected: ContextVar[list[str] | None] = ContextVar("artlens_walk_skipped", default=None)


@contextmanager
def collect_skipped() -> Iterator[list[str]]:
    """Within the block, walks append their "skipped symlink ..." messages to the yielded list."""
    messages: list[str] = []
    token = _collected.set(messages)
    try:
        yield messages
    finally:
        _collected.reset(token)


def printable_path(path: str) -> str:
    """A path whose undecodable bytes (surrogate escapes) are shown as U+FFFD."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _skipped(message: str) -> None:
    messages = _collected.get()
    if messages is None:
        log.warning(message)
    else:
        messages.append(message)


def walk_files(
    root: str | os.PathLike,
    *,
    keep: Callable[[str], bool] | None = None,
    errors: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Files under `root` whose name passes `keep`, as reached (a link's own path, not its target).

    Directories that cannot be listed are appended to `errors` as (path, reason). Entries that
    cannot be stat'ed (broken links) are kept, so the reader reports them.
    """
    root = Path(root)
    try:
        st = root.stat()
    except OSError as exc:
        if errors is not None:
            errors.append((str(root), f"cannot list directory ({exc.strerror or exc})"))
        return []
    root_id = (st.st_dev, st.st_ino)
    seen_dirs = {root_id: str(root)}
    seen_files: set[tuple[int, int]] = set()
    twice = 0
    found: list[Path] = []
    # Explicit stack (not recursion): a hostile tree can be deeper than Python's recursion limit.
    stack: list[tuple[str, frozenset]] = [(str(root), frozenset([root_id]))]
    while stack:
        dirpath, ancestors = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
        except OSError as exc:
            if errors is not None:
                errors.append((dirpath, f"cannot list directory ({exc.strerror or exc})"))
            continue
        subdirs: list[tuple[str, frozenset]] = []
        for entry in entries:
            try:
                is_dir = entry.is_dir()  # follows links
            except OSError:
                is_dir = False
            if is_dir:
                try:
                    sub = entry.stat()
                except OSError:
                    continue
                key = (sub.st_dev, sub.st_ino)
                if key in ancestors:
                    _skipped(f"skipped symlink loop: {printable_path(entry.path)} (points to {printable_path(seen_dirs[key])})")
                elif key in seen_dirs:
                    _skipped(f"skipped folder reached twice: {printable_path(entry.path)} (same as {printable_path(seen_dirs[key])})")
                else:
                    seen_dirs[key] = entry.path
                    subdirs.append((entry.path, ancestors | {key}))
                continue
            if keep is not None and not keep(entry.name):
                continue
            try:
                fst = entry.stat()
            except OSError:
                found.append(Path(entry.path))
                continue
            key = (fst.st_dev, fst.st_ino)
            if key in seen_files:
                twice += 1
                continue
            seen_files.add(key)
            found.append(Path(entry.path))
        stack.extend(reversed(subdirs))  # popped in sorted order
    if twice:
        _skipped(f"{twice:,} file(s) under {printable_path(str(root))} reached twice through links were listed once")
    return found
