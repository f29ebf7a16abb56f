"""Run the batch-independent CLIP encoder with onnxruntime: sessions, and `ClipOnnxRunner`, which
spreads a batch over single-threaded sessions.

Importing this module is cheap: onnxruntime loads inside the functions.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np

from artlens.models.clip.build import clip_onnx_path
from artlens.models.clip.spec import (
    CLIP_EMBED_DIM,
    CLIP_HIDDEN,
    CLIP_INPUT_SIZE,
    CLIP_MID_LAYERS,
    ONNX_INPUT,
    ONNX_MID_OUTPUT,
    ONNX_OUTPUT,
    clip_features,
)

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime

# Images per single-threaded run. Small slices keep each run's activations close to the core's
# own cache (fc1's output for one image is 2.4 MB): slices of 2 take less CPU per image than
# slices of 4 (benchmarks/clip_variants.py --runner; figures in the README) and give the same bits
# as any batch of >= 2.
DEFAULT_SLICE = 2


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def clip_onnx_session(
    weights: str | os.PathLike | None = None,
    *,
    threads: int | None = None,
    spin: bool = False,
    providers: list[str] | None = None,
) -> onnxruntime.InferenceSession:
    """An onnxruntime session over the batch-independent CLIP image encoder.

    Input `pixel_values` float32 (N, 3, 224, 224) from `clip_preprocess`; output `image_embeds`
    (N, 512), not normalised, and `patch_means` (N, 3 * 768) (see `clip_features`). `threads`:
    intra-op threads (default: the usable cores). `spin=False` turns off onnxruntime's busy-waiting
    between kernels: faster when other processes (image decoding workers, other jobs) share the
    cores, and little cost when they do not. For throughput over many images prefer `ClipOnnxRunner`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or _cores())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(clip_onnx_path(weights)), opts, providers=providers or ["CPUExecutionProvider"]
    )


def _check_pixels(pixel_values) -> np.ndarray:
    x = np.ascontiguousarray(pixel_values, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (3, CLIP_INPUT_SIZE, CLIP_INPUT_SIZE):
        raise ValueError(f"expected (N, 3, 224, 224) pixel values, got {x.shape}")
    return x


def clip_embed(session, pixel_values: np.ndarray) -> np.ndarray:
    """Run `session` (an InferenceSession or a `ClipOnnxRunner`) on (N, 3, 224, 224) float32:
    (N, 512) float32 raw (un-normalised) embeddings."""
    if isinstance(session, ClipOnnxRunner):
        return session(pixel_values)
    x = _check_pixels(pixel_values)
    if len(x) == 0:
        return np.zeros((0, CLIP_EMBED_DIM), np.float32)
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0]



class ClipOnnxRunner:
    """Data-parallel form of the ONNX encoder: `workers` threads, each running single-threaded
    slices of the batch through one shared session (onnxruntime's `run` is thread-safe and
    releases the GIL), with no barrier between threads after each of the model's ~500 kernels.
    The model is batch-independent, so slicing does not change results (bit for bit). Slices of
    `slice_size` images go to whichever thread is free, so a thread slowed by other work (decoding
    the next batch) takes fewer. One session holds the weights once and loads once (cold start).
    `benchmarks/clip_variants.py --runner` measures the slice sizes and session layouts.

        runner = ClipOnnxRunner()              # one thread per usable core
        emb = runner(pixel_values)             # (N, 512) float32, not normalised
        feats = runner.features(pixel_values)  # (N, CLIP_FEATURE_DIM), see `clip_features`
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, workers: int | None = None, sessions=None,
                 slice_size: int = DEFAULT_SLICE):
        from concurrent.futures import ThreadPoolExecutor

        self.slice_size = max(1, int(slice_size))
        # Ready-made sessions (other providers, tests) take turns, a thread each unless `workers`
        # says otherwise; by default one session, shared by one thread per core.
        self.sessions = list(sessions) if sessions is not None else [clip_onnx_session(weights, threads=1)]
        self.workers = max(1, int(workers or (len(self.sessions) if sessions is not None else _cores())))
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clip-onnx") if self.workers > 1 else None

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run(pixel_values, [ONNX_OUTPUT], [CLIP_EMBED_DIM])[0]

    def features(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, CLIP_FEATURE_DIM) backbone features (`clip_features` of both outputs)."""
        emb, mids = self._run(pixel_values, [ONNX_OUTPUT, ONNX_MID_OUTPUT],
                              [CLIP_EMBED_DIM, len(CLIP_MID_LAYERS) * CLIP_HIDDEN])
        return clip_features(emb, mids)

    def _run(self, pixel_values, names: list[str], dims: list[int]) -> list[np.ndarray]:
        x = _check_pixels(pixel_values)
        if len(x) == 0:
            return [np.zeros((0, d), np.float32) for d in dims]
        k = self.slice_size
        parts = [x[i : i + k] for i in range(0, len(x), k)]
        if len(parts) > 1 and len(parts[-1]) == 1:  # no single-image run where it can be avoided: onnxruntime
            parts[-2:] = [x[len(x) - k - 1 :]]      # reduces the patch means of N=1 in another order (~1e-7)
        sessions = [self.sessions[k % len(self.sessions)] for k in range(len(parts))]
        if self._pool is None or len(parts) == 1:
            outs = [s.run(names, {ONNX_INPUT: p}) for s, p in zip(sessions, parts)]
        else:
            outs = list(self._pool.map(lambda sp: sp[0].run(names, {ONNX_INPUT: sp[1]}), zip(sessions, parts)))
        if len(outs) == 1:
            return outs[0]
        return [np.concatenate([o[j] for o in outs]) for j in range(len(names))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
