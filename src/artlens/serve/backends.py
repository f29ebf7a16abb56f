"""The server's view of uploads, the example catalogue, and the optional explain / similar features.

Nothing a client sends becomes a file path: uploads are bytes decoded in memory, and pictures the
server shows (examples, neighbours) are looked up by an id in a table built at start-up from the
package's examples folder and the loaded index.
"""

from __future__ import annotations

import hashlib
import io
import re
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from artlens.serve.guard import ApiError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"}
# Declared part types that are certainly not a photo/scan we can read.
ACCEPTED_TYPES = ["image/jpeg", "image/png", "image/webp", "image/bmp", "image/tiff", "image/gif"]


@dataclass
class Upload:
    name: str  # the client's file name, cleaned; only ever echoed back, never used as a path
    content_type: str
    data: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def clean_name(name: str | None, fallback: str = "upload") -> str:
    """A client file name safe to echo: last path component, no control characters, bounded."""
    if not name:
        return fallback
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip()
    return name[:200] or fallback


def check_declared_type(upload: Upload) -> None:
    """415 for a part that says it is something we cannot read (HTML, PDF, SVG...)."""
    ctype = (upload.content_type or "").split(";")[0].strip().lower()
    if not ctype or ctype == "application/octet-stream" or ctype in ACCEPTED_TYPES:
        return
    if ctype == "image/svg+xml":
        reason = "SVG (vector) images are not supported; send a JPEG, PNG or WebP"
    elif ctype.startswith("image/"):
        # e.g. image/heic, image/avif: let the decoder try (some builds read them) and decide.
        return
    else:
        reason = f"{ctype} is not an image type; send a JPEG, PNG or WebP"
    raise ApiError(415, "unsupported_media_type", f"{upload.name}: {reason}")


def decode_status(reason: str) -> tuple[int, str]:
    """HTTP status and error code for an `ImageDecodeError` reason (see artlens.data.images)."""
    r = reason.lower()
    if "not an image" in r or "not supported" in r or "unsupported" in r:
        return 415, "unsupported_media_type"  # PDF/HTML/text/SVG/HEIC, unknown formats and modes
    if "too large" in r or "bomb" in r or "out of memory" in r:
        return 422, "image_too_large"
    if "truncated" in r:
        return 422, "truncated_image"
    return 422, "invalid_image"  # corrupt data, empty file, 0x0 image


def decode_upload(upload: Upload, max_pixels: int, min_side: int | None = None,
                  reserve: Callable[[int], None] | None = None):
    """(PIL RGB image, full (width, height)), or `ApiError` (415/422) naming the file and the reason.

    With `min_side`, the picture decodes at reduced size, keeping at least that many pixels a side
    (the models see 224-448 px): JPEG at the decoder's reduced scale, other formats reduced right
    after decoding; `reserve(pixels)` is asked first, with the cost read from the header, and may
    refuse with its own `ApiError` (see `artlens.serve.work.Decoding`).
    """
    from artlens.data.images import ImageDecodeError, load_image_bytes, load_reduced_bytes

    check_declared_type(upload)
    try:
        if min_side:
            probe = load_reduced_bytes(upload.data, upload.name, max_pixels=max_pixels, min_side=min_side, reserve=reserve)
            return probe.thumbnail, (probe.width, probe.height)
        img = load_image_bytes(upload.data, upload.name, max_pixels=max_pixels)
        return img, img.size
    except ApiError:
        raise
    except ImageDecodeError as exc:
        status, code = decode_status(exc.reason)
        raise ApiError(status, code, f"{upload.name}: {exc.reason}") from None
    except MemoryError:
        raise ApiError(422, "image_too_large", f"{upload.name}: not enough memory to decode this image") from None
    except Exception as exc:  # a decoder bug must not take the server down
        raise ApiError(422, "invalid_image", f"{upload.name}: could not decode ({type(exc).__name__})") from None


def shrink(image, max_side: int):
    """A copy no larger than `max_side` on its long side (explain overlays, thumbnails)."""
    if max(image.size) <= max_side:
        return image
    out = image.copy()
    out.thumbnail((max_side, max_side))
    return out


def encode(image, fmt: str = "JPEG", quality: int = 88) -> bytes:
    buf = io.BytesIO()
    if fmt == "PNG":
        image.save(buf, format="PNG", optimize=False)
    else:
        image.convert("RGB").save(buf, format="JPEG", quality=quality, progressive=True)
    return buf.getvalue()


_SMALL = {"a", "an", "and", "at", "by", "de", "del", "della", "der", "des", "di", "du", "for", "from", "in", "la", "le",
          "near", "of", "on", "or", "the", "to", "van", "von", "with", "y"}


def describe_file(stem: str) -> tuple[str, str | None]:
    """(title, artist) from a WikiArt-style name `claude-monet_water-lilies-1916`."""
    artist, sep, title = stem.partition("_")
    if not sep:
        artist, title = None, stem

    def nice(s: str) -> str:
        words = [w for w in re.split(r"[-_\s]+", s.strip()) if w]
        out: list[str] = []
        for i, w in enumerate(words):
            if i and w.lower() in ("l", "d") and i + 1 < len(words):  # l-opera -> l'Opera
                out.append(w.lower() + "'")
            elif out and out[-1].endswith("'"):
                out[-1] += w[:1].upper() + w[1:]
            else:
                out.append(w.lower() if i and w.lower() in _SMALL else w[:1].upper() + w[1:])
        return " ".join(out)

    return nice(title) or stem, (nice(artist) if artist else None)


