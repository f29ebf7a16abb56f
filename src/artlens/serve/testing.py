"""A tiny stand-in model for testing the server without CLIP weights.

`tiny_predictor()` pairs a real `ArtModel` (three small linear heads) with `ColourEncoder`, a
six-number "embedding" (mean and spread of R, G, B), so predictions are cheap and predictable:
reddish pictures are `Warm`, bluish ones `Cool`, dark ones `Dark`. `colour_explainer` draws a
Grad-CAM-like overlay from local contrast. `MemoryIndex` is a brute-force cosine index over a few
images. Nothing here is meant for real use; `artlens serve` never loads it unless asked for
(`uvicorn --factory artlens.serve.testing:tiny_app`, used by the end-to-end test and benchmark).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from artlens.models.artmodel import ArtModel, new_config

TINY_TASKS = {
    "style": ["Warm", "Cool", "Dark"],
    "genre": ["portrait", "landscape", "still_life"],
    "origin": ["human", "ai"],
}


class ColourEncoder:
    """Features = per-channel mean and standard deviation on a 32x32 thumbnail (not normalised)."""

    backbone_id = "tiny-colour-v1"
    dim = 6

    def preprocess(self, img) -> np.ndarray:
        small = img.convert("RGB").resize((32, 32))
        return (np.asarray(small, dtype=np.float32) / 255.0).transpose(2, 0, 1)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.float32)
        return np.concatenate([batch.mean(axis=(2, 3)), batch.std(axis=(2, 3))], axis=1).astype(np.float32)

    def embed_images(self, images) -> np.ndarray:
        return self.embed_batch(np.stack([self.preprocess(i) for i in images]))


def tiny_model() -> ArtModel:
    """Hand-set linear heads over `ColourEncoder` features: [mean R, G, B, std R, G, B]."""
    w_style = np.array(
        [
            [9.0, 0.0, -9.0, 0, 0, 0],  # Warm: red over blue
            [-9.0, 0.0, 9.0, 0, 0, 0],  # Cool: blue over red
            [-6.0, -6.0, -6.0, 0, 0, 0],  # Dark: low brightness
        ],
        dtype=np.float32,
    )
    b_style = np.array([0.0, 0.0, 4.5], dtype=np.float32)
    w_genre = np.array([[1, 0, 0, 3, 0, 0], [0, 2, 1, 0, 0, 0], [0, 0, 0, 0, 3, 3]], dtype=np.float32)
    w_origin = np.array([[0, 0, 0, 4, 4, 4], [0, 0, 0, -4, -4, -4]], dtype=np.float32)
    tensors = {
        "heads.style.0.weight": w_style,
        "heads.style.0.bias": b_style,
        "heads.genre.0.weight": w_genre,
        "heads.genre.0.bias": np.zeros(3, np.float32),
        "heads.origin.0.weight": w_origin,
        "heads.origin.0.bias": np.array([0.3, 0.0], np.float32),
    }
    config = new_config(
        {
            "backbone": {"name": "tiny-colour", "weights_id": "none", "feature_dim": 6},
            "preprocessing": {"input_size": 32, "resize_size": 32, "mean": [0, 0, 0], "std": [1, 1, 1],
                              "interpolation": "bilinear"},
            "tasks": [
                {"name": "style", "labels": TINY_TASKS["style"], "threshold": 0.5},
                {"name": "genre", "labels": TINY_TASKS["genre"], "threshold": 0.5},
                # A high threshold so the page's "unsure" state shows up in tests.
                {"name": "origin", "labels": TINY_TASKS["origin"], "threshold": 0.9},
            ],
            "recipe": {"name": "tiny test model (hand-set weights)"},
            "metrics": {"note": "not trained; for tests only"},
        }
    )
    return ArtModel(config, tensors)


def tiny_predictor(top_k: int = 10):
    from artlens.predict import Predictor

    return Predictor(tiny_model(), top_k=top_k, encoder=ColourEncoder())


@dataclass
class SimpleExplanation:
    overlay: Any  # PIL image
    cam: np.ndarray
    label: str
    prob: float
    task: str
    method: str = "contrast (test stand-in for Grad-CAM)"


def colour_explainer(predictor):
    """An `explainer(image, task, target_class, method)` for the tiny model: local contrast as the map."""

    def explain(image, task=None, target_class=None, method="gradcam"):
        from PIL import Image, ImageFilter

        task = task or predictor.model.tasks[0].name
        res = predictor.predict_images([image], ["query"])[0]["tasks"][task]
        label = target_class or res["top"][0]["label"]
        prob = next((t["prob"] for t in res["top"] if t["label"] == label), 0.0)
        grey = image.convert("L").resize((64, 64))
        edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES).filter(ImageFilter.GaussianBlur(4)), np.float32)
        cam = (edges - edges.min()) / max(float(np.ptp(edges)), 1e-6)
        heat = np.zeros((64, 64, 3), np.uint8)
        heat[..., 0] = (255 * cam).astype(np.uint8)
        heat[..., 2] = (255 * (1 - cam)).astype(np.uint8)
        heat_img = Image.fromarray(heat, "RGB").resize(image.size, Image.BILINEAR)
        overlay = Image.blend(image.convert("RGB"), heat_img, 0.45)
        return SimpleExplanation(overlay=overlay, cam=cam, label=label, prob=float(prob), task=task)

    return explain


class MemoryIndex:
    """Brute-force cosine search over a few images (the shape of the server's similar backend)."""

    def __init__(self, paths, encoder, labels: list[dict] | None = None):
        from artlens.data.images import load_image

        self.paths = [Path(p).resolve() for p in paths]
        self.labels = labels or [{} for _ in self.paths]
        self.encoder = encoder
        vecs = encoder.embed_images([load_image(p) for p in self.paths])
        # Colour statistics are all positive, so raw cosines are all near 1: centre them first.
        self.centre = vecs.mean(axis=0) if len(vecs) > 1 else np.zeros(vecs.shape[1], np.float32)
        self.vectors = self._unit(vecs - self.centre)
        self.backbone_id = getattr(encoder, "backbone_id", "unknown")
        self.sha256 = [hashlib.sha256(p.read_bytes()).hexdigest() for p in self.paths]

    @staticmethod
    def _unit(v: np.ndarray) -> np.ndarray:
        return (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)).astype(np.float32)

    def __len__(self) -> int:
        return len(self.paths)

    def search_image(self, image, k: int, sha256: str | None = None) -> list[dict]:
        q = self._unit(self.encoder.embed_images([image]) - self.centre)[0]
        sims = self.vectors @ q
        order = np.argsort(-sims, kind="stable")[:k]
        return [
            {
                "row": int(i),
                "similarity": float(sims[i]),
                "labels": self.labels[i],
                "duplicate": bool(sims[i] > 0.9999 or (sha256 is not None and sha256 == self.sha256[i])),
                "path": str(self.paths[i]),
            }
            for i in order
        ]

    def path_of(self, row: int) -> Path | None:
        return self.paths[row] if 0 <= row < len(self.paths) else None

    def labels_of(self, row: int) -> dict:
        return self.labels[row]

    def sample_rows(self, n: int) -> list[int]:
        return list(range(min(n, len(self.paths))))

    def info(self) -> dict:
        return {"size": len(self), "backbone": self.backbone_id, "kind": "memory"}


