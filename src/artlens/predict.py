"""Predictions: images -> per task the top-k labels with calibrated probabilities, or `unsure`.

`Predictor` pairs an `ArtModel` with the encoder of its backbone on a device (onnxruntime for CLIP
on the CPU, torch for CNNs and on GPUs). `iter_predict` is a three-stage pipeline: a thread pool
decodes and preprocesses files a few batches ahead, one thread runs the encoder on the current
batch, and the calling thread scores the previous batch and yields its rows, so decoding, the
encoder and the heads overlap (Pillow, numpy and onnxruntime release the GIL). A file that cannot
be read gives a row with its error and never stops the batch.
"""

from __future__ import annotations

import contextlib
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from artlens.data.images import ImageDecodeError, degraded_copy, load_image
from artlens.data.rows import MANIFEST_SUFFIXES, read_rows
from artlens.models.artmodel import ArtModel

UNSURE = "unsure"
# Files a folder walk offers to the decoder; the decoder, not the extension, decides what is an image.
IMAGE_SUFFIXES = {
    ".jpg", ".jpeg", ".jpe", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif",
    ".svg", ".heic", ".heif", ".avif", ".jfif", ".pdf",
}
# Batches decoded ahead of the encoder: enough that it never waits on a slow file, few enough to
# bound memory (3 batches of 32 CLIP inputs: 58 MB).
AHEAD = 2


def _one_blas_thread():
    """A context in which the BLAS libraries run on one thread. The loaded libraries are looked up
    each time (about a millisecond per batch): a library loaded later (torch, scipy) is caught too."""
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(limits=1, user_api="blas")
    except Exception:  # pragma: no cover - threadpoolctl missing or a BLAS it cannot steer
        return contextlib.nullcontext()


