"""Turn a manifest (or a list of paths) into embeddings, computing only what the store lacks.

Decoding and preprocessing run in worker processes a few batches ahead of the encoder, so the
CPU-bound model never waits on JPEG decoding; vectors go to the store every `shard_size` images
and every `flush_s` seconds (whichever comes first), so a run killed even with `kill -9` loses at
most that much work and the next run resumes from there.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

import numpy as np

from artlens.embed.encoders import Encoder, get_encoder
from artlens.embed.store import EmbeddingStore

_HEX = set("0123456789abcdef")


@dataclass
class EmbedStats:
    backbone_id: str = ""
    dim: int = 0
    rows: int = 0
    unique: int = 0  # distinct images (by content hash) among the good rows
    reused: int = 0  # distinct images found in the store
    computed: int = 0  # distinct images embedded in this run
    failed: int = 0  # rows that could not be read
    seconds: float = 0.0  # wall time of the whole call
    compute_seconds: float = 0.0  # decoding + inference of the missing images
    shards_ignored: list = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.computed / self.compute_seconds if self.compute_seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["images_per_s"] = round(self.images_per_s, 2)
        d["seconds"] = round(self.seconds, 2)
        d["compute_seconds"] = round(self.compute_seconds, 2)
        return d


class _Result(NamedTuple):
    vectors: np.ndarray  # (len(df), dim) float32, NaN rows where ok_mask is False
    ok_mask: np.ndarray  # (len(df),) bool
    errors: Any  # DataFrame with columns path, reason (one row per failed row)


class EmbedResult(_Result):
    """`vectors, ok_mask, errors = embed_manifest(...)`; `.stats` holds the counts and speed,
    `.hashes` each row's sha256 (None where the file could not be read)."""

    stats: EmbedStats
    hashes: list


# --------------------------------------------------------------------------- worker side
_PREPROCESS: Callable | None = None


def _init_worker(preprocess: Callable | None) -> None:
    global _PREPROCESS
    _PREPROCESS = preprocess
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if sys.platform.startswith("linux"):  # die with the parent, even when it is kill -9'd
        try:
            import ctypes

            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if "torch" in sys.modules:  # transforms must not fight the encoder for the cores
        sys.modules["torch"].set_num_threads(1)


def _decode(item: tuple[int, str]) -> tuple[int, np.ndarray | None, str | None]:
    from artlens.data.images import ImageDecodeError, load_image

    idx, path = item
    try:
        return idx, _PREPROCESS(load_image(path)), None
    except ImageDecodeError as exc:
        return idx, None, exc.reason
    except Exception as exc:  # a preprocessing bug must not lose the rest of the batch
        return idx, None, f"could not process image ({type(exc).__name__}: {exc})"


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _hash(item: tuple[int, str]) -> tuple[int, str | None, str | None]:
    idx, path = item
    try:
        return idx, file_sha256(path), None
    except IsADirectoryError:
        return idx, None, "is a directory"
    except FileNotFoundError:
        return idx, None, "file not found"
    except PermissionError:
        return idx, None, "permission denied"
    except OSError as exc:
        return idx, None, f"cannot read file ({exc.strerror or exc})"


def _pool(workers: int, preprocess: Callable):
    if workers <= 0:
        return None
    # fork hands the preprocess callable to the workers without pickling it (tests use local
    # classes); elsewhere spawn needs it picklable.
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    return ctx.Pool(workers, initializer=_init_worker, initargs=(preprocess,))


# --------------------------------------------------------------------------- main entry
def given_hashes(df) -> list[str | None]:
    """The manifest's valid sha256 per row (lower case), None where it has none (to be computed)."""
    hashes: list[str | None] = [None] * len(df)
    if "sha256" in df.columns:
        for i, h in enumerate(df["sha256"]):
            if isinstance(h, str) and len(h) == 64 and set(h.lower()) <= _HEX:
                hashes[i] = h.lower()
    return hashes


def first_rows(hashes) -> dict[str, int]:
    """Each distinct hash -> its first row: one image is embedded once however often it is listed."""
    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h is not None and h not in first:
            first[h] = i
    return first


