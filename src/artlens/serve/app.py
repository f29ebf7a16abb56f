"""The artlens server: a REST API (FastAPI) and the page at `/`.

    app = create_app("models/clip-probe", "indexes/wikiart")   # or: artlens serve --model ... --index ...

The model is loaded once, at start-up (`state.py`). Routes live in `routes.py`, the model work
they run in `work.py`, the limits in `guard.py` (body bytes and an idle timeout while uploads
stream in, a gate for model work, deadlines, the worker pool) and `budget.py` (decoded pixels and
body bytes held at once). Every error is JSON `{"error": code, "detail": reason}`.

Endpoints: POST /v1/predict, /v1/explain, /v1/similar (multipart uploads, or a raw image body);
GET /v1/models, /v1/examples, /v1/examples/{id}/image, /v1/collection/{id}/thumb, /healthz; OpenAPI
docs at /docs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from artlens.data.images import MAX_PIXELS
from artlens.serve.budget import DEFAULT_BODY_BUDGET, DEFAULT_PIXEL_BUDGET, DEFAULT_REQUEST_PIXEL_BUDGET
from artlens.serve.guard import STATUS_CODES, GuardMiddleware, error_body
from artlens.serve.hosts import HostAllowList
from artlens.serve.routes import STATIC_DIR, router
from artlens.serve.state import Runtime, Settings, load_state

log = logging.getLogger("artlens.serve")

MULTIPART_SLACK = 64 * 1024  # multipart boundaries and headers on top of the file bytes


def default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


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
    pixel_budget: int = DEFAULT_PIXEL_BUDGET,
    request_pixel_budget: int = DEFAULT_REQUEST_PIXEL_BUDGET,
    body_timeout_s: float = 5.0,
    min_upload_rate_kb: float = 1.0,
    body_budget_mb: float = DEFAULT_BODY_BUDGET / 1e6,
) -> FastAPI:
    """The FastAPI app. `predictor` (a ready `Predictor` or a zero-argument factory), `explainer`
    (`fn(image, task, target_class, method) -> Explanation`) and `index` (a similar backend) replace
    what `model_dir` / `index_dir` would load; tests use them to serve a tiny model.
    `allowed_hosts`: Host header values (`name` or `name:port`) answered; None: any.
    `pixel_budget`: decoded pixels all requests may hold at once (about 4 bytes each);
    `request_pixel_budget`: decoded pixels over all of one request's pictures (a picture that does
    not fit is 413 in its slot); `body_timeout_s`: an upload that sends nothing for this long is
    dropped (408); `min_upload_rate_kb`: kB/s an upload must average after its first
    `body_timeout_s` (408 when it falls behind; 0: off);
    `body_budget_mb`: request-body megabytes held at once (declared lengths)."""
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
        pixel_budget=pixel_budget,
        request_pixel_budget=request_pixel_budget,
        body_timeout_s=float(body_timeout_s),
        min_upload_rate=float(min_upload_rate_kb) * 1000.0,
        body_budget_bytes=int(body_budget_mb * 1_000_000),
    )
    rt = Runtime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loop = asyncio.get_running_loop()
        app.state.artlens = await loop.run_in_executor(
            None,
            load_state,
            model_dir,
            index_dir,
            predictor,
            explainer,
            index,
            Path(examples_dir) if examples_dir else None,
            warmup,
        )
        rt.start()
        log.info("artlens: model %s loaded; %d workers", app.state.artlens.model_info["name"], settings.workers)
        try:
            yield
        finally:
            rt.stop()

    app = FastAPI(
        title="artlens",
        summary="What is this artwork? Style, artist, genre and human/AI origin, with the evidence.",
        version=_version(),
        lifespan=lifespan,
    )
    app.state.runtime = rt
    app.add_middleware(
        GuardMiddleware,
        max_body=settings.max_upload_bytes + MULTIPART_SLACK,
        body_budget=settings.body_budget_bytes,
        max_queue=settings.max_queue,
        timeout_s=settings.timeout_s,
        body_timeout_s=settings.body_timeout_s,
        min_rate=settings.min_upload_rate,
        stats=rt.stats,
        shown_limit=settings.max_upload_bytes,
    )
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"], allow_headers=["*"]
        )
    if allowed_hosts is not None:  # added last: the outermost check
        app.add_middleware(HostAllowList, allowed_hosts=list(allowed_hosts))
    install_error_handlers(app)
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def install_error_handlers(app: FastAPI) -> None:
    """Every error as JSON `{"error": code, "detail": reason}`."""

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


def _version() -> str:
    from artlens import __version__

    return __version__
