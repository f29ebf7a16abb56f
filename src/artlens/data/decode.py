"""Decoding and hashing image files for a scan, in a process pool that survives a crashing decoder."""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Iterator, Sequence

from artlens.data.images import MAX_PIXELS, ImageDecodeError, probe_image_bytes, read_image_file

DEFAULT_WORKERS = 2
_PARALLEL_MIN = 48  # fewer files than this decode in-process: a pool costs more than it saves


def probe_file(path: str, max_pixels: int = MAX_PIXELS) -> tuple[str, str | None, int, int, str, str]:
    """(path, error reason or None, width, height, sha256, phash). Never raises."""
    try:
        import imagehash

        data = read_image_file(path)
        sha = hashlib.sha256(data).hexdigest()
        probe = probe_image_bytes(data, path, max_pixels=max_pixels)
        return (path, None, probe.width, probe.height, sha, str(imagehash.phash(probe.thumbnail)))
    except ImageDecodeError as exc:
        return (path, exc.reason, 0, 0, "", "")
    except Exception as exc:  # a bug must not end the scan either; say what it was
        return (path, f"unexpected error: {type(exc).__name__}: {exc}", 0, 0, "", "")


def _pool_context():
    import multiprocessing as mp
    import threading

    # fork is the fastest start and, unlike spawn/forkserver, does not re-run the caller's
    # __main__ (a script calling scan() at top level works), but it is only safe while this
    # process runs a single thread; otherwise forkserver (scripts then need the __main__ guard).
    methods = mp.get_all_start_methods()
    if sys.platform.startswith("linux") and threading.active_count() == 1 and "fork" in methods:
        return mp.get_context("fork")
    if sys.platform != "win32" and "forkserver" in methods:
        return mp.get_context("forkserver")
    return mp.get_context("spawn")


def decode_files(
    paths: Sequence[str],
    *,
    workers: int = DEFAULT_WORKERS,
    max_pixels: int = MAX_PIXELS,
    chunksize: int = 16,
) -> Iterator[tuple[str, str | None, int, int, str, str]]:
    """`probe_file` over `paths`, in order, in a process pool of `workers`.

    A worker that dies (a decoder crash, the OOM killer) breaks the pool: the files already done
    are kept, the rest are retried one at a time until the file that kills a worker is found,
    reported as an error, and the scan goes on in a fresh pool.
    """
    pending = list(paths)
    if workers <= 1 or len(pending) < _PARALLEL_MIN:
        for p in pending:
            yield probe_file(p, max_pixels)
        return
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    ctx = _pool_context()
    crash = "the decoder crashed on this file (its worker process died)"
    careful = False
    while pending:
        if not careful:
            done = 0
            try:
                with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                    for res in pool.map(probe_file, pending, itertools.repeat(max_pixels), chunksize=chunksize):
                        done += 1
                        yield res
                pending = []
            except BrokenProcessPool:
                pending = pending[done:]
                careful = True
            continue
        # One file at a time in a one-worker pool: the file in flight when it breaks is the one.
        # The culprit is among the files that were in flight, so this lasts a few dozen files.
        budget = workers * (chunksize + 1) + 2
        try:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
                while pending and budget > 0:
                    res = pool.submit(probe_file, pending[0], max_pixels).result()
                    pending = pending[1:]
                    budget -= 1
                    yield res
        except BrokenProcessPool:
            yield (pending[0], crash, 0, 0, "", "")
            pending = pending[1:]
        careful = False
