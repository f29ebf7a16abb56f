"""One Ray Data pipeline for both commands: paths -> decoding tasks -> model actors -> the driver.

    paths (blocks of rows) --map_batches(decode_batch, tasks)--> pixels
          --map_batches(Worker, ActorPoolStrategy(size=workers), max_restarts, max_task_retries)-->
          answers or vectors, streamed back to the driver batch by batch

Decoding and the model run in separate stages (not fused: the actors' remote args differ), so the
decoders keep the actors fed. Blocks are a few batches long and the object store is bounded, so a
run of millions of paths holds only the batches in flight.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from artlens.engine.cluster import EngineError, RayOptions, connect
from artlens.engine.stages import decode_batch, encoder_info


def describe_encoder(make: Callable[[], Any], options: RayOptions) -> dict[str, Any]:
    """`encoder_info(make)` run once on a Ray worker that exits afterwards (its memory freed). A
    model that cannot load there is one `EngineError`."""
    ray = connect(options)
    if options.gpus_per_worker and ray.cluster_resources().get("GPU", 0) < options.gpus_per_worker:
        raise EngineError("GPU workers asked for (--device cuda), but the Ray cluster has no GPU")
    task = ray.remote(num_cpus=min(1.0, options.cpus_per_worker), num_gpus=options.gpus_per_worker,
                      max_calls=1, max_retries=1)(encoder_info)
    try:
        return ray.get(task.remote(make))
    except Exception as exc:
        cause = getattr(exc, "cause", None) or exc
        raise EngineError(f"cannot load the model on the Ray workers: {type(cause).__name__}: {cause}") from None


def rows_per_block(n: int, options: RayOptions) -> int:
    """Enough blocks for every decoder and actor to have work, each at most a few batches long."""
    b = options.batch_size
    return max(1, min(4 * b, max(b, math.ceil(n / (4 * options.workers)))))


def _blocks(paths: Sequence[str], ids, options: RayOptions):
    import pandas as pd

    ray = connect(options)
    n = len(paths)
    ids = np.arange(n, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
    raw = [os.fsencode(p) for p in paths]
    step = rows_per_block(n, options)
    return ray, ray.data.from_pandas([pd.DataFrame({"idx": ids[i : i + step], "path": raw[i : i + step]})
                                      for i in range(0, n, step)])


def _stream(ds) -> Iterator[dict[str, np.ndarray]]:
    try:
        yield from ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=1)
    except Exception as exc:  # a worker that failed past its retries, a lost cluster
        cause = getattr(exc, "cause", None) or exc
        raise EngineError(f"the Ray run failed: {type(cause).__name__}: {cause}") from exc


def map_paths(paths: Sequence[str], fn: Callable, options: RayOptions, *, ids=None) -> Iterator[dict[str, np.ndarray]]:
    """`fn` over batches of `{idx, path}` rows in Ray tasks (hashing files, say)."""
    if not len(paths):
        return
    _, ds = _blocks(paths, ids, options)
    yield from _stream(ds.map_batches(fn, batch_size=options.batch_size, batch_format="numpy", num_cpus=options.decode_cpus))


def run(
    paths: Sequence[str],
    info: dict[str, Any],
    worker_cls: type,
    worker_kwargs: dict[str, Any],
    options: RayOptions,
    *,
    ids: Sequence[int] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Yield the actors' output batches (numpy dicts with `idx`) as they finish, in any order.

    `ids`: the `idx` each path carries (default: its position)."""
    if not len(paths):
        return
    ray, ds = _blocks(paths, ids, options)
    ds = ds.map_batches(
        decode_batch,
        fn_kwargs={"preprocess": info["preprocess"], "shape": info["shape"]},
        batch_size=options.batch_size,
        batch_format="numpy",
        num_cpus=options.decode_cpus,
    )
    with warnings.catch_warnings():  # restart/retry limits are remote args, deprecated in Ray 2.60
        warnings.simplefilter("ignore", DeprecationWarning)
        ds = ds.map_batches(
            worker_cls,
            fn_constructor_kwargs={**worker_kwargs, "cpus": options.cpus_per_worker, "backbone_id": info["backbone_id"]},
            batch_size=options.batch_size,
            batch_format="numpy",
            # no more actors than batches: a small input does not start (and load the model in) idle ones
            compute=ray.data.ActorPoolStrategy(size=max(1, min(options.workers, math.ceil(len(paths) / options.batch_size)))),
            num_cpus=options.cpus_per_worker,
            num_gpus=options.gpus_per_worker or None,
            **options.retry_args(ds.map_batches),
        )
    yield from _stream(ds)
