"""What keeps the server standing: JSON errors, a body-size limit enforced while the body streams in,
a budget of body bytes held at once with an idle timeout for uploads, a separate gate for model
work, per-request deadlines, and a fixed-size worker pool for CPU work.

Why this shape: a flood of uploads must queue, not multiply memory, and a silent client must not
hold what others wait for. Requests waiting for body bytes have not been read yet (uvicorn stops
reading a socket whose body the app has not asked for), so the only memory they cost is a
coroutine; an upload that stalls, or trickles in slower than a minimum rate once its grace period
is over (as Apache's mod_reqtimeout `MinRate`), is cut off (408); reading never takes a
worker slot, which only a request whose body has fully arrived may wait for. Work runs in a `ThreadPoolExecutor` of `workers` threads: unlike
`anyio.to_thread` with an abandoned cancel, a timed-out job keeps its thread, so the pool can never
grow past its size however many requests time out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from artlens.serve.budget import ByteBudget

log = logging.getLogger("artlens.serve")


class ApiError(StarletteHTTPException):
    """An error answered as `{"error": code, "detail": detail}` with `status`."""

    def __init__(self, status: int, code: str, detail: str, headers: dict[str, str] | None = None):
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.code = code


# Default error codes for statuses raised without one (FastAPI's own 404/405, Starlette's 400).
STATUS_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    500: "internal_error",
    501: "not_implemented",
    503: "unavailable",
    504: "timeout",
}


def error_body(code: str, detail: Any) -> dict[str, Any]:
    return {"error": code, "detail": detail}


async def send_json(send: Send, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
    raw = json.dumps(body).encode()
    hdrs = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    hdrs += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": hdrs})
    await send({"type": "http.response.body", "body": raw})


def deadline_of(scope: Scope, default_s: float) -> float:
    """The request's deadline on the event loop clock (set by `GuardMiddleware` for POSTs)."""
    state = scope.get("state") or {}
    return state.get("artlens_deadline") or (asyncio.get_running_loop().time() + default_s)


class QueueStats:
    """Counters shared between the middleware, the work gate and /healthz."""

    def __init__(self) -> None:
        self.reading = 0  # POSTs whose body is arriving
        self.waiting = 0  # POSTs waiting for room: body bytes (unread) or a work slot (read)
        self.active = 0  # POSTs admitted to model work (queued for a worker, or computing)


class ClientGone(Exception):
    """The client closed the connection before its body arrived."""


