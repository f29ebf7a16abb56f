"""The model work behind each endpoint, run in the worker pool (never on the event loop).

Pictures are decoded one at a time, each at reduced size (`artlens.data.images.load_reduced_bytes`),
under two pixel budgets checked against the cost read from the header before any pixel is decoded:
the request's, pixels decoded over all its pictures (a picture that does not fit what is left, or
alone needs more, is answered 413 in its slot; its siblings are still answered), and the server's,
pixels held at once by all requests together (a decode waits for room). Once a picture is reduced,
only its reduced pixels stay claimed until the model has seen it. A request never waits for pixels
while it holds some: it first runs the model on the pictures it has, and lets them go.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from artlens.serve.backends import Upload, decode_upload, describe_file, encode, shrink
from artlens.serve.collection import THUMB_SIDE, row_thumbnail, thumb_url
from artlens.serve.guard import ApiError
from artlens.serve.state import Runtime, ServerState

EXPLAIN_MAX_SIDE = 1024


def model_side(st: ServerState) -> int:
    """Uploads decode at no less than twice the model's resize size on each side."""
    return max(448, 2 * st.predictor.model.preprocessing.resize_size)


def mpx(n: int) -> str:
    return f"{n / 1e6:.3g} Mpx"


class Decoding:
    """One request's pictures, decoded one at a time under the request's and the server's pixel
    budgets. `before_wait` is called (to use and let go of the pictures held) before waiting for
    room; `done()` gives back whatever is still held."""

    def __init__(self, rt: Runtime, deadline: float, min_side: int, before_wait: Callable[[], None] | None = None):
        self.rt = rt
        self.deadline = deadline  # time.monotonic() clock
        self.min_side = min_side
        self.before_wait = before_wait
        self.kept = 0  # pixels of reduced pictures still held
        self.spent = 0  # pixels decoded for this request so far (its budget)

    def check_time(self) -> None:
        if time.monotonic() >= self.deadline:  # the answer (504) has gone: stop working for it
            raise ApiError(504, "timeout", "the request ran out of time")

    def decode(self, up: Upload):
        """(RGB picture at reduced size, full (width, height)) or `ApiError` naming the file."""
        self.check_time()
        budget = self.rt.pixels
        per_request = self.rt.settings.request_pixel_budget
        held = 0

        def reserve(cost: int) -> None:
            nonlocal held
            most = min(per_request, budget.capacity)
            if cost > most:
                raise ApiError(
                    413, "over_pixel_budget",
                    f"{up.name}: decoding it needs {mpx(cost)}, over the {mpx(most)} this server decodes for one "
                    "picture (send a smaller one; the model sees 224-448 px)",
                )
            if self.spent + cost > per_request:
                raise ApiError(
                    413, "over_pixel_budget",
                    f"{up.name}: decoding it needs {mpx(cost)}, and this request has used {mpx(self.spent)} of its "
                    f"{mpx(per_request)} pixel budget (send fewer large pictures per request)",
                )
            if not budget.try_acquire(cost):
                if self.kept and self.before_wait is not None:
                    self.before_wait()  # use the pictures held and let them go first
                    self.release_kept()
                if not budget.acquire(cost, self.deadline - time.monotonic()):
                    raise ApiError(503, "busy", f"{up.name}: no decoding memory free within the time limit",
                                   {"retry-after": "5"})
            held = cost
            self.spent += cost

        try:
            img, size = decode_upload(up, self.rt.settings.max_pixels, self.min_side, reserve)
        except BaseException:
            budget.release(held)
            raise
        keep = min(held, img.width * img.height)
        budget.release(held - keep)  # the full-size decode is gone; only the reduced copy stays
        self.kept += keep
        return img, size

    def release_kept(self) -> None:
        self.rt.pixels.release(self.kept)
        self.kept = 0

    def __enter__(self) -> "Decoding":
        return self

    def __exit__(self, *exc) -> None:
        self.release_kept()


