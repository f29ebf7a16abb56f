"""A content-addressed embedding store: vectors keyed by (image sha256, backbone id).

Layout: `<root>/<backbone id>/shard-*.safetensors` (+ `backbone.json`). Each shard holds the raw
sha256 digests (N, 32) uint8 and the vectors (N, dim) float32, and records in its metadata the
backbone id and a SHA-256 checksum of both arrays. Shards are written to a temporary file,
fsynced and renamed into place, so a reader only ever sees whole shards; a shard that is
truncated or altered anyway fails the checksum, is set aside (`*.corrupt`) and its images are
simply computed again. Shard names are unique per writer, so several processes may add to the
same store at once. Queued vectors are written every `shard_size` vectors, on `flush`, and, inside
`autoflush(every_s)`, by a background thread every `every_s` seconds, so a writer killed with
`kill -9` loses at most that much work.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from artlens.paths import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

FORMAT = "artlens-embedding-shard"
VERSION = 1
SHARD_GLOB = "shard-*.safetensors"
_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class StoreError(ValueError):
    """A store used inconsistently (wrong dimension, bad hash) or a shard that is not valid."""


class ForeignShard(StoreError):
    """A valid shard of another backbone."""


def default_store_root() -> Path:
    from artlens.paths import cache_dir

    return cache_dir() / "embeddings"


def _digest_bytes(h: str) -> bytes:
    h = str(h).strip().lower()
    if not _HEX64.match(h):
        raise StoreError(f"not a hex SHA-256: {h!r}")
    return bytes.fromhex(h)


def _checksum(keys: np.ndarray, vectors: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(keys).tobytes())
    h.update(np.ascontiguousarray(vectors).tobytes())
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    # Makes the rename itself durable (power loss); harmless where directories cannot be opened.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _slug(backbone_id: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", backbone_id).strip("._") or "backbone"
    if slug != backbone_id:  # keep distinct ids distinct after sanitising
        slug = f"{slug[:80]}-{hashlib.sha256(backbone_id.encode()).hexdigest()[:8]}"
    return slug


INFO_NAME = "backbone.json"
_BACKBONE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a registry name: no path parts


def read_store_info(store_dir: str | os.PathLike) -> dict:
    """A store folder's `backbone.json`, checked field by field; `StoreError` names the bad one."""
    path = Path(store_dir) / INFO_NAME
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise StoreError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(info, dict):
        raise StoreError(f"{path}: expected a JSON object")
    bid = info.get("backbone_id")
    if not isinstance(bid, str) or not bid.strip():
        raise StoreError(f"{path}: field 'backbone_id' is not a non-empty string ({bid!r:.40})")
    name = info.get("backbone")
    if name is not None and not (isinstance(name, str) and _BACKBONE_NAME.match(name) and ".." not in name):
        raise StoreError(f"{path}: field 'backbone' is not a backbone name ({name!r:.40})")
    dim = info.get("dim")
    if dim is not None and (not isinstance(dim, int) or isinstance(dim, bool) or not 0 < dim <= 1 << 16):
        raise StoreError(f"{path}: field 'dim' is not a positive integer ({dim!r:.40})")
    return info


def write_shard(path: Path, backbone_id: str, keys: np.ndarray, vectors: np.ndarray) -> None:
    """Atomically write one shard (keys: (N,32) uint8 digests, vectors: (N,dim) float32)."""
    from safetensors.numpy import save

    keys = np.ascontiguousarray(keys, dtype=np.uint8)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    meta = {
        "format": FORMAT,
        "version": str(VERSION),
        "backbone_id": backbone_id,
        "count": str(len(keys)),
        "dim": str(vectors.shape[1]),
        "checksum": _checksum(keys, vectors),
    }
    atomic_write_bytes(path, save({"keys": keys, "vectors": vectors}, metadata=meta))
    _fsync_dir(path.parent)


