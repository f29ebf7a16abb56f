"""The endpoints (an `APIRouter`): POST /v1/predict, /v1/explain, /v1/similar (multipart uploads,
or a raw image body); GET /v1/models, /v1/examples, /v1/examples/{id}/image,
/v1/collection/{id}/thumb, /healthz, and the page.

A POST reads its body on the event loop (bounded by `guard.GuardMiddleware`), then waits for a
work slot (`guard.WorkGate`) and runs its model work in the worker pool (`work.py`).
"""

from __future__ import annotations

import asyncio
import base64
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Literal
from urllib.parse import quote

from fastapi import APIRouter, Path as PathParam, Query, Request
from fastapi.responses import FileResponse, Response
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from artlens.serve.backends import ACCEPTED_TYPES, Upload, clean_name
from artlens.serve.guard import ApiError, deadline_of
from artlens.serve.state import TOP_K_MAX, Runtime, ServerState, index_info
from artlens.serve.work import do_collection_thumb, do_explain, do_predict, do_similar, do_thumbnail

STATIC_DIR = Path(__file__).parent / "static"
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

router = APIRouter()


def state(request: Request) -> ServerState:
    return request.app.state.artlens


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


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


async def run_work(request: Request, fn: Callable[..., Any], *args: Any, gate: bool = True) -> Any:
    """`fn(runtime, state, *args, deadline)` in the worker pool, once a work slot is free (`gate`);
    `deadline` is the request's, on the `time.monotonic()` clock the workers use."""
    rt = runtime(request)
    deadline = deadline_of(request.scope, rt.settings.timeout_s)
    loop = asyncio.get_running_loop()

    async def go() -> Any:
        thread_deadline = time.monotonic() + (deadline - loop.time())
        return await rt.pool.run(deadline, fn, rt, state(request), *args, thread_deadline)

    if not gate:
        return await go()
    async with rt.gate.admit(deadline):
        return await go()


@router.get("/", include_in_schema=False)
async def page():
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")


@router.get("/healthz", tags=["service"])
async def healthz(request: Request):
    """Liveness and load: `ok` once the model is loaded."""
    st, rt = state(request), runtime(request)
    return {
        "status": "ok",
        "model": st.model_info["name"],
        "uptime_s": round(time.time() - st.started, 1),
        "workers": rt.settings.workers,
        "active": rt.stats.active,
        "waiting": rt.stats.waiting,
        "reading": rt.stats.reading,
        "pixels_in_use": rt.pixels.used,
        "pixels_peak": rt.pixels.peak,
    }


@router.get("/v1/models", tags=["model"])
async def models(request: Request):
    """The loaded model: tasks (labels, thresholds, bands, attached tasks), model card facts, metrics; server limits."""
    st, s = state(request), runtime(request).settings
    return {
        "model": st.model_info,
        "features": st.feature_info(),
        "index": index_info(st.index),
        "limits": {
            "max_upload_bytes": s.max_upload_bytes,
            "max_files": s.max_files,
            "max_pixels": s.max_pixels,
            "pixel_budget": s.pixel_budget,
            "request_pixel_budget": s.request_pixel_budget,
            "accepted_types": ACCEPTED_TYPES,
            "timeout_s": s.timeout_s,
            "body_timeout_s": s.body_timeout_s,
            "min_upload_rate_bytes_s": s.min_upload_rate,
            "top_k_max": TOP_K_MAX,
        },
    }


@router.post("/v1/predict", tags=["model"], openapi_extra=UPLOAD_BODY)
async def predict(request: Request, top_k: int = Query(3, ge=1, le=TOP_K_MAX, description="labels per task")):
    """Classify one image or several (multipart field `file`, repeatable, or a raw image body).

    One image: 413/415/422 with the reason when it cannot be used. Several: 200, with each such
    file's `error`, `code` and `status` in its slot and the others answered."""
    st = state(request)
    uploads = await read_uploads(request, runtime(request).settings.max_files)
    t0 = time.perf_counter()
    results = await run_work(request, do_predict, uploads, top_k)
    return {"model": st.model_info["name"], "results": results, "elapsed_ms": round(1000 * (time.perf_counter() - t0), 1)}


@router.post("/v1/explain", tags=["evidence"], openapi_extra=UPLOAD_BODY, response_model=None)
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
    png, meta = await run_work(request, do_explain, up, task, target_class, method)
    if format == "json":
        return {**meta, "overlay": {"media_type": "image/png", "base64": base64.b64encode(png).decode()}}
    headers = {
        "x-artlens-task": quote(meta["task"]),
        "x-artlens-label": quote(meta["label"]),
        "x-artlens-prob": str(meta["prob"]),
    }
    return Response(png, media_type="image/png", headers=headers)


@router.post("/v1/similar", tags=["evidence"], openapi_extra=UPLOAD_BODY)
async def similar(
    request: Request,
    k: int = Query(6, ge=1, le=24, description="neighbours"),
    by: str | None = Query(None, max_length=32, description="search mode: style, artist, visual or features "
                           "(the index's own by default; /v1/models lists them)"),
):
    """The k most similar artworks in the loaded index (cosine similarity; copies of the query marked).

    Each result carries its row id, `similarity`, `distance` (1 - similarity), the labels the index
    stores, and `thumb_url` (a small JPEG, by id)."""
    st = state(request)
    feature(st, "similar")
    modes = getattr(st.index, "modes", None)
    if by is not None and by not in (modes or []):
        raise ApiError(422, "invalid_request", f"cannot search by {by!r}; this index searches by: "
                       f"{', '.join(modes) if modes else 'its one mode (leave out by)'}")
    up = one_upload(await read_uploads(request, 1))
    found = await run_work(request, do_similar, up, k, by)
    return {"name": up.name, "by": by or getattr(st.index, "default_mode", None), "results": found}


@router.get("/v1/collection/{row}/thumb", tags=["evidence"], response_class=Response)
async def collection_thumb(request: Request, row: int = PathParam(..., ge=0, le=2**31, description="row id in the index")):
    """A small JPEG (at most 160 px a side) of one picture in the loaded index, by its row id (from
    /v1/similar). Ids outside the index are 404; the id is never a path."""
    data = await run_work(request, do_collection_thumb, row, gate=False)
    return Response(data, media_type="image/jpeg", headers={"cache-control": "public, max-age=3600"})


@router.get("/v1/examples", tags=["examples"])
async def examples(request: Request):
    """Pictures the page offers to try, from the package examples and the loaded index."""
    return {
        "examples": [
            {**asdict(item), "image_url": f"/v1/examples/{item.id}/image"} for item in state(request).catalogue.examples
        ]
    }


@router.get("/v1/examples/{item_id}/image", tags=["examples"], response_class=Response)
async def example_image(
    request: Request,
    item_id: str = PathParam(..., max_length=100),
    size: int = Query(768, ge=32, le=1024, description="long side in pixels"),
):
    """An example or index picture as JPEG, by id (ids come from /v1/examples and /v1/similar)."""
    data = await run_work(request, do_thumbnail, item_id, size, gate=False)
    return Response(data, media_type="image/jpeg", headers={"cache-control": "public, max-age=3600"})