def _as_frame(df):
    import pandas as pd

    if isinstance(df, pd.DataFrame):
        if "path" not in df.columns:
            raise ValueError("the manifest has no 'path' column")
        return df
    return pd.DataFrame({"path": [str(p) for p in df]})


def _progress(enabled: bool, total: int, label: str):
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.text import Text

    class Rate(ProgressColumn):
        def render(self, task) -> Text:
            speed = task.finished_speed or task.speed
            return Text(f"{speed:5.1f} img/s" if speed else "  ... img/s", style="progress.data.speed")

    return Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        Rate(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled or total == 0,
        speed_estimate_period=60.0,
    )


def embed_manifest(
    df,
    backbone: str | Encoder,
    store_root=None,
    batch_size: int = 32,
    workers: int = 2,
    progress: bool = True,
    *,
    backbone_state=None,
    device: str = "cpu",
    shard_size: int = 256,
    prefetch: int = 2,
    compact_over: int = 64,
    refresh_s: float = 15.0,
    flush_s: float | None = 30.0,
) -> EmbedResult:
    """Embed every row of `df` (a manifest, or any sequence of image paths).

    Returns `(vectors, ok_mask, errors)`: vectors aligned with the rows (NaN where a row failed),
    and a DataFrame `path, reason` naming each unreadable file. Only images whose sha256 is not
    yet in the store for this backbone are decoded and embedded; rows without a `sha256` get one
    computed from the file. `result.stats` has the counts (computed, reused, failed) and speed.
    Every `refresh_s` seconds the store is re-read, so images that another process embedded in
    the meantime are taken from it instead of computed twice. Finished vectors are written to the
    store every `shard_size` vectors and every `flush_s` seconds (None: only by count and at the end).
    """

    t_start = time.perf_counter()
    df = _as_frame(df)
    encoder = get_encoder(backbone, backbone_state=backbone_state, device=device)
    store = EmbeddingStore(
        store_root, encoder.backbone_id, dim=encoder.dim, shard_size=shard_size, backbone=getattr(encoder, "name", None)
    )
    stats = EmbedStats(backbone_id=encoder.backbone_id, dim=encoder.dim, rows=len(df))
    stats.shards_ignored = list(store.invalid)

    paths = [str(p) for p in df["path"]]
    n = len(paths)
    hashes = given_hashes(df)
    reasons: dict[int, str] = {}

    todo_hash = [(i, paths[i]) for i in range(n) if hashes[i] is None]
    pool = None
    try:
        # 1. content hashes for rows that have none (a plain list of paths)
        if todo_hash:
            pool = _pool(min(workers, n), encoder.preprocess)
            results = pool.imap_unordered(_hash, todo_hash, chunksize=16) if pool else map(_hash, todo_hash)
            for i, h, reason in results:
                if h is None:
                    reasons[i] = reason
                else:
                    hashes[i] = h

        # 2. what the store lacks, one path per distinct image
        first_row = first_rows(hashes)
        stats.unique = len(first_row)
        have = store.contains(first_row) if first_row else np.zeros(0, bool)
        missing = [h for h, present in zip(first_row, have) if not present]
        stats.reused = len(first_row) - len(missing)

        # 3. decode in the workers, embed here, save every shard_size vectors
        if missing:
            t0 = time.perf_counter()
            if pool is None:
                pool = _pool(min(workers, len(missing)), encoder.preprocess)
            with store.autoflush(flush_s):
                bad, skipped = _compute(
                    encoder, store, missing, {h: paths[first_row[h]] for h in missing}, pool, batch_size, prefetch,
                    progress, refresh_s,
                )
            stats.compute_seconds = time.perf_counter() - t0
            stats.computed = len(missing) - len(bad) - skipped
            stats.reused += skipped
            # an unreadable image fails every row that shares its content
            for i, h in enumerate(hashes):
                if h in bad:
                    reasons[i] = bad[h]
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
        store.flush()  # on Ctrl-C too: keep every vector computed so far

    return collect_result(store, paths, hashes, reasons, stats, t_start, compact_over)