class GuardMiddleware:
    """Pure ASGI middleware. For POST requests: refuse a declared `Content-Length` over the limit
    before reading anything; claim the body's bytes (declared length, or the limit when chunked)
    from the server's body budget, waiting first come first served when it is spent; then count the
    body bytes as the app reads them, stop at the limit (413), and drop an upload that sends
    nothing for `body_timeout_s`, falls behind `min_rate` bytes/s after its first `body_timeout_s`
    (the allowance grows by one second per `min_rate` bytes received), or has not arrived by the
    deadline (408). A client that goes away
    mid-upload is one log line. Every response gets `nosniff`; the page gets a strict CSP.

    Reading is limited by bytes, not by a count of slots, and model work by `WorkGate`: a silent
    client holds only the bytes it declared, for at most `body_timeout_s`, never a worker."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        body_budget: int,
        max_queue: int,
        timeout_s: float,
        body_timeout_s: float,
        min_rate: float = 0.0,
        stats: "QueueStats | None" = None,
        shown_limit: int | None = None,
    ):
        self.app = app
        self.max_body = max_body
        self.shown_limit = shown_limit or max_body  # the limit as users set it (max_body adds multipart slack)
        self.budget = ByteBudget(max(body_budget, max_body))
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.body_timeout_s = body_timeout_s
        self.min_rate = float(min_rate)  # bytes/s an upload must keep up after its grace; 0: off
        self.stats = stats if stats is not None else QueueStats()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        send = self._with_headers(scope, send)
        if scope["method"] != "POST":
            await self.app(scope, receive, send)
            return

        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        size = None
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                await send_json(send, 400, error_body("bad_request", "invalid Content-Length header"))
                return
            if size > self.max_body:
                await send_json(send, 413, error_body("payload_too_large", self._too_large(size)), {"connection": "close"})
                return
        need = max(0, size) if size is not None else self.max_body

        if not self.budget.try_acquire(need):
            if self.stats.waiting >= self.max_queue:
                await send_json(
                    send, 503, error_body("busy", f"server busy: {self.stats.waiting} requests already waiting"),
                    {"retry-after": "5"},
                )
                return
            self.stats.waiting += 1
            try:
                got = await self.budget.acquire(need, self.timeout_s)
            finally:
                self.stats.waiting -= 1
            if not got:
                await send_json(
                    send, 503, error_body("busy", f"server busy: no room for the upload within {self.timeout_s:g} s"),
                    {"retry-after": "5"},
                )
                return

        scope.setdefault("state", {})["artlens_deadline"] = deadline
        received = 0
        body_done = False
        self.stats.reading += 1

        def finish_reading() -> None:
            nonlocal body_done
            if not body_done:
                body_done = True
                self.stats.reading -= 1

        started = loop.time()  # the body's clock starts once its bytes are claimed

        def rate_deadline() -> float:
            if self.min_rate <= 0:
                return float("inf")
            return started + self.body_timeout_s + received / self.min_rate

        async def limited_receive() -> Message:
            nonlocal received
            if body_done:  # later reads only wait for a disconnect: no deadline, nothing to count
                return await receive()
            now = loop.time()
            idle_end, rate_end = now + self.body_timeout_s, rate_deadline()
            end = min(idle_end, deadline, rate_end)
            try:
                message = await asyncio.wait_for(receive(), timeout=max(end - now, 0.001))
            except asyncio.TimeoutError:
                finish_reading()
                if end == deadline:
                    reason = f"the upload did not arrive within {self.timeout_s:g} s"
                elif end == idle_end:
                    reason = f"the upload stalled: no data for {self.body_timeout_s:g} s"
                else:
                    reason = self._too_slow(received, loop.time() - started)
                raise ApiError(408, "request_timeout", reason, {"connection": "close"}) from None
            if message["type"] == "http.disconnect":
                finish_reading()
                raise ClientGone()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    finish_reading()
                if received > self.max_body:
                    finish_reading()
                    # Raised inside the app's body read: FastAPI re-raises HTTPExceptions from there,
                    # so the app's error handler answers 413 without the rest being read.
                    raise ApiError(413, "payload_too_large", self._too_large(None), {"connection": "close"})
            return message

        try:
            await self.app(scope, limited_receive, send)
        except (ClientGone, ClientDisconnect):
            client = scope.get("client") or ("?", 0)
            log.warning(
                "client %s:%s went away during %s %s after %d body bytes; nothing answered",
                client[0], client[1], scope["method"], scope.get("path", ""), received,
            )
        finally:
            finish_reading()
            self.budget.release(need)

    def _too_slow(self, received: int, elapsed: float) -> str:
        return (f"the upload is too slow: {received} bytes in {elapsed:.0f} s (at least {self.min_rate / 1000:g} kB/s "
                f"after the first {self.body_timeout_s:g} s)")

    def _too_large(self, size: int | None) -> str:
        limit_mb = self.shown_limit / 1e6
        got = f" ({size / 1e6:.1f} MB)" if size is not None else ""
        return f"upload is larger than the {limit_mb:g} MB limit{got}"

    @staticmethod
    def _with_headers(scope: Scope, send: Send) -> Send:
        path = scope.get("path", "")
        page = path == "/" or path.startswith("/static/")

        async def wrapped(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers") or [])
                headers.append((b"x-content-type-options", b"nosniff"))
                if page:
                    headers.append((b"content-security-policy", CSP))
                    headers.append((b"referrer-policy", b"no-referrer"))
                message = {**message, "headers": headers}
            await send(message)

        return wrapped


CSP = (
    b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    b"connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


class WorkGate:
    """Requests admitted to model work at once (`slots`: enough to keep the workers fed); the
    rest wait, at most `max_queue` of them and at most until their deadline (then 503). Entered
    only once a body has arrived, so uploads still in flight never hold a slot."""

    def __init__(self, slots: int, max_queue: int, stats: QueueStats):
        self.slots = max(1, int(slots))
        self.max_queue = max_queue
        self.stats = stats
        self._sem: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def admit(self, deadline: float) -> AsyncIterator[None]:
        if self._sem is None:  # created inside the running loop
            self._sem = asyncio.Semaphore(self.slots)
        sem = self._sem
        if not sem.locked():
            await sem.acquire()  # a free slot: taken at once, no yield in between
        else:
            if self.stats.waiting >= self.max_queue:
                raise ApiError(503, "busy", f"server busy: {self.stats.waiting} requests already waiting",
                               {"retry-after": "5"})
            self.stats.waiting += 1
            try:
                left = deadline - asyncio.get_running_loop().time()
                await asyncio.wait_for(sem.acquire(), timeout=max(left, 0.001))
            except asyncio.TimeoutError:
                raise ApiError(503, "busy", "server busy: no worker free within the time limit",
                               {"retry-after": "5"}) from None
            finally:
                self.stats.waiting -= 1
        self.stats.active += 1
        try:
            yield
        finally:
            self.stats.active -= 1
            sem.release()


class WorkerPool:
    """A fixed number of threads for CPU work; `run` waits at most until the request's deadline."""

    def __init__(self, workers: int):
        self.workers = max(1, int(workers))
        self._executor = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="artlens-worker")
        self.pending = 0

    async def run(self, deadline: float, fn: Callable[..., Any], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise ApiError(504, "timeout", "the request ran out of time before it could start")
        start = time.monotonic()
        future = self._executor.submit(fn, *args)
        self.pending += 1
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), timeout=remaining)
        except asyncio.TimeoutError:
            future.cancel()  # drops it if still queued; a running job finishes in its own thread
            raise ApiError(
                504, "timeout", f"the request took longer than its time limit ({time.monotonic() - start:.0f} s)"
            ) from None
        finally:
            self.pending -= 1

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