def read_shard(path: Path, backbone_id: str) -> tuple[np.ndarray, np.ndarray]:
    """Read and verify a shard; raises `StoreError` with the reason when it is not valid."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as fh:
            meta = fh.metadata() or {}
            keys = fh.get_tensor("keys")
            vectors = fh.get_tensor("vectors")
    except Exception as exc:  # safetensors raises its own error types for truncated headers/data
        if not os.path.exists(path):
            raise FileNotFoundError(str(path)) from None
        raise StoreError(f"unreadable ({type(exc).__name__}: {exc})") from None
    if meta.get("format") != FORMAT:
        raise StoreError(f"not an artlens shard (format {meta.get('format')!r})")
    if meta.get("backbone_id") != backbone_id:
        raise ForeignShard(f"belongs to backbone {meta.get('backbone_id')!r}")
    if keys.dtype != np.uint8 or keys.ndim != 2 or keys.shape[1] != 32:
        raise StoreError(f"bad key array {keys.dtype} {keys.shape}")
    if vectors.dtype != np.float32 or vectors.ndim != 2 or len(vectors) != len(keys):
        raise StoreError(f"bad vector array {vectors.dtype} {vectors.shape}")
    for field, actual in (("count", len(keys)), ("dim", vectors.shape[1])):
        if str(actual) != meta.get(field):
            raise StoreError(f"metadata field {field!r} ({meta.get(field)!r:.40}) does not match the data ({actual})")
    if _checksum(keys, vectors) != meta.get("checksum"):
        raise StoreError("checksum mismatch (corrupt data)")
    return keys, vectors


class EmbeddingStore:
    """Vectors of one backbone, keyed by the images' SHA-256.

    >>> store = EmbeddingStore(root, encoder.backbone_id)
    >>> vectors, found = store.get(manifest.sha256)
    >>> store.add(new_hashes, new_vectors); store.flush()
    """

    def __init__(
        self,
        root: str | os.PathLike | None,
        backbone_id: str,
        *,
        dim: int | None = None,
        shard_size: int = 256,
        backbone: str | None = None,
    ):
        self.backbone = backbone  # the registry name, recorded in backbone.json
        self.root = Path(root) if root is not None else default_store_root()
        self.backbone_id = str(backbone_id)
        self.dir = self.root / _slug(self.backbone_id)
        self.dim = dim
        self.shard_size = max(1, int(shard_size))
        self.invalid: list[tuple[str, str]] = []  # (shard file, reason) set aside on load
        self._index: dict[bytes, int] = {}
        self._blocks: list[np.ndarray] = []  # loaded vector blocks, concatenated lazily
        self._matrix: np.ndarray | None = None
        self._loaded: set[str] = set()
        self._pending: dict[bytes, np.ndarray] = {}  # added, not yet in a shard
        self._lock = threading.RLock()  # `autoflush` writes from its own thread
        self.refresh()

    # ------------------------------------------------------------------ reading
    @property
    def shards(self) -> list[Path]:
        return sorted(self.dir.glob(SHARD_GLOB)) if self.dir.is_dir() else []

    def refresh(self) -> int:
        """Load shards written since the last look (by this or another process); returns how many."""
        with self._lock:
            return self._refresh()

    def _refresh(self) -> int:
        added = 0
        for path in self.shards:
            if path.name in self._loaded:
                continue
            try:
                keys, vectors = read_shard(path, self.backbone_id)
            except FileNotFoundError:  # removed by a concurrent compaction
                continue
            except ForeignShard as exc:  # intact, but filed under the wrong backbone: leave it be
                self.invalid.append((str(path), str(exc)))
                self._loaded.add(path.name)
                continue
            except StoreError as exc:
                self._set_aside(path, str(exc))
                continue
            self._loaded.add(path.name)
            if len(keys) == 0:
                continue
            if self.dim is not None and vectors.shape[1] != self.dim:
                raise StoreError(f"{path}: vectors of dimension {vectors.shape[1]}, but this store expects {self.dim}")
            self.dim = int(vectors.shape[1])
            self._add_block([bytes(k) for k in keys], vectors)
            added += 1
        return added

    def _set_aside(self, path: Path, reason: str) -> None:
        log.warning("embedding store: ignoring shard %s: %s (its images will be recomputed)", path, reason)
        self.invalid.append((str(path), reason))
        try:  # keep the evidence, stop re-reading it
            os.replace(path, path.with_name(path.name + ".corrupt"))
        except OSError:
            self._loaded.add(path.name)

    def _add_block(self, keys: list[bytes], vectors: np.ndarray) -> None:
        base = sum(len(b) for b in self._blocks)
        new = []
        for i, k in enumerate(keys):
            if k not in self._index:  # duplicates across shards hold equal vectors: keep the first
                self._index[k] = base + len(new)
                new.append(i)
        if new:
            self._blocks.append(vectors[new] if len(new) != len(keys) else vectors)
            self._matrix = None

    def _all(self) -> np.ndarray:
        if self._matrix is None:
            dim = self.dim or 0
            self._matrix = np.concatenate(self._blocks) if self._blocks else np.zeros((0, dim), np.float32)
            self._blocks = [self._matrix]
        return self._matrix

    def __len__(self) -> int:
        return len(self._index) + sum(1 for k in self._pending if k not in self._index)

    def __contains__(self, sha256: str) -> bool:
        try:
            key = _digest_bytes(sha256)
        except StoreError:
            return False
        return key in self._index or key in self._pending

    def contains(self, hashes: Iterable[str]) -> np.ndarray:
        """Boolean mask: which hashes have a vector (saved or pending)."""
        return np.array([h in self for h in hashes], dtype=bool)

    def get(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """`(vectors (N, dim) float32, found (N,) bool)`; rows not found are NaN."""
        with self._lock:
            self.flush()
            return self._get(hashes)

    def _get(self, hashes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        hashes = list(hashes)
        dim = self.dim or 0
        out = np.full((len(hashes), dim), np.nan, dtype=np.float32)
        found = np.zeros(len(hashes), dtype=bool)
        if not hashes or not self._index:
            return out, found
        matrix = self._all()
        rows = np.array([self._index.get(_digest_bytes(h), -1) for h in hashes], dtype=np.int64)
        found = rows >= 0
        out[found] = matrix[rows[found]]
        return out, found

    def hashes(self) -> list[str]:
        with self._lock:
            self.flush()
            return [k.hex() for k in self._index]

    # ------------------------------------------------------------------ writing
    def add(self, hashes: Sequence[str], vectors: np.ndarray) -> None:
        """Queue vectors; a shard is written every `shard_size` vectors (and on `flush`)."""
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(hashes):
            raise StoreError(f"expected {len(hashes)} vectors, got array of shape {vectors.shape}")
        keys = [_digest_bytes(h) for h in hashes]
        with self._lock:
            self._add(keys, vectors)

    def _add(self, keys: list[bytes], vectors: np.ndarray) -> None:
        if self.dim is None:
            self.dim = int(vectors.shape[1])
        elif vectors.shape[1] != self.dim:
            raise StoreError(f"vectors have dimension {vectors.shape[1]}, store {self.dir} has {self.dim}")
        for k, v in zip(keys, vectors):
            self._pending[k] = v
        if len(self._pending) >= self.shard_size:
            self.flush()

    def flush(self) -> Path | None:
        """Write the queued vectors as one shard (atomic); returns its path."""
        with self._lock:
            return self._flush()

    def _flush(self) -> Path | None:
        if not self._pending:
            return None
        keys = np.frombuffer(b"".join(self._pending), dtype=np.uint8).reshape(-1, 32)
        vectors = np.stack(list(self._pending.values())).astype(np.float32)
        path = self._new_shard_path()
        self._ensure_dir()
        write_shard(path, self.backbone_id, keys, vectors)
        self._loaded.add(path.name)
        self._add_block(list(self._pending), vectors)
        self._pending = {}
        return path

    @contextmanager
    def autoflush(self, every_s: float | None) -> Iterator["EmbeddingStore"]:
        """Within the block, a daemon thread flushes the queued vectors every `every_s` seconds
        (None or <= 0: off); the block flushes on exit, also on an exception."""
        stop = threading.Event()
        thread = None
        if every_s is not None and every_s > 0:
            def run() -> None:
                while not stop.wait(every_s):
                    try:
                        self.flush()
                    except Exception as exc:  # a full disk, say: the final flush reports it
                        log.warning("embedding store %s: timed flush failed: %s", self.dir, exc)

            thread = threading.Thread(target=run, name="embedding-store-autoflush", daemon=True)
            thread.start()
        try:
            yield self
        finally:
            stop.set()
            if thread is not None:
                thread.join()
            self.flush()

    def _new_shard_path(self) -> Path:
        # Sortable by time, unique across processes.
        return self.dir / f"shard-{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.safetensors"

    def _ensure_dir(self) -> None:
        if not self.dir.is_dir():
            self.dir.mkdir(parents=True, exist_ok=True)
        info = self.dir / INFO_NAME
        if not info.exists():
            atomic_write_text(info, json.dumps({"backbone_id": self.backbone_id, "backbone": self.backbone, "dim": self.dim}, indent=2) + "\n")

    def compact(self, min_shards: int = 2) -> Path | None:
        """Merge all valid shards into one (written before the old ones are removed)."""
        with self._lock:
            return self._compact(min_shards)

    def _compact(self, min_shards: int) -> Path | None:
        self.flush()
        self.refresh()
        old = [p for p in self.shards if p.name in self._loaded]
        if len(old) < min_shards or not self._index:
            return None
        matrix = self._all()
        keys = np.zeros((len(self._index), 32), dtype=np.uint8)
        order = np.empty(len(self._index), dtype=np.int64)
        for i, (k, row) in enumerate(self._index.items()):
            keys[i] = np.frombuffer(k, dtype=np.uint8)
            order[i] = row
        path = self._new_shard_path()
        write_shard(path, self.backbone_id, keys, matrix[order])
        for p in old:
            p.unlink(missing_ok=True)
        _fsync_dir(self.dir)
        self._loaded = {path.name}
        self._remove_stale_temp()
        return path

    def _remove_stale_temp(self, older_than_s: float = 3600.0) -> None:
        # Temp files of writers killed mid-write; young ones may belong to a live writer.
        now = time.time()
        for tmp in self.dir.glob(".*.tmp"):
            try:
                if now - tmp.stat().st_mtime > older_than_s:
                    tmp.unlink()
            except OSError:
                pass

    def __enter__(self) -> "EmbeddingStore":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.dir)!r}, {len(self)} vectors, {len(self.shards)} shards)"
