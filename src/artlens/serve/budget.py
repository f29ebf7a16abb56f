"""Budgets the server shares between requests: decoded pixels (worker threads, first come first
served: a large decode waiting at the head of the line is not overtaken, so it cannot starve) and
request-body bytes (the event loop, first fit: an ordinary upload is not held up behind clients
that declared large bodies and went silent; those are dropped after the idle timeout anyway).

Why pixels: a 200 KB PNG can decode to 64 Mpx (256 MB). The cost of a picture is read from its
header before any pixel is decoded (`artlens.data.images.decode_cost`), claimed here, and given
back once the picture is reduced to the size the model needs, so the pixels decoded at once stay
under the budget however many requests arrive. Why bytes: a body is held from its first byte to
the answer; claiming its declared length (or the limit, when chunked) before reading means a slow
or silent client holds only what it said it would send, and never a slot that others wait for.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque

# Decoded pixels the whole server may hold at once: 128 Mpx is at most ~512 MB (Pillow keeps a
# pixel in at most 4 bytes), two 8,000 x 8,000 PNGs decoding side by side.
DEFAULT_PIXEL_BUDGET = 128_000_000
# Decoded pixels over all the pictures of one request (time, not memory: they decode one at a
# time): four 8,000 x 8,000 PNGs, or any number of ordinary photos (JPEG decodes at 1/4-1/8 scale).
DEFAULT_REQUEST_PIXEL_BUDGET = 256_000_000
# Request-body bytes held at once (declared lengths; the upload limit for a chunked body).
DEFAULT_BODY_BUDGET = 256_000_000


class PixelBudget:
    """A counting semaphore in pixels for worker threads, first come first served."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.used = 0
        self.peak = 0  # most pixels held at once since start (reported by /healthz)
        self._cond = threading.Condition()
        self._line: deque[object] = deque()

    def try_acquire(self, n: int) -> bool:
        """Take `n` now if nobody is waiting and they fit; never blocks."""
        with self._cond:
            if self._line or self.used + n > self.capacity:
                return False
            self._take(n)
            return True

    def acquire(self, n: int, timeout: float) -> bool:
        """Wait (at most `timeout` s) for `n` pixels; False when they did not come in time."""
        if n > self.capacity:
            return False
        deadline = time.monotonic() + max(0.0, timeout)
        me = object()
        with self._cond:
            self._line.append(me)
            try:
                while self._line[0] is not me or self.used + n > self.capacity:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._cond.wait(left)
                self._take(n)
                return True
            finally:
                self._line.remove(me)
                self._cond.notify_all()

    def release(self, n: int) -> None:
        if n <= 0:
            return
        with self._cond:
            self.used = max(0, self.used - n)
            self._cond.notify_all()

    def _take(self, n: int) -> None:
        self.used += n
        self.peak = max(self.peak, self.used)


class ByteBudget:
    """A counting semaphore in bytes for coroutines on one event loop, first fit."""

    def __init__(self, capacity: int):
        self.capacity = max(1, int(capacity))
        self.used = 0
        self._line: deque[tuple[int, asyncio.Future]] = deque()

    def try_acquire(self, n: int) -> bool:
        # First fit, not first come: a small upload goes ahead of large claims still waiting, so
        # clients that declare big bodies and stall cannot hold up ordinary requests.
        if self.used + n > self.capacity:
            return False
        self.used += n
        return True

    async def acquire(self, n: int, timeout: float) -> bool:
        if self.try_acquire(n):
            return True
        if n > self.capacity:
            return False
        fut = asyncio.get_running_loop().create_future()
        entry = (n, fut)
        self._line.append(entry)
        try:
            # wait_for returns the grant when it lands together with the timeout or a cancel.
            return await asyncio.wait_for(fut, timeout=max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        finally:
            if entry in self._line:  # not granted: leave the line, let those behind move up
                self._line.remove(entry)
                self._wake()

    def release(self, n: int) -> None:
        if n <= 0:
            return
        self.used = max(0, self.used - n)
        self._wake()

    def _wake(self) -> None:
        for entry in list(self._line):  # in order of arrival, each waiter that fits now
            n, fut = entry
            if fut.done():
                self._line.remove(entry)
            elif self.used + n <= self.capacity:
                self._line.remove(entry)
                self.used += n
                fut.set_result(True)