def collect_result(store: EmbeddingStore, paths: list[str], hashes: list[str | None], reasons: dict[int, str],
                   stats: EmbedStats, t_start: float, compact_over: int) -> EmbedResult:
    """Every row's vector from the store once the work is done (NaN and a reason where there is
    none); the store compacted when it holds more than `compact_over` shards. Both engines end here."""
    import pandas as pd

    if len(store.shards) > compact_over:
        store.compact()
    vectors, found = store.get([h if h is not None else "0" * 64 for h in hashes])
    ok = found & np.array([h is not None and i not in reasons for i, h in enumerate(hashes)], dtype=bool)
    vectors[~ok] = np.nan
    for i in np.flatnonzero(~ok):
        reasons.setdefault(int(i), "no embedding (not computed)")
    errors = pd.DataFrame([(paths[i], reasons[i]) for i in sorted(reasons)], columns=["path", "reason"])
    stats.failed = len(errors)
    stats.seconds = time.perf_counter() - t_start
    result = EmbedResult(vectors, ok, errors)
    result.stats = stats
    result.hashes = hashes
    return result


def _compute(
    encoder: Encoder,
    store: EmbeddingStore,
    missing: Sequence[str],
    path_of: dict[str, str],
    pool,
    batch_size: int,
    prefetch: int,
    progress: bool,
    refresh_s: float = 15.0,
) -> tuple[dict[str, str], int]:
    """Embed `missing` hashes. Returns ({hash: reason} for unreadable images, how many images
    another process saved to the store meanwhile, so that they were not computed here)."""
    bad: dict[str, str] = {}
    # Other processes may be embedding the same images into this store (a training run and an
    # evaluation started together): each goes through them in its own random order and picks up
    # the others' shards as they appear, so they share the work instead of repeating it.
    remaining = list(missing)
    random.Random().shuffle(remaining)
    remaining = deque(remaining)
    skipped = 0
    last_refresh = time.monotonic()
    chunk = max(1, batch_size // (2 * max(1, getattr(pool, "_processes", 1))))

    def next_batch() -> list[str] | None:
        nonlocal skipped, last_refresh
        if time.monotonic() - last_refresh > refresh_s:
            store.refresh()
            last_refresh = time.monotonic()
        batch = []
        while remaining and len(batch) < batch_size:
            h = remaining.popleft()
            if h in store:
                skipped += 1  # not ours to count: keeps the bar's images/s honest
                bar.update(task, total=len(missing) - skipped)
            else:
                batch.append(h)
        return batch or None

    def submit(batch):
        items = [(j, path_of[h]) for j, h in enumerate(batch)]
        if pool is None:
            return list(map(_decode, items))
        return pool.map_async(_decode, items, chunksize=chunk)

    if pool is None:
        _init_local(encoder.preprocess)
    bar = _progress(progress, len(missing), f"embedding [{encoder.name}]")
    with bar:
        task = bar.add_task("embed", total=len(missing))
        # Keep `prefetch` batches decoding while the encoder works on the current one; bounded so
        # memory stays at a few batches however long the manifest.
        queue: deque = deque()
        while len(queue) <= prefetch and (batch := next_batch()):
            queue.append((batch, submit(batch)))
        while queue:
            batch, pending = queue.popleft()
            if nxt := next_batch():
                queue.append((nxt, submit(nxt)))
            decoded = pending if isinstance(pending, list) else pending.get()
            good_idx, arrays = [], []
            for j, arr, reason in decoded:
                if arr is None:
                    bad[batch[j]] = reason
                else:
                    good_idx.append(j)
                    arrays.append(arr)
            if arrays:
                vectors = encoder.embed_batch(np.stack(arrays))
                store.add([batch[j] for j in good_idx], vectors)
            bar.advance(task, len(batch))
    return bad, skipped


def _init_local(preprocess: Callable) -> None:
    global _PREPROCESS
    _PREPROCESS = preprocess
