"""The pieces a Ray Data pipeline runs on the workers: decoding tasks and model actors.

Rows carry `idx` (the input position) and `path` as bytes (`os.fsencode`: a file name that is not
UTF-8 survives Arrow); decoding gives `pixels` (N, 3, S, S) float32 and `error` ("" when the file
decoded). The actors hold the model once each and run the same functions the local engine runs:
`Encoder.embed_batch` and `Predictor.predict_features`, so the answers are the local engine's.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from artlens.engine.cluster import cpu_budget, limit_torch_threads


def _path(raw) -> str:
    return os.fsdecode(bytes(raw))


def decode_batch(batch: dict[str, np.ndarray], preprocess, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Read, decode and preprocess each file; an unreadable one gets zero pixels and its reason."""
    from artlens.data.images import ImageDecodeError, load_image

    n = len(batch["idx"])
    pixels = np.zeros((n, *shape), np.float32)
    errors = [""] * n
    for i, raw in enumerate(batch["path"]):
        try:
            pixels[i] = preprocess(load_image(_path(raw)))
        except ImageDecodeError as exc:
            errors[i] = exc.reason
        except Exception as exc:  # a decoder bug must not lose the batch (as in the local engine)
            errors[i] = f"could not process image ({type(exc).__name__}: {exc})"
    return {"idx": batch["idx"], "path": batch["path"], "pixels": pixels, "error": np.array(errors, dtype=object)}


def encoder_info(make) -> dict[str, Any]:
    """Build the encoder once (on a worker, so the cluster's runtime decides) and describe it: the
    preprocessing the decoding tasks apply, the shape it gives, the id vectors are stored under."""
    from PIL import Image

    enc = make()
    shape = tuple(np.asarray(enc.preprocess(Image.new("RGB", (32, 32)))).shape)
    return {"preprocess": enc.preprocess, "shape": shape, "backbone_id": enc.backbone_id, "dim": int(enc.dim),
            "name": getattr(enc, "name", None)}


SLICE = 8  # images per encoder call inside an actor: bounds the runtime's activation memory


def embed_in_slices(encoder, pixels: np.ndarray) -> np.ndarray:
    """`encoder.embed_batch` over slices of the batch (the encoders are batch-independent, so the
    vectors are those of one call; an actor's peak memory is that of a small batch)."""
    parts = [encoder.embed_batch(np.ascontiguousarray(pixels[i : i + SLICE])) for i in range(0, len(pixels), SLICE)]
    return np.concatenate(parts) if parts else np.zeros((0, encoder.dim), np.float32)


class _Worker:
    """Base of the model actors: the encoder is built once, sized to the actor's CPUs."""

    def __init__(self, cpus: float, backbone_id: str):
        self.cpus = cpus
        with cpu_budget(cpus):
            enc = self._build()
        limit_torch_threads(cpus)
        if enc.backbone_id != backbone_id:  # a node with another runtime or model build
            raise RuntimeError(f"worker on pid {os.getpid()} built encoder {enc.backbone_id}, the run uses {backbone_id}")

    def _build(self):  # pragma: no cover - abstract
        raise NotImplementedError

    @staticmethod
    def _good(batch) -> list[int]:
        return [i for i, e in enumerate(batch["error"]) if not e]


class PredictWorker(_Worker):
    """One `Predictor` per actor; returns each row's task answers as JSON."""

    def __init__(self, predictor_kwargs: dict, cpus: float, backbone_id: str):
        from artlens.predict import Predictor

        self.predictor = Predictor(**predictor_kwargs)
        super().__init__(cpus, backbone_id)

    def _build(self):
        return self.predictor.encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from artlens.data.images import load_image

        good = self._good(batch)
        out = [""] * len(batch["idx"])
        if good:
            p = self.predictor
            feats = embed_in_slices(p.encoder, batch["pixels"][good])

            def check(rows):  # banded answers must hold on a degraded copy: re-read as the local engine does
                try:
                    return p.degraded_features([load_image(_path(batch["path"][good[r]])) for r in rows])
                except Exception:  # the file changed since it was read: skip the check
                    return None

            for i, res in zip(good, p.predict_features(feats, check=check)):
                out[i] = json.dumps(res, ensure_ascii=False)
        return {"idx": batch["idx"], "error": batch["error"], "tasks": np.array(out, dtype=object)}


class EmbedWorker(_Worker):
    """One encoder per actor; returns each row's vector (NaN where the file did not decode)."""

    def __init__(self, encoder_kwargs: dict, cpus: float, backbone_id: str):
        self.encoder_kwargs = encoder_kwargs
        super().__init__(cpus, backbone_id)

    def _build(self):
        from artlens.embed import get_encoder

        self.encoder = get_encoder(**self.encoder_kwargs)
        return self.encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        good = self._good(batch)
        vectors = np.full((len(batch["idx"]), self.encoder.dim), np.nan, np.float32)
        if good:
            vectors[good] = embed_in_slices(self.encoder, batch["pixels"][good])
        return {"idx": batch["idx"], "error": batch["error"], "vector": vectors}


def _sha256_or_reason(path: str) -> tuple[str, str]:
    from artlens.embed import file_sha256

    try:
        return file_sha256(path), ""
    except IsADirectoryError:
        return "", "is a directory"
    except FileNotFoundError:
        return "", "file not found"
    except PermissionError:
        return "", "permission denied"
    except OSError as exc:
        return "", f"cannot read file ({exc.strerror or exc})"


def hash_batch(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Content hashes (the store's keys) of rows that came without one."""
    done = [_sha256_or_reason(_path(raw)) for raw in batch["path"]]
    return {"idx": batch["idx"], "sha256": np.array([h for h, _ in done], dtype=object),
            "error": np.array([e for _, e in done], dtype=object)}
