"""Connecting to Ray: a local instance started here, or a running cluster (`ray up`, KubeRay).

`RayOptions` says where and how wide a run goes; `connect(options)` starts or joins Ray once per
process and sets Ray Data's knobs (quiet logs, no progress bars of its own, bounded object
store). Nothing here imports ray at module import: ray is the optional extra `artlens[ray]`.
"""

from __future__ import annotations

import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass

INSTALL_HINT = "the Ray engine needs the ray extra: pip install 'artlens[ray]'"


class EngineError(RuntimeError):
    """The Ray engine cannot run (ray missing, cluster unreachable, the model fails to load there)."""


@dataclass(frozen=True)
class RayOptions:
    """Where a Ray run goes and how wide.

    address: None starts a local Ray instance (or joins the one `RAY_ADDRESS` names, as inside a
    KubeRay RayJob); `"auto"` joins the cluster this node belongs to; `"ray://host:10001"` goes
    through Ray Client. workers: model actors (each loads the model once). cpus_per_worker: the CPUs
    each actor asks for and the encoder threads it runs. gpus_per_worker: GPUs each actor asks for
    (with `device="cuda"`; 0 on CPU clusters). decode_cpus: CPUs per decoding task.
    batch_size: images per model call. object_store_mb: the local instance's object store (on a
    cluster the cluster's own setting holds). max_restarts / max_task_retries: how often a killed
    actor is restarted and its batch retried before the run fails.
    """

    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1.0
    decode_cpus: float = 1.0
    gpus_per_worker: float = 0.0
    batch_size: int = 32
    object_store_mb: int = 512
    max_restarts: int = 4
    max_task_retries: int = 4
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1 (got {self.workers})")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1 (got {self.batch_size})")
        if self.cpus_per_worker <= 0 or self.decode_cpus <= 0 or self.gpus_per_worker < 0:
            raise ValueError("cpus_per_worker and decode_cpus must be positive, gpus_per_worker not negative")

    def retry_args(self, map_batches) -> dict:
        """The actors' restart and retry limits, where this Ray's `map_batches` still takes them
        as remote args (Ray Data's own default, where it does not: restart and retry)."""
        import inspect

        kinds = {p.kind for p in inspect.signature(map_batches).parameters.values()}
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            return {}
        return {"max_restarts": self.max_restarts, "max_task_retries": self.max_task_retries}


def require_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError(INSTALL_HINT) from None
    return ray


def _local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def connect(options: RayOptions):
    """Start or join Ray (once per process) and set Ray Data up for a run; returns the ray module."""
    ray = require_ray()
    if not options.verbose:
        # Ray announces itself, every execution and its settings on the driver's stderr; artlens
        # reports its own lines (one per unreadable file) and Ray's errors come back as exceptions.
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)
        warnings.filterwarnings("ignore", message="The minimum number of concurrent actors", category=UserWarning)
    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or None
        common = {"include_dashboard": False, "logging_level": logging.INFO if options.verbose else logging.ERROR,
                  "configure_logging": True, "ignore_reinit_error": True}
        try:
            if address:
                ray.init(address=address, log_to_driver=options.verbose, **common)
            else:
                # Logical CPUs: every actor's share plus one decoding slot, even on a 2-core machine
                # (the actors' threads and the decoder then share the cores, as the local engine's do).
                need = options.workers * options.cpus_per_worker + options.decode_cpus
                ray.init(num_cpus=max(_local_cores(), int(need + 0.999)),
                         object_store_memory=int(options.object_store_mb) << 20,
                         log_to_driver=options.verbose, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise EngineError(f"cannot start or reach Ray at {address or 'a local instance'}: {exc}") from None
    ctx = ray.data.DataContext.get_current()
    settings = {"enable_progress_bars": options.verbose, "print_on_execution_start": options.verbose,
                # Blocks stay small (a few batches of decoded pixels): memory bounded however long the input.
                "target_max_block_size": 64 << 20}
    for key, value in settings.items():
        if hasattr(ctx, key):  # some knobs are newer than the oldest Ray the extra allows
            setattr(ctx, key, value)
    return ray


@contextmanager
def cpu_budget(cpus: float):
    """While building an encoder in an actor: the calling thread sees only `cpus` cores, so the
    encoder sizes its thread pool to the actor's share (CLIP's runner makes one session per core
    it sees) instead of to the whole node. The affinity is restored afterwards; the encoder's
    threads, started later, run on any core."""
    n = max(1, int(cpus))
    try:
        cores = sorted(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        yield
        return
    if n >= len(cores):
        yield
        return
    os.sched_setaffinity(0, cores[:n])
    try:
        yield
    finally:
        os.sched_setaffinity(0, cores)


def limit_torch_threads(cpus: float) -> None:
    import sys

    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(max(1, int(cpus)))
