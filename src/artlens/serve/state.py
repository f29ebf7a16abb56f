"""What the server holds: its settings, the loaded model and features (`ServerState`, built once at
start-up by `load_state`), and the shared machinery requests use (`Runtime`: worker pool, work
gate, pixel budget, counters, thumbnail cache)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from artlens.data.images import MAX_PIXELS
from artlens.serve.backends import Catalogue, Lazy, LruBytes, load_faiss_backend
from artlens.serve.budget import DEFAULT_BODY_BUDGET, DEFAULT_PIXEL_BUDGET, DEFAULT_REQUEST_PIXEL_BUDGET, PixelBudget
from artlens.serve.collection import THUMB_CACHE
from artlens.serve.guard import ApiError, QueueStats, WorkerPool, WorkGate

TOP_K_MAX = 10


@dataclass
class Settings:
    max_upload_bytes: int
    workers: int
    timeout_s: float
    max_files: int = 16
    max_queue: int = 256
    max_pixels: int = MAX_PIXELS
    cors_origins: list[str] | None = None
    pixel_budget: int = DEFAULT_PIXEL_BUDGET  # decoded pixels held at once, all requests together
    request_pixel_budget: int = DEFAULT_REQUEST_PIXEL_BUDGET  # decoded pixels over one request's pictures
    body_timeout_s: float = 5.0  # an upload that sends nothing for this long is dropped (408)
    min_upload_rate: float = 1000.0  # bytes/s an upload must keep up after body_timeout_s (408); 0: off
    body_budget_bytes: int = DEFAULT_BODY_BUDGET  # request-body bytes held at once

    def __post_init__(self) -> None:
        self.pixel_budget = max(1, int(self.pixel_budget))
        self.request_pixel_budget = max(1, int(self.request_pixel_budget))

    @property
    def max_inflight(self) -> int:
        # Requests admitted to model work at once: enough to keep the workers fed, no more.
        return 2 * self.workers


class Runtime:
    """The shared parts every request uses; the pool and the gate are made when the app starts."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.stats = QueueStats()
        self.pixels = PixelBudget(settings.pixel_budget)
        self.thumbs = LruBytes()
        self.collection_thumbs = LruBytes(THUMB_CACHE)  # small JPEGs of index rows, by row id
        self.pool: WorkerPool | None = None
        self.gate: WorkGate | None = None

    def start(self) -> None:
        self.pool = WorkerPool(self.settings.workers)
        self.gate = WorkGate(self.settings.max_inflight, self.settings.max_queue, self.stats)

    def stop(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


@dataclass
class Feature:
    available: bool
    status: int = 200  # 501 (code missing) or 503 (not loaded / failed) when unavailable
    detail: str | None = None


@dataclass
class ServerState:
    predictor: Any
    model_info: dict[str, Any]
    catalogue: Catalogue
    index: Any = None
    explain: Callable | None = None
    features: dict[str, Feature] = field(default_factory=dict)
    explain_model: Lazy | None = None  # the Grad-CAM model, built in the background
    started: float = field(default_factory=time.time)

    def feature_info(self) -> dict[str, dict[str, Any]]:
        out = {k: {**asdict(v), "ready": v.available} for k, v in self.features.items()}
        lazy = self.explain_model
        if lazy is not None and out.get("explain", {}).get("available"):
            if lazy.error is not None:
                out["explain"] = {"available": False, "status": 503, "ready": False,
                                  "detail": f"Grad-CAM could not be set up for this model: {lazy.error}"}
            else:
                out["explain"]["ready"] = lazy.ready
        return out


def _is_predictor(obj) -> bool:
    return hasattr(obj, "predict_images") and hasattr(obj, "model")


def _model_info(predictor, model_dir: Path | None) -> dict[str, Any]:
    model = predictor.model
    cfg = model.config
    name = cfg.get("name") or (model_dir.name if model_dir else None) or cfg.get("recipe", {}).get("name") or model.backbone_name
    card = None
    if model_dir is not None and (model_dir / "MODEL_CARD.md").is_file():
        card = (model_dir / "MODEL_CARD.md").read_text(encoding="utf-8", errors="replace")[:50_000]
    thresholds = getattr(predictor, "thresholds", {})
    overrides = getattr(predictor, "overridden", set())  # stand-ins may lack it; a given threshold replaces a task's band
    return {
        "name": name,
        "mode": model.mode,
        "backbone": cfg.get("backbone", {}),
        "created": cfg.get("created"),
        "artlens_version": cfg.get("artlens_version"),
        "tasks": [
            {
                "name": t.name,
                "column": t.column,
                "labels": t.labels,
                "threshold": thresholds.get(t.name, t.threshold),
                "temperature": t.temperature,
                "unknown": t.unknown,
                # Two-sided answer (origin): accept/reject thresholds on P(band label).
                "band": None if t.name in overrides else t.band,
                # Reported inside another task's answer (origin's family), not a result of its own.
                "attach": t.attach,
                # Withheld (unsure, with a reason) when another task gives this label (artist when origin is ai).
                "withhold": t.withhold,
            }
            for t in model.tasks
        ],
        "recipe": cfg.get("recipe", {}),
        "metrics": cfg.get("metrics", {}),
        "model_card": card,
    }


def _real_explainer(predictor) -> tuple[Callable | None, Feature, Lazy | None]:
    """Grad-CAM over the loaded model, built once (in the background) and used one call at a time."""
    try:
        from artlens.explain import ExplainError, Explainer  # noqa: F401  (imports torch)
    except ImportError as exc:
        return None, Feature(False, 501, f"Grad-CAM is not available in this installation ({exc})"), None
    lazy = Lazy(lambda: Explainer(predictor.model))
    lock = threading.Lock()  # pytorch-grad-cam hooks the shared model: one explanation at a time

    def explain(image, task=None, target_class=None, method="gradcam"):
        try:
            explainer = lazy.get()
        except Exception as exc:
            raise ApiError(503, "unavailable", f"Grad-CAM could not be set up for this model: {exc}") from None
        with lock:
            try:
                return explainer.explain(image, task=task, target_class=target_class, method=method)
            except ExplainError as exc:
                raise ApiError(422, "invalid_request", str(exc)) from None

    return explain, Feature(True), lazy


def load_state(
    model_dir, index_dir, predictor, explainer, index, examples_dir: Path | None, warmup: bool
) -> ServerState:
    from PIL import Image

    model_path = Path(model_dir) if model_dir is not None else None
    if predictor is None:
        from artlens import default_model_dir
        from artlens.predict import Predictor

        model_path = model_path or default_model_dir()
        predictor = Predictor(model_path, top_k=TOP_K_MAX)
    elif not _is_predictor(predictor):
        predictor = predictor()  # a factory
    if warmup:  # loads the encoder (ONNX session, torch weights) now, not on the first request
        predictor.predict_images([Image.new("RGB", (64, 64), (128, 128, 128))], ["warm-up"])

    features: dict[str, Feature] = {}
    lazy = None
    if explainer is not None:
        features["explain"] = Feature(True)
    else:
        explainer, features["explain"], lazy = _real_explainer(predictor)

    if index is None and index_dir is not None:
        index = load_faiss_backend(Path(index_dir), predictor)
    if index is not None:
        features["similar"] = Feature(True)
    else:
        try:
            import artlens.retrieval.index  # noqa: F401

            features["similar"] = Feature(False, 503, "no similarity index loaded: start the server with --collection DIR (an image folder) "
                                           "or --index DIR")
        except ImportError as exc:
            features["similar"] = Feature(False, 501, f"similar artworks are not available in this installation ({exc})")

    if lazy is not None and warmup:
        lazy.start()
    return ServerState(
        predictor=predictor,
        model_info=_model_info(predictor, model_path),
        catalogue=Catalogue(examples_dir, index),
        index=index,
        explain=explainer,
        features=features,
        explain_model=lazy,
    )


def index_info(index) -> dict[str, Any] | None:
    if index is None:
        return None
    return index.info() if hasattr(index, "info") else {"size": len(index)}