def _decode_workers(encoder) -> int:
    """Decoding threads: one per core next to a CPU encoder (whose own threads use the cores too);
    more for a GPU, which decoding must keep fed."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    if str(getattr(encoder, "device", "cpu")).startswith("cuda"):
        return max(2, min(16, cores))
    return max(1, min(4, cores))


def expand_inputs(inputs: Iterable[str | os.PathLike]) -> list[str]:
    """Images as given; folders walked recursively (sorted, hidden files skipped, folder links
    followed once each); manifests read.

    Paths that do not exist are kept so the predictor reports them as errors in order.
    """
    out: list[str] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            from artlens.data.walk import walk_files

            # Folder links are followed; loops and folders reached twice are skipped, named on stderr.
            found = walk_files(p, keep=lambda f: Path(f).suffix.lower() in IMAGE_SUFFIXES)
            out.extend(str(f) for f in found)
        elif p.suffix.lower() in MANIFEST_SUFFIXES and p.is_file():
            out.extend(read_rows(p)[0]["path"])
        else:
            out.append(str(p))
    return out


class Predictor:
    """`Predictor(model_dir).predict_paths(paths)` -> one dict per image (see docs/architecture.md)."""

    def __init__(
        self,
        model: str | os.PathLike | ArtModel | None = None,
        *,
        top_k: int = 3,
        thresholds: dict[str, float] | float | None = None,
        encoder=None,
        device: str = "cpu",
    ):
        if model is None:
            from artlens import default_model_dir

            model = default_model_dir()
        self.model = model if isinstance(model, ArtModel) else ArtModel.load(model)
        self.top_k = max(1, int(top_k))
        self.thresholds = {t.name: t.threshold for t in self.model.tasks}
        self.overridden: set[str] = set()  # tasks whose threshold the caller gave (it replaces a band)
        if isinstance(thresholds, (int, float)):
            self.thresholds = {k: float(thresholds) for k in self.thresholds}
            self.overridden = set(self.thresholds)
        elif thresholds:
            unknown = set(thresholds) - set(self.thresholds)
            if unknown:
                raise ValueError(f"--threshold names tasks the model does not have: {', '.join(sorted(unknown))}")
            self.thresholds.update({k: float(v) for k, v in thresholds.items()})
            self.overridden = set(thresholds)
        self._encoder = encoder
        self.device = device  # cpu, cuda[:N] or auto (artlens.models.device); used when the encoder is built

    @property
    def encoder(self):
        if self._encoder is None:
            from artlens.embed import model_encoder

            self._encoder = model_encoder(self.model, device=self.device)
        return self._encoder

    # ------------------------------------------------------------------ core
    def embed_images(self, images: Sequence) -> np.ndarray:
        batch = np.stack([self.encoder.preprocess(img) for img in images])
        return self.encoder.embed_batch(batch)

    def predict_features(self, features: np.ndarray,
                         check: Callable[[list[int]], np.ndarray | None] | None = None) -> list[dict[str, Any]]:
        """Per-row task results for backbone features `(N, dim)`.

        `check(rows)`: the features of degraded copies of those rows (None when they cannot be
        made); a banded answer (origin `ai`) that does not hold on its copy becomes `unsure`.
        """
        # The heads' matrix products are small: one BLAS thread does them far cheaper (README,
        # predict benchmark) than OpenBLAS's default one-per-core, whose waiting threads spin on the
        # cores the encoder and the decoders need (same results: the products are split by rows,
        # not summed differently).
        with _one_blas_thread():
            return self._predict_features(features, check)

    def _predict_features(self, features: np.ndarray, check) -> list[dict[str, Any]]:
        logits = self.model.head_logits(features)
        probs_all = self.model.probabilities(logits)
        rows: list[dict[str, Any]] = [{} for _ in range(len(features))]
        # per banded task, the label each row had before the degraded-copy check: a copy that fails
        # the check makes the answer `unsure`, yet the image itself reached the threshold
        reached: dict[str, list[str]] = {}
        for t in self.model.tasks:
            if t.attach:
                continue
            probs = probs_all[t.name]
            k = min(self.top_k, len(t.labels))
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            unknown = self.model.open_set_reject(t.name, features, logits[t.name], probs)
            banded, p_band = self.model.band_decision(t.name, probs) if t.band else (None, None)
            for i in range(len(features)):
                top = [{"label": t.labels[j], "prob": round(float(probs[i, j]), 4)} for j in order[i]]
                res: dict[str, Any]
                if banded is not None:
                    if t.name in self.overridden:  # a threshold given by the caller replaces the band
                        label = None if probs[i, order[i, 0]] < self.thresholds[t.name] else top[0]["label"]
                    else:
                        label = banded[i]
                    res = {"label": label or UNSURE, "unsure": label is None, "top": top}
                    if label is None:
                        res["reason"] = (f"weak evidence: P({t.band['label']}) {p_band[i]:.2f}, between "
                                         f"{t.band['reject']:.2f} and {t.band['accept']:.3f}")
                else:
                    unsure = bool(probs[i, order[i, 0]] < self.thresholds[t.name])
                    if unknown is not None and unknown[i]:
                        label = t.unknown.get("label", "unknown")
                    else:
                        label = UNSURE if unsure else top[0]["label"]
                    res = {"label": label, "unsure": unsure, "top": top}
                rows[i][t.name] = res
            if banded is not None and check is not None and t.band.get("check") and t.name not in self.overridden:
                reached[t.name] = [r[t.name]["label"] for r in rows]
                self._check_band(t, rows, check)
        for t in self.model.tasks:
            w = t.withhold
            if not w:
                continue
            before = reached.get(w["task"])
            for i, r in enumerate(rows):
                # only a name is withheld: `unknown artist` or `unsure` claims no maker
                if r.get(t.name, {}).get("label") not in t.labels or w["task"] not in r:
                    continue
                if r[w["task"]]["label"] == w["when"]:
                    why = f"{w['task']} says {w['when']!r}"
                elif before is not None and before[i] == w["when"]:
                    why = f"{w['task']} reaches {w['when']!r} on the image, not on its degraded copy"
                else:
                    continue
                r[t.name].update(label=UNSURE, unsure=True, reason=(
                    f"withheld: {why}; {r[t.name]['label']} is the {t.name} it resembles, not its maker"))
        for t in self.model.tasks:
            a = t.attach
            if not a:
                continue
            probs = probs_all[t.name]
            k = min(self.top_k, len(t.labels))
            order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
            for i in range(len(features)):
                parent = rows[i].get(a["task"])
                if parent is not None and (a.get("when") is None or parent["top"][0]["label"] == a["when"]):
                    parent[a["key"]] = [{"label": t.labels[j], "prob": round(float(probs[i, j]), 4)} for j in order[i]]
        return rows

    def _check_band(self, t, rows: list[dict], check: Callable[[list[int]], np.ndarray | None]) -> None:
        """Accepted answers must hold on a degraded copy (JPEG, smaller): else `unsure`."""
        band = t.band
        todo = [i for i, r in enumerate(rows) if r[t.name]["label"] == band["label"]]
        if not todo:
            return
        feats = check(todo)
        if feats is None:
            return
        _, p = self.model.band_decision(t.name, self.model.predict_proba(feats)[t.name])
        c = band["check"]
        for i, pi in zip(todo, p):
            if pi < band["accept"]:
                r = rows[i][t.name]
                r.update(label=UNSURE, unsure=True, reason=(
                    f"does not hold on a degraded copy (JPEG quality {c['jpeg_quality']}, "
                    f"{c['scale']:g}x size): P({band['label']}) {pi:.2f}"))

    def predict_images(self, images: Sequence, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        names = list(names) if names is not None else [f"<image {i}>" for i in range(len(images))]
        if not images:
            return []
        results = self.predict_features(self.embed_images(images), check=lambda rows: self.degraded_features([images[i] for i in rows]))
        return [{"path": n, "error": None, "tasks": r} for n, r in zip(names, results)]

    def iter_predict(
        self,
        paths: Sequence[str | os.PathLike],
        *,
        batch_size: int | None = None,
        on_progress: Callable[[int], None] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Yield one result per path, in order. While the encoder runs on batch n, threads decode
        batches n+1..n+AHEAD and this thread scores batch n-1. `batch_size`: images per encoder
        call (default: the encoder's, which depends on its device)."""
        paths = [str(p) for p in paths]
        if not paths:
            return
        encoder = self.encoder
        size = max(1, int(batch_size or getattr(encoder, "batch_size", 32)))
        chunks = [paths[i : i + size] for i in range(0, len(paths), size)]
        preprocess = encoder.preprocess

        def decode(path: str):
            try:
                return preprocess(load_image(path)), None
            except ImageDecodeError as exc:
                return None, exc.reason
            except Exception as exc:  # a decoder bug must not lose the batch
                return None, f"could not process image ({type(exc).__name__}: {exc})"

        decoders = ThreadPoolExecutor(_decode_workers(encoder), thread_name_prefix="artlens-decode")
        encode = ThreadPoolExecutor(1, thread_name_prefix="artlens-encode")
        decoding: deque[list[Future]] = deque()
        try:
            for chunk in chunks[: AHEAD + 1]:
                decoding.append([decoders.submit(decode, p) for p in chunk])
            previous = None
            for n, chunk in enumerate(chunks):
                decoded = [f.result() for f in decoding.popleft()]
                if n + AHEAD + 1 < len(chunks):
                    decoding.append([decoders.submit(decode, p) for p in chunks[n + AHEAD + 1]])
                good = [i for i, (arr, _) in enumerate(decoded) if arr is not None]
                feats = encode.submit(encoder.embed_batch, np.stack([decoded[i][0] for i in good])) if good else None
                if previous is not None:
                    yield from self._rows(*previous, on_progress)
                previous = (chunk, [err for _, err in decoded], good, feats)
            if previous is not None:
                yield from self._rows(*previous, on_progress)
        finally:  # also when the caller stops early: queued work is dropped, running work finishes
            decoders.shutdown(wait=True, cancel_futures=True)
            encode.shutdown(wait=True, cancel_futures=True)

    def _rows(self, chunk: list[str], errors: list[str | None], good: list[int], feats: Future | None,
              on_progress: Callable[[int], None] | None) -> Iterator[dict[str, Any]]:
        """The rows of one encoded chunk, in order: task results for the decoded files, the
        decoder's reason for the others."""
        results: dict[int, dict] = {}
        if feats is not None:
            def check(rows):
                try:
                    return self.degraded_features([load_image(chunk[good[r]]) for r in rows])
                except Exception:  # the file changed since it was read: skip the check
                    return None

            results = dict(zip(good, self.predict_features(feats.result(), check=check)))
        for i, path in enumerate(chunk):
            if i in results:
                yield {"path": path, "error": None, "tasks": results[i]}
            else:
                yield {"path": path, "error": errors[i], "tasks": {}}
        if on_progress:
            on_progress(len(chunk))

    def degraded_features(self, images: Sequence) -> np.ndarray | None:
        """Features of degraded copies (see `TaskConfig.band`), or None when no task asks."""
        checks = [t.band["check"] for t in self.model.tasks if t.band and t.band.get("check")]
        if not checks or not images:
            return None
        c = checks[0]
        side = max(16, round(self.model.preprocessing.resize_size * float(c["scale"])))
        return self.embed_images([degraded_copy(img, jpeg_quality=int(c["jpeg_quality"]), side=side) for img in images])

    def predict_paths(self, paths: Sequence[str | os.PathLike], **kw) -> list[dict[str, Any]]:
        return list(self.iter_predict(paths, **kw))