# --------------------------------------------------------------------------- similar backends
class FaissBackend:
    """Adapts `artlens.retrieval.FaissIndex` to what the server needs."""

    def __init__(self, index, encoder, collection: str | None = None):
        self.index = index
        self.encoder = encoder
        self.backbone_id = index.backbone_id
        self.collection = collection  # the folder's name under `serve --collection`

    def __len__(self) -> int:
        return len(self.index)

    @property
    def modes(self) -> list[str]:
        return list(self.index.modes)

    @property
    def default_mode(self) -> str:
        return self.index.default_mode

    def search_image(self, image, k: int, sha256: str | None = None, by: str | None = None) -> list[dict[str, Any]]:
        from artlens.retrieval import similar

        found = similar(self.index, image, k, by=by, encoder=self.encoder, query_sha256=sha256)
        return [
            {"row": n.id, "similarity": n.similarity, "labels": n.labels, "duplicate": n.duplicate, "path": n.path}
            for n in found
        ]

    def path_of(self, row: int) -> Path | None:
        rows = self.index.rows
        if "path" not in rows.columns or not 0 <= row < len(rows):
            return None
        value = rows["path"].iloc[row]
        return Path(value) if isinstance(value, str) and value else None

    def labels_of(self, row: int) -> dict[str, str]:
        from artlens.retrieval.index import LABEL_COLUMNS, _present

        r = self.index.rows.iloc[row]
        return {c: str(r[c]) for c in LABEL_COLUMNS if c in self.index.rows.columns and _present(r[c])}

    def sample_rows(self, n: int) -> list[int]:
        """Up to n rows with distinct styles (or just the first rows), for the examples list."""
        rows = self.index.rows
        if "style" in rows.columns:
            firsts = rows.reset_index().dropna(subset=["style"]).groupby("style", sort=True)["index"].first()
            return [int(i) for i in firsts.tolist()[:n]]
        return list(range(min(n, len(rows))))

    def info(self) -> dict[str, Any]:
        return {"size": len(self.index), "backbone": self.index.backbone, "kind": self.index.kind,
                "modes": self.modes, "default_mode": self.default_mode, "collection": self.collection}


def load_faiss_backend(index_dir: Path, predictor) -> FaissBackend:
    """Load an index directory; reuse the model's encoder when it made the index."""
    from artlens.retrieval import FaissIndex, RetrievalError, check_encoder, query_encoder

    index = FaissIndex.load(index_dir)
    try:
        check_encoder(index, predictor.encoder)
        encoder = predictor.encoder
    except RetrievalError:
        encoder = query_encoder(index)
    return FaissBackend(index, encoder)


# --------------------------------------------------------------------------- example catalogue
@dataclass
class Item:
    id: str
    title: str
    artist: str | None
    labels: dict[str, str] = field(default_factory=dict)
    source: str = "examples"  # examples | index


_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,95}$")


def slug(text: str) -> str:
    s = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.sub(r"[^a-z0-9]+", "-", s).strip("-")[:80] or "item"


class Catalogue:
    """id -> picture the server may show. Ids are `ex-<slug>` (package examples) or `ix-<row>` (index
    rows); anything else, and any id not in the table, is unknown."""

    def __init__(self, examples_dir: Path | None, index=None, max_examples: int = 12):
        self.index = index
        self._paths: dict[str, Path] = {}
        self.examples: list[Item] = []
        seen: set[Path] = set()
        if examples_dir is not None and examples_dir.is_dir():
            for p in sorted(examples_dir.iterdir()):
                if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith(".") or not p.is_file():
                    continue
                item_id = "ex-" + slug(p.stem)
                if item_id in self._paths:
                    continue
                title, artist = describe_file(p.stem)
                self._paths[item_id] = p.resolve()
                seen.add(p.resolve())
                self.examples.append(Item(item_id, title, artist))
        if index is not None and hasattr(index, "sample_rows"):
            for row in index.sample_rows(max(0, max_examples - len(self.examples))):
                path = index.path_of(row)
                if path is None or path.resolve() in seen:
                    continue
                title, artist = describe_file(path.stem)
                self.examples.append(Item(f"ix-{row}", title, artist, index.labels_of(row), "index"))
        self.examples = self.examples[:max_examples]

    def path(self, item_id: str) -> Path | None:
        if not _ID.match(item_id):
            return None
        if item_id in self._paths:
            return self._paths[item_id]
        if item_id.startswith("ix-") and self.index is not None and item_id[3:].isdigit():
            row = int(item_id[3:])
            if 0 <= row < len(self.index):
                return self.index.path_of(row)
        return None


class LruBytes:
    """A small thread-safe LRU of encoded thumbnails."""

    def __init__(self, capacity: int = 256):
        self.capacity = capacity
        self._data: OrderedDict[Any, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get_or_make(self, key, make: Callable[[], bytes]) -> bytes:
        with self._lock:
            if key in self._data:
                self._data.move_to_end(key)
                return self._data[key]
        value = make()
        with self._lock:
            self._data[key] = value
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return value


class Lazy:
    """Build something heavy once (e.g. the Grad-CAM model), in the background or on first use."""

    def __init__(self, build: Callable[[], Any]):
        self._build = build
        self._lock = threading.Lock()
        self._value: Any = None
        self._error: BaseException | None = None
        self._done = False

    def get(self) -> Any:
        with self._lock:
            if not self._done:
                try:
                    self._value = self._build()
                except Exception as exc:
                    self._error = exc
                self._done = True
        if self._error is not None:
            raise self._error
        return self._value

    @property
    def ready(self) -> bool:
        return self._done and self._error is None

    @property
    def error(self) -> BaseException | None:
        return self._error

    def start(self) -> None:
        threading.Thread(target=lambda: self._safe_get(), name="artlens-warmup", daemon=True).start()

    def _safe_get(self) -> None:
        try:
            self.get()
        except Exception:
            pass
