"""The artlens server: a REST API (FastAPI) and the page at `/`.

    app = create_app("models/clip-probe", "indexes/wikiart")   # or: artlens serve --model ... --index ...

The model is loaded once, at start-up. Requests are decoded and answered in a fixed pool of worker
threads (see `guard.py` for the limits: body size checked while it streams in, bounded admission,
per-request deadlines). Every error is JSON `{"error": code, "detail": reason}`.

Endpoints: POST /v1/predict, /v1/explain, /v1/similar (multipart uploads, or a raw image body);
GET /v1/models, /v1/examples, /v1/examples/{id}/image, /healthz; OpenAPI docs at /docs.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import quote

from fastapi import FastAPI, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from artlens.data.images import MAX_PIXELS
from artlens.serve.backends import (
    ACCEPTED_TYPES,
    Catalogue,
    Lazy,
    LruBytes,
    Upload,
    clean_name,
    decode_upload,
    describe_file,
    encode,
    load_faiss_backend,
    shrink,
)
from artlens.serve.guard import (
    STATUS_CODES,
    ApiError,
    GuardMiddleware,
    QueueStats,
    WorkerPool,
    deadline_of,
    error_body,
    send_json,
)

log = logging.getLogger("artlens.serve")

STATIC_DIR = Path(__file__).parent / "static"
TOP_K_MAX = 10
MULTIPART_SLACK = 64 * 1024  # multipart boundaries and headers on top of the file bytes
EXPLAIN_MAX_SIDE = 1024
CAM_METHODS = ("gradcam", "gradcam++", "eigencam", "layercam")

# Documented request body of the upload endpoints (parsed by hand so the limits apply while reading).
UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array", "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass
class Settings:
    max_upload_bytes: int
    workers: int
    timeout_s: float
    max_files: int = 16
    max_queue: int = 256
    max_pixels: int = MAX_PIXELS
    cors_origins: list[str] | None = None

    @property
    def max_inflight(self) -> int:
        # Requests allowed to hold a body at once: enough to keep the workers fed, no more.
        return 2 * self.workers


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


def _load_state(
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

            features["similar"] = Feature(False, 503, "no similarity index loaded: start the server with --index DIR")
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


def _split_host(value: str) -> tuple[str, int | None]:
    """`name[:port]` (`[v6]:port` for IPv6) -> (lowercased name, port or None)."""
    value = value.strip().lower().rstrip(".")
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
    else:
        name, _, rest = value.rpartition(":") if value.count(":") == 1 else (value, "", "")
    port = rest.lstrip(":")
    return name.rstrip("."), (int(port) if port.isdigit() else None)


class HostAllowList:
    """400 (JSON error) for a request whose Host header is not allowed: a page on another site that
    rebinds its DNS name to 127.0.0.1 sends its own name. The name decides; ports are compared
    only where both the entry and the header have one."""

    def __init__(self, app, allowed_hosts: list[str]):
        self.app = app
        self.allowed = [_split_host(h) for h in allowed_hosts]

    def _ok(self, host: str) -> bool:
        name, port = _split_host(host)
        return bool(name) and any(name == n and (None in (p, port) or p == port) for n, p in self.allowed)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket"):
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
            if not self._ok(host):
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                    return
                await send_json(send, 400, error_body("invalid_host", f"Host {host!r} is not allowed by this server"))
                return
        await self.app(scope, receive, send)


def create_app(
    model_dir: str | os.PathLike | None = None,
    index_dir: str | os.PathLike | None = None,
    *,
    predictor: Any = None,
    explainer: Callable | None = None,
    index: Any = None,
    max_upload_mb: float = 20,
    workers: int | None = None,
    timeout_s: float = 60.0,
    cors_origins: list[str] | None = None,
    max_files: int = 16,
    max_queue: int = 256,
    max_pixels: int = MAX_PIXELS,
    examples_dir: str | os.PathLike | None = "default",
    warmup: bool = True,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """The FastAPI app. `predictor` (a ready `Predictor` or a zero-argument factory), `explainer`
    (`fn(image, task, target_class, method) -> Explanation`) and `index` (a similar backend) replace
    what `model_dir` / `index_dir` would load; tests use them to serve a tiny model.
    `allowed_hosts`: Host header values (`name` or `name:port`) answered; None: any."""
    if examples_dir == "default":
        from artlens import examples_dir as _examples

        examples_dir = _examples()
    settings = Settings(
        max_upload_bytes=int(max_upload_mb * 1_000_000),
        workers=workers or default_workers(),
        timeout_s=float(timeout_s),
        max_files=max_files,
        max_queue=max_queue,
        max_pixels=max_pixels,
        cors_origins=list(cors_origins) if cors_origins else None,
    )
    pool = WorkerPool(settings.workers)
    stats = QueueStats()
    thumbs = LruBytes()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        app.state.artlens = await loop.run_in_executor(
            None,
            _load_state,
            model_dir,
            index_dir,
            predictor,
            explainer,
            index,
            Path(examples_dir) if examples_dir else None,
            warmup,
        )
        log.info("artlens: model %s loaded; %d workers", app.state.artlens.model_info["name"], settings.workers)
        try:
            yield
        finally:
            pool.shutdown()

    app = FastAPI(
        title="artlens",
        summary="What is this artwork? Style, artist, genre and human/AI origin, with the evidence.",
        version=_version(),
        lifespan=lifespan,
    )
    app.add_middleware(
        GuardMiddleware,
        max_body=settings.max_upload_bytes + MULTIPART_SLACK,
        max_inflight=settings.max_inflight,
        max_queue=settings.max_queue,
        timeout_s=settings.timeout_s,
        stats=stats,
        shown_limit=settings.max_upload_bytes,
    )
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    if allowed_hosts is not None:  # added last: the outermost check
        app.add_middleware(HostAllowList, allowed_hosts=list(allowed_hosts))

    # ------------------------------------------------------------------ errors
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        code = getattr(exc, "code", None) or STATUS_CODES.get(exc.status_code, "error")
        return JSONResponse(error_body(code, exc.detail), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('query', 'path'))}: {e.get('msg')}" for e in exc.errors()
        )
        return JSONResponse(error_body("invalid_request", detail), status_code=422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse(
            error_body("internal_error", f"unexpected server error ({type(exc).__name__}); see the server log"),
            status_code=500,
        )

    def state(request: Request) -> ServerState:
        return request.app.state.artlens

    async def read_uploads(request: Request, most: int) -> list[Upload]:
        """Multipart files (any field name) or one raw image body."""
        ctype = request.headers.get("content-type", "")
        mime = ctype.split(";")[0].strip().lower()
        if mime == "multipart/form-data":
            try:
                form = await request.form(max_files=most, max_fields=32)
            except ApiError:
                raise
            except StarletteHTTPException as exc:  # malformed multipart, too many files
                detail = str(exc.detail)
                if "too many files" in detail.lower():
                    detail = "send one image per request" if most == 1 else f"too many files: at most {most} per request"
                raise ApiError(400, "bad_request", detail) from None
            try:
                uploads = [
                    Upload(clean_name(v.filename), v.content_type or "", await v.read())
                    for _, v in form.multi_items()
                    if isinstance(v, UploadFile)
                ]
            finally:
                await form.close()
            if not uploads:
                raise ApiError(400, "no_file", "no file in the form: send the image as a file field named 'file'")
            return uploads
        if mime.startswith("image/") or mime == "application/octet-stream":
            return [Upload("upload", mime, await request.body())]
        raise ApiError(
            415,
            "unsupported_media_type",
            f"send multipart/form-data with an image file, or an image body (got {mime or 'no Content-Type'})",
        )

    def one_upload(uploads: list[Upload]) -> Upload:
        if len(uploads) != 1:
            raise ApiError(400, "bad_request", f"send one image (got {len(uploads)})")
        return uploads[0]

    def feature(st: ServerState, name: str) -> None:
        f = st.feature_info()[name]
        if not f["available"]:
            raise ApiError(f["status"], "not_implemented" if f["status"] == 501 else "unavailable", f["detail"] or name)

    # ------------------------------------------------------------------ work done in the pool
    def model_side(st: ServerState) -> int:
        """JPEG uploads decode at no less than twice the model's resize size on each side."""
        return max(448, 2 * st.predictor.model.preprocessing.resize_size)

    def do_predict(st: ServerState, uploads: list[Upload], top_k: int) -> list[dict[str, Any]]:
        slots: list[dict[str, Any]] = []
        images, where = [], []
        for up in uploads:
            try:
                img, (w, h) = decode_upload(up, settings.max_pixels, model_side(st))
            except ApiError as exc:
                if len(uploads) == 1:
                    raise
                slots.append({"name": up.name, "error": exc.detail, "code": exc.code, "status": exc.status_code, "tasks": {}})
                continue
            slots.append({"name": up.name, "error": None, "status": 200, "width": w, "height": h})
            images.append(img)
            where.append(len(slots) - 1)
        if images:
            for i, res in zip(where, st.predictor.predict_images(images, [slots[i]["name"] for i in where])):
                # top_k applies to the labels and to attached lists (origin's family) alike.
                tasks = {
                    name: {k: v[:top_k] if isinstance(v, list) else v for k, v in t.items()}
                    for name, t in res["tasks"].items()
                }
                slots[i]["tasks"] = tasks
        return slots

    def do_explain(st: ServerState, up: Upload, task, target_class, method) -> tuple[bytes, dict]:
        img = shrink(decode_upload(up, settings.max_pixels, EXPLAIN_MAX_SIDE)[0], EXPLAIN_MAX_SIDE)
        ex = st.explain(img, task=task, target_class=target_class, method=method)
        png = encode(ex.overlay, "PNG")
        meta = {
            "name": up.name,
            "task": ex.task,
            "label": ex.label,
            "prob": round(float(ex.prob), 4),
            "method": ex.method,
            "width": ex.overlay.width,
            "height": ex.overlay.height,
        }
        return png, meta

    def do_similar(st: ServerState, up: Upload, k: int) -> list[dict[str, Any]]:
        img = decode_upload(up, settings.max_pixels, model_side(st))[0]
        out = []
        for n in st.index.search_image(img, k, up.sha256):
            stem = Path(n["path"]).stem if n.get("path") else f"item {n['row']}"
            title, artist = describe_file(stem)
            item_id = f"ix-{n['row']}"
            out.append(
                {
                    "id": item_id,
                    "title": title,
                    "artist": artist,
                    "labels": n.get("labels") or {},
                    "similarity": round(float(n["similarity"]), 4),
                    "duplicate": bool(n.get("duplicate")),
                    "image_url": f"/v1/examples/{item_id}/image",
                }
            )
        return out

    def do_thumbnail(st: ServerState, item_id: str, size: int) -> bytes:
        from artlens.data.images import ImageDecodeError, load_image

        path = st.catalogue.path(item_id)
        if path is None:
            raise ApiError(404, "not_found", f"no example with id {item_id!r}")

        def make() -> bytes:
            try:
                return encode(shrink(load_image(path, max_pixels=settings.max_pixels), size), "JPEG")
            except ImageDecodeError:
                raise ApiError(404, "not_found", f"the picture of {item_id!r} is not available") from None

        return thumbs.get_or_make((item_id, size), make)

    # ------------------------------------------------------------------ routes
    @app.get("/", include_in_schema=False)
    async def page():
        return FileResponse(STATIC_DIR / "index.html", media_type="text/html")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/healthz", tags=["service"])
    async def healthz(request: Request):
        """Liveness and load: `ok` once the model is loaded."""
        st = state(request)
        return {
            "status": "ok",
            "model": st.model_info["name"],
            "uptime_s": round(time.time() - st.started, 1),
            "workers": settings.workers,
            "active": stats.active,
            "waiting": stats.waiting,
        }

    @app.get("/v1/models", tags=["model"])
    async def models(request: Request):
        """The loaded model: tasks (labels, thresholds, bands, attached tasks), model card facts, metrics; server limits."""
        st = state(request)
        return {
            "model": st.model_info,
            "features": st.feature_info(),
            "index": _index_info(st.index),
            "limits": {
                "max_upload_bytes": settings.max_upload_bytes,
                "max_files": settings.max_files,
                "max_pixels": settings.max_pixels,
                "accepted_types": ACCEPTED_TYPES,
                "timeout_s": settings.timeout_s,
                "top_k_max": TOP_K_MAX,
            },
        }

    @app.post("/v1/predict", tags=["model"], openapi_extra=UPLOAD_BODY)
    async def predict(request: Request, top_k: int = Query(3, ge=1, le=TOP_K_MAX, description="labels per task")):
        """Classify one image or several (multipart field `file`, repeatable, or a raw image body).

        One image: 415/422 with the reason when it cannot be read. Several: 200, with each unreadable
        file's `error`, `code` and `status` in its slot and the others answered."""
        st = state(request)
        uploads = await read_uploads(request, settings.max_files)
        t0 = time.perf_counter()
        results = await pool.run(deadline_of(request.scope, settings.timeout_s), do_predict, st, uploads, top_k)
        return {"model": st.model_info["name"], "results": results, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}

    @app.post("/v1/explain", tags=["evidence"], openapi_extra=UPLOAD_BODY, response_model=None)
    async def explain(
        request: Request,
        task: str | None = Query(None, description="task to explain (default: the model's first)"),
        target_class: str | None = Query(None, description="label to explain (default: the predicted one)"),
        method: Literal[CAM_METHODS] = Query("gradcam"),  # type: ignore[valid-type]
        format: Literal["png", "json"] = Query("png", description="`png`: the overlay; `json`: base64 + facts"),
    ):
        """Grad-CAM: where the model looked for `task`. The overlay is the picture with the heat map."""
        st = state(request)
        feature(st, "explain")
        if task is not None and task not in st.predictor.model.task_names:
            raise ApiError(422, "invalid_request", f"unknown task {task!r} (tasks: {', '.join(st.predictor.model.task_names)})")
        up = one_upload(await read_uploads(request, 1))
        png, meta = await pool.run(
            deadline_of(request.scope, settings.timeout_s), do_explain, st, up, task, target_class, method
        )
        if format == "json":
            return {**meta, "overlay": {"media_type": "image/png", "base64": base64.b64encode(png).decode()}}
        headers = {
            "x-artlens-task": quote(meta["task"]),
            "x-artlens-label": quote(meta["label"]),
            "x-artlens-prob": str(meta["prob"]),
        }
        return Response(png, media_type="image/png", headers=headers)

    @app.post("/v1/similar", tags=["evidence"], openapi_extra=UPLOAD_BODY)
    async def similar(request: Request, k: int = Query(6, ge=1, le=24, description="neighbours")):
        """The k most similar artworks in the loaded index (cosine similarity; copies of the query marked)."""
        st = state(request)
        feature(st, "similar")
        up = one_upload(await read_uploads(request, 1))
        found = await pool.run(deadline_of(request.scope, settings.timeout_s), do_similar, st, up, k)
        return {"name": up.name, "results": found}

    @app.get("/v1/examples", tags=["examples"])
    async def examples(request: Request):
        """Pictures the page offers to try, from the package examples and the loaded index."""
        st = state(request)
        return {
            "examples": [
                {**asdict(item), "image_url": f"/v1/examples/{item.id}/image"} for item in st.catalogue.examples
            ]
        }

    @app.get("/v1/examples/{item_id}/image", tags=["examples"], response_class=Response)
    async def example_image(
        request: Request,
        item_id: str = PathParam(..., max_length=100),
        size: int = Query(768, ge=32, le=1024, description="long side in pixels"),
    ):
        """An example or index picture as JPEG, by id (ids come from /v1/examples and /v1/similar)."""
        st = state(request)
        deadline = asyncio.get_running_loop().time() + settings.timeout_s
        data = await pool.run(deadline, do_thumbnail, st, item_id, size)
        return Response(data, media_type="image/jpeg", headers={"cache-control": "public, max-age=3600"})

    return app


def _index_info(index) -> dict[str, Any] | None:
    if index is None:
        return None
    return index.info() if hasattr(index, "info") else {"size": len(index)}


def _version() -> str:
    from artlens import __version__

    return __version__
