"""Refusing crafted index files: `meta.json` field by field, and the FAISS file's size fields walked
against the bytes actually there before faiss parses it (a crafted size would otherwise make it
allocate whatever the file claims). Each failure is one `RetrievalError` naming the file and field.
"""

from __future__ import annotations

import re
import struct
from pathlib import Path

from artlens.retrieval.errors import RetrievalError

FORMAT = "artlens-index"
VERSION = 1
HNSW_EF_SEARCH = 128


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a registry backbone name: no path parts
_MAX_DIM = 1 << 16


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_meta(meta, path: Path) -> None:
    """Refuse a meta.json whose fields have the wrong type or range, naming the field."""
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise RetrievalError(f"{path}: not an artlens index")

    def bad(field: str, why: str):
        raise RetrievalError(f"{path}: field {field!r} {why}")

    version = meta.get("version", 0)
    if not _is_int(version):
        bad("version", f"is not an integer ({version!r:.40})")
    if version > VERSION:
        raise RetrievalError(f"{path.parent}: index version {version} is newer than this artlens")
    count = meta.get("count")
    if not _is_int(count) or count < 0:
        bad("count", f"is not a non-negative integer ({count!r:.40})")
    dim = meta.get("dim")
    if dim is not None and (not _is_int(dim) or not 0 < dim <= _MAX_DIM):
        bad("dim", f"is not an integer in 1..{_MAX_DIM} ({dim!r:.40})")
    backbone = meta.get("backbone")
    if backbone is not None and not (isinstance(backbone, str) and _NAME.match(backbone) and ".." not in backbone):
        bad("backbone", f"is not a backbone name ({backbone!r:.40})")
    for key in ("backbone_id", "kind"):
        if meta.get(key) is not None and not isinstance(meta[key], str):
            bad(key, "is not a string")
    sums = meta.get("sha256")
    if sums is not None and not (isinstance(sums, dict) and all(isinstance(v, str) for v in sums.values())):
        bad("sha256", "is not an object of hex digests")
    mode = meta.get("default_mode")
    if mode is not None and not (isinstance(mode, str) and _NAME.match(mode)):
        bad("default_mode", f"is not a mode name ({mode!r:.40})")
    hnsw = meta.get("hnsw")
    if hnsw is not None and not (isinstance(hnsw, dict) and _is_int(hnsw.get("efSearch", HNSW_EF_SEARCH))
                                 and 0 < hnsw.get("efSearch", HNSW_EF_SEARCH) <= 1 << 16):
        bad("hnsw", "needs an integer efSearch")


class _Layout(Exception):
    pass


def check_faiss_layout(data: bytes, path: Path, dim: int | None, count: int) -> None:
    """Walk the serialised index types artlens writes (IndexFlatIP, IndexHNSWFlat) and check
    every size field against the bytes actually there, and the header against meta.json."""
    pos = 0

    def take(n: int) -> bytes:
        nonlocal pos
        if pos + n > len(data):
            raise _Layout(f"truncated at byte {pos} (needs {n} more, the file has {len(data)})")
        pos += n
        return data[pos - n:pos]

    def vector(item: int, what: str) -> int:
        (n,) = struct.unpack("<Q", take(8))
        if n > (len(data) - pos) // item:
            raise _Layout(f"{what} claims {n} items, more than the file's {len(data)} bytes hold")
        take(n * item)
        return n

    def header() -> tuple[bytes, int]:
        fourcc = take(4)
        d, ntotal = struct.unpack("<iq", take(12))
        take(17)  # two unused int64, is_trained
        (metric,) = struct.unpack("<i", take(4))
        if metric > 1:
            take(4)  # metric_arg
        if not 0 < d <= _MAX_DIM:
            raise _Layout(f"header dimension {d} is out of range")
        if dim is not None and d != dim:
            raise _Layout(f"header dimension {d}, meta.json 'dim' says {dim}")
        if ntotal != count:
            raise _Layout(f"header count {ntotal}, meta.json 'count' says {count}")
        return fourcc, d

    def flat(d: int) -> None:
        if vector(4, "vector data") != d * count:
            raise _Layout(f"vector data is not {count} x {d} floats")

    try:
        fourcc, d = header()
        if fourcc == b"IHNf":
            for item, what in ((8, "assign_probas"), (4, "cum_nneighbor_per_level"), (4, "levels"),
                               (8, "offsets"), (4, "neighbors")):
                vector(item, f"HNSW {what}")
            take(20)  # entry_point, max_level, efConstruction, efSearch, unused
            fourcc, d = header()
        if fourcc not in (b"IxFI", b"IxF2"):
            raise _Layout(f"index type {fourcc!r} is not one artlens writes")
        flat(d)
        if pos != len(data):
            raise _Layout(f"{len(data) - pos} bytes after the end of the index")
    except (_Layout, struct.error) as exc:
        raise RetrievalError(f"{path}: not a valid index file ({exc})") from None