def tiny_app():
    """App factory for `uvicorn --factory`: the tiny model, the colour explainer, and an index over
    the package examples (plus images named by `ARTLENS_TINY_INDEX`, one path a line, if set)."""
    from artlens import examples_dir
    from artlens.serve.app import create_app

    predictor = tiny_predictor()
    paths = sorted(p for p in examples_dir().glob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    extra = os.environ.get("ARTLENS_TINY_INDEX")
    if extra:
        paths += [Path(line) for line in Path(extra).read_text().splitlines() if line.strip()]
    index = MemoryIndex(paths, predictor.encoder) if paths else None
    return create_app(
        predictor=predictor,
        explainer=colour_explainer(predictor),
        index=index,
        max_upload_mb=float(os.environ.get("ARTLENS_MAX_UPLOAD_MB", 20)),
        workers=int(os.environ.get("ARTLENS_WORKERS", 2)),
        timeout_s=float(os.environ.get("ARTLENS_TIMEOUT_S", 60)),
        **_budgets_from_env(),
    )


def _budgets_from_env() -> dict[str, Any]:
    """`ARTLENS_PIXEL_BUDGET_MPX`, `ARTLENS_REQUEST_PIXEL_BUDGET_MPX`, `ARTLENS_BODY_TIMEOUT_S`,
    `ARTLENS_MIN_UPLOAD_RATE_KB`:
    the `artlens serve` flags of the same names, for `tiny_app`."""
    out: dict[str, Any] = {}
    for env, key, scale in (("ARTLENS_PIXEL_BUDGET_MPX", "pixel_budget", 1e6),
                            ("ARTLENS_REQUEST_PIXEL_BUDGET_MPX", "request_pixel_budget", 1e6),
                            ("ARTLENS_BODY_TIMEOUT_S", "body_timeout_s", 1.0),
                            ("ARTLENS_MIN_UPLOAD_RATE_KB", "min_upload_rate_kb", 1.0)):
        if os.environ.get(env):
            value = float(os.environ[env]) * scale
            out[key] = int(value) if scale != 1.0 else value
    return out