def do_predict(rt: Runtime, st: ServerState, uploads: list[Upload], top_k: int, deadline: float) -> list[dict[str, Any]]:
    slots: list[dict[str, Any]] = []
    batch: list[tuple[int, Any]] = []  # (slot, reduced picture) not yet seen by the model

    def run_batch() -> None:
        if not batch:
            return
        where = [i for i, _ in batch]
        results = st.predictor.predict_images([img for _, img in batch], [slots[i]["name"] for i in where])
        for i, res in zip(where, results):
            # top_k applies to the labels and to attached lists (origin's family) alike.
            slots[i]["tasks"] = {
                name: {k: v[:top_k] if isinstance(v, list) else v for k, v in t.items()}
                for name, t in res["tasks"].items()
            }
        batch.clear()

    with Decoding(rt, deadline, model_side(st), before_wait=run_batch) as dec:
        for up in uploads:
            try:
                img, (w, h) = dec.decode(up)
            except ApiError as exc:
                if len(uploads) == 1 or exc.status_code == 504:
                    raise
                slots.append({"name": up.name, "error": exc.detail, "code": exc.code, "status": exc.status_code, "tasks": {}})
                continue
            slots.append({"name": up.name, "error": None, "status": 200, "width": w, "height": h})
            batch.append((len(slots) - 1, img))
            del img
        run_batch()
    return slots


def do_explain(rt: Runtime, st: ServerState, up: Upload, task, target_class, method, deadline: float) -> tuple[bytes, dict]:
    with Decoding(rt, deadline, EXPLAIN_MAX_SIDE) as dec:
        img = shrink(dec.decode(up)[0], EXPLAIN_MAX_SIDE)
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


def do_similar(rt: Runtime, st: ServerState, up: Upload, k: int, by: str | None, deadline: float) -> list[dict[str, Any]]:
    with Decoding(rt, deadline, model_side(st)) as dec:
        img = dec.decode(up)[0]
        found = st.index.search_image(img, k, up.sha256, **({"by": by} if by else {}))
    out = []
    for n in found:
        stem = Path(n["path"]).stem if n.get("path") else f"item {n['row']}"
        title, artist = describe_file(stem)
        labels = n.get("labels") or {}
        item_id = f"ix-{n['row']}"
        sim = float(n["similarity"])
        out.append(
            {
                "id": item_id,
                "row": int(n["row"]),
                "title": title,
                # The index's artist label (folder layout, manifest) over a guess from the file name.
                "artist": describe_file(f"{labels['artist']}_x")[1] if labels.get("artist") else artist,
                "labels": labels,
                "similarity": round(sim, 4),
                "distance": round(1.0 - sim, 4),  # cosine distance in the space searched
                "duplicate": bool(n.get("duplicate")),
                "thumb_url": thumb_url(n["row"]),
                "image_url": f"/v1/examples/{item_id}/image",
            }
        )
    return out


def do_thumbnail(rt: Runtime, st: ServerState, item_id: str, size: int, deadline: float) -> bytes:
    path = st.catalogue.path(item_id)
    if path is None:
        raise ApiError(404, "not_found", f"no example with id {item_id!r}")
    return rt.thumbs.get_or_make((item_id, size), lambda: picture_jpeg(rt, path, item_id, size, deadline))


def do_collection_thumb(rt: Runtime, st: ServerState, row: int, deadline: float) -> bytes:
    """The THUMB_SIDE px JPEG of index row `row` (checked against the index first; 404 otherwise)."""
    return row_thumbnail(st, row, lambda path, name: picture_jpeg(rt, path, name, THUMB_SIDE, deadline),
                         rt.collection_thumbs)


def picture_jpeg(rt: Runtime, path: Path, name: str, size: int, deadline: float) -> bytes:
    """A file the server itself chose (an example, an index row), as a JPEG at most `size` px a side:
    read with the safe loader, decoded at reduced size under the pixel budgets; 404 when unusable."""
    from artlens.data.images import ImageDecodeError, read_image_file

    try:
        data = read_image_file(path)
        with Decoding(rt, deadline, size) as dec:
            return encode(shrink(dec.decode(Upload(name, "", data))[0], size), "JPEG")
    except (ImageDecodeError, OSError):
        raise ApiError(404, "not_found", f"the picture of {name!r} is not available") from None
    except ApiError as exc:
        if exc.status_code in (503, 504):
            raise
        raise ApiError(404, "not_found", f"the picture of {name!r} is not available ({exc.detail})") from None
