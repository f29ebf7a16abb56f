"""Safe image decoding: every file becomes an RGB PIL image or one typed error naming it.

Pillow does the decoding; this module adds the policy: EXIF orientation, mode conversion
(transparency composited on white, 16-bit scaled to 8), a decompression-bomb limit, a whitelist
of formats (Pillow's EPS plugin would run Ghostscript), and one error type for every failure.
"""

from __future__ import annotations

import io
import os
import stat
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from PIL import Image, ImageOps, UnidentifiedImageError

# 8,000 x 8,000 = 64 Mpx: bigger than any painting scan the models need (they see 224-512 px),
# small enough that one decode cannot take gigabytes.
MAX_PIXELS = 64_000_000
# A file bigger than this is refused before reading it (a 64 Mpx 16-bit TIFF is ~400 MB).
MAX_FILE_BYTES = 1 << 30

SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO", "AVIF"}
# Extensions a scan treats as images (a text file named .jpg is still tried, and reported).
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".avif"}
# Pictures that cannot be decoded here but belong in an image folder: a scan offers them to the
# decoder too, so each is reported with its reason ("an SVG ...") instead of silently left out.
UNSUPPORTED_IMAGE_EXTENSIONS = {".svg", ".heic", ".heif"}

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_ORIENTATION_TAG = 0x0112


class ImageDecodeError(Exception):
    """An image that cannot be used, with the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):  # picklable across process pools (the default uses self.args)
        return (type(self), (self.path, self.reason))


@dataclass(frozen=True)
class ImageProbe:
    """What a scan needs from one image: its decoded size and a small RGB copy for hashing."""

    width: int  # full size after EXIF rotation
    height: int
    format: str
    mode: str  # the file's own mode before conversion (e.g. "CMYK", "I;16")
    thumbnail: Image.Image  # RGB, at most about `thumb_size` on its short side for JPEG (draft decode)


def _open_formats() -> list[str]:
    # Plugins Pillow registers for opening (MPO has none of its own: the JPEG opener returns it).
    Image.init()
    return sorted(SUPPORTED_FORMATS & set(Image.OPEN))


def _sniff(head: bytes) -> str | None:
    """A readable name for common non-image files that land in image folders."""
    h = head.lstrip()[:512].lower()
    if h.startswith(b"%pdf"):
        return "a PDF document, not an image"
    if h.startswith(b"%!ps"):
        return "a PostScript file, not an image"
    if b"<svg" in h or (h.startswith(b"<?xml") and b"svg" in h):
        return "an SVG (vector graphics are not supported)"
    if h.startswith((b"<!doctype html", b"<html")) or b"<html" in h:
        return "an HTML page, not an image"
    if len(head) >= 12 and head[4:8] == b"ftyp" and head[8:12] in (b"heic", b"heix", b"mif1", b"msf1"):
        return "HEIC/HEIF images are not supported (convert to JPEG or PNG)"
    if head and all(32 <= b < 127 or b in (9, 10, 13) for b in head[:256]):
        return "a text file, not an image"
    return None


def _scale_to_l(img: Image.Image, hi: float | None = None) -> Image.Image:
    """16/32-bit integer or float greyscale to 8-bit 'L', scaling instead of clipping at 255.
    `hi`: the largest value of the whole picture when `img` is a part of it."""
    import numpy as np

    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        out = (arr.astype(np.uint32) >> 8).astype(np.uint8)  # 65535 -> 255
    elif img.mode == "F":
        arr = np.nan_to_num(arr.astype(np.float32))
        hi = 1.0 if float(arr.max(initial=0.0) if hi is None else hi) <= 1.0 else 255.0
        out = (arr / hi * 255.0).clip(0, 255).astype(np.uint8)
    else:  # "I": Pillow opens some 16-bit files as 32-bit; pick the range the values use
        hi = float(arr.max(initial=0)) if hi is None else hi
        hi = 255.0 if hi <= 255 else 65535.0 if hi <= 65535 else hi
        out = (arr.astype(np.float32) / hi * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(out, mode="L")


def _to_rgb(img: Image.Image, hi: float | None = None) -> Image.Image:
    if img.mode == "RGB":
        return img
    mode = img.mode
    try:
        if img.mode == "P":
            img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
        elif img.mode == "L" and "transparency" in img.info:
            img = img.convert("LA")
        if img.mode.startswith("I") or img.mode == "F":
            img = _scale_to_l(img, hi)
        if img.mode in _ALPHA_MODES:
            rgba = img.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return img.convert("RGB")
    except ValueError:  # modes Pillow cannot convert (e.g. premultiplied "La")
        raise ValueError(f"unsupported image mode {mode}") from None


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_ORIENTATION_TAG, 1) or 1)
    except Exception:  # a corrupt EXIF block should not cost the picture
        return 1


def _exif_transpose(img: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation; returns (image, whether width and height swapped)."""
    orientation = _orientation(img)
    if orientation == 1:
        return img, False
    try:
        out = ImageOps.exif_transpose(img) or img
    except Exception:  # broken EXIF: keep the pixels as stored
        return img, False
    return out, orientation in (5, 6, 7, 8)


def _open(fp, name: str, max_pixels: int) -> Image.Image:
    """Parse the header (no pixel data yet) and apply the format and size limits."""
    head = fp.read(512)
    fp.seek(0)
    try:
        img = Image.open(fp, formats=_open_formats())
    except UnidentifiedImageError:
        raise ImageDecodeError(name, _unidentified_reason(fp, head)) from None
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(name, f"image too large (decompression bomb): {exc}") from None
    w, h = img.size
    if w < 1 or h < 1:
        raise ImageDecodeError(name, f"empty image ({w}x{h})")
    if w * h > max_pixels:
        raise ImageDecodeError(name, f"image too large: {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})")
    return img


def _unidentified_reason(fp, head: bytes) -> str:
    sniffed = _sniff(head)
    if sniffed:
        return sniffed
    # Name the format when Pillow knows it but we do not accept it (header parse only, no load).
    try:
        fp.seek(0)
        with Image.open(fp) as other:
            return f"unsupported image format {other.format}"
    except Exception:
        return "not an image (unrecognised file format)"


@contextmanager
def _decode_errors(name: str):
    """Pillow's many failure types -> one `ImageDecodeError` naming the file and the reason. The
    frames of the failed decode are cleared, so a half-decoded picture is freed with them."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's chatter about odd tags; real failures raise
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            yield
        except ImageDecodeError:
            raise
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            traceback.clear_frames(exc.__traceback__)
            raise ImageDecodeError(name, f"image too large (decompression bomb): {exc}") from None
        except MemoryError as exc:
            traceback.clear_frames(exc.__traceback__)
            raise ImageDecodeError(name, "out of memory while decoding") from None
        except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, struct.error...
            traceback.clear_frames(exc.__traceback__)
            msg = str(exc) or type(exc).__name__
            if msg.startswith("unsupported image mode"):
                raise ImageDecodeError(name, msg) from None
            if "truncated" in msg.lower() or isinstance(exc, EOFError):
                raise ImageDecodeError(name, f"truncated image file ({msg})") from None
            raise ImageDecodeError(name, f"corrupt image data ({msg})") from None


def _decode(fp, name: str, max_pixels: int, draft: int | None = None) -> tuple[Image.Image, tuple[int, int], str, str]:
    """Decode to RGB. Returns (image, full size after rotation, format, original mode)."""
    with _decode_errors(name):
        img = _open(fp, name, max_pixels)
        fmt, mode, full = img.format or "unknown", img.mode, img.size
        if getattr(img, "is_animated", False):
            img.seek(0)  # first frame of an animation or multi-page file
        if draft and fmt == "JPEG":
            # JPEG can decode at 1/2..1/8 scale: the whole stream is still read (truncation
            # is still caught) at a fraction of the cost.
            img.draft("RGB", (draft, draft))
        img.load()
        img, swapped = _exif_transpose(img)
        if swapped:
            full = (full[1], full[0])
        return _to_rgb(img), full, fmt, mode


# Formats whose codec decodes into a full-size buffer of its own before Pillow copies it out.
_CODEC_BUFFERED = {"WEBP", "AVIF", "TIFF"}
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}


def decode_cost(img: Image.Image, full: tuple[int, int] | None = None) -> int:
    """Pixels that decoding the opened (not yet loaded) `img` will hold at once, read from the
    header alone: its size at the decoder's scale (after `draft` for JPEG), doubled for formats
    whose codec keeps a full-size buffer of its own; a progressive JPEG adds its whole-image
    coefficient buffer (libjpeg keeps one at full size whatever the scale; `full`: the size before
    `draft`). Pillow holds a pixel in at most 4 bytes, so a budget of N pixels is about 4N bytes."""
    w, h = img.size
    cost = w * h
    fmt = img.format or ""
    if fmt in _CODEC_BUFFERED:
        cost *= 2
    if fmt in ("JPEG", "MPO") and (img.info.get("progressive") or img.info.get("progression")):
        fw, fh = full or img.size
        cost += fw * fh
    return cost


def _strip_reduce(img: Image.Image, factor: int) -> Image.Image:
    """RGB, `factor` times smaller (box filter), converted a strip at a time: no full-size copy
    besides the decoded picture itself (alpha is composited on white before averaging)."""
    w, h = img.size
    hi = None
    if img.mode in ("I", "F"):  # one 8-bit range for the whole picture, not one per strip
        lo_v, hi_v = img.getextrema()
        hi = float(hi_v) if hi_v == hi_v else 0.0  # NaN max (F): as if 0
    rows = factor * max(1, 4_000_000 // max(1, w * factor))  # about 4 Mpx a strip, whole boxes
    out = Image.new("RGB", (-(-w // factor), -(-h // factor)))
    for top in range(0, h, rows):
        strip = img.crop((0, top, w, min(h, top + rows)))
        out.paste(_to_rgb(strip, hi).reduce(factor), (0, top // factor))
    return out


def load_reduced_bytes(
    data: bytes,
    name: str = "<upload>",
    *,
    max_pixels: int = MAX_PIXELS,
    min_side: int,
    reserve: Callable[[int], None] | None = None,
) -> ImageProbe:
    """Decode an in-memory image at reduced size: at least `min_side` pixels on its short side
    where the picture has them (JPEG at the decoder's 1/2..1/8 scale, every format then reduced by
    a whole factor with a box filter), RGB, EXIF rotation applied. `width`/`height` are the full
    size after rotation; `thumbnail` is the reduced picture.

    `reserve(cost)` is called with `decode_cost` (pixels) after the header is read and before any
    pixel is decoded; it may raise to refuse the picture (its exception passes through unchanged)
    or block until memory is free. When this returns, only the reduced picture is left: the caller
    may release the reservation down to `thumbnail`'s pixels. Other failures: `ImageDecodeError`.
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    with _decode_errors(name):
        img = _open(io.BytesIO(data), name, max_pixels)
        fmt, mode, full = img.format or "unknown", img.mode, img.size
        if getattr(img, "is_animated", False):
            img.seek(0)
        if fmt == "JPEG":
            img.draft("RGB", (min_side, min_side))
        cost = decode_cost(img, full)
    small = None
    try:
        if reserve is not None:
            reserve(cost)
        with _decode_errors(name):
            small, swapped = _load_reduced(img, min_side)
    finally:
        if small is not img:  # the full-size pixels go now, even if a traceback keeps this frame
            img.close()
    if swapped:
        full = (full[1], full[0])
    return ImageProbe(width=full[0], height=full[1], format=fmt, mode=mode, thumbnail=small)


def _load_reduced(img: Image.Image, min_side: int) -> tuple[Image.Image, bool]:
    img.load()
    factor = min(img.size) // max(1, min_side)
    if factor < 2:
        img, swapped = _exif_transpose(img)
        return _to_rgb(img), swapped
    orientation = _orientation(img)
    small = _strip_reduce(img, factor)
    method = _TRANSPOSE.get(orientation)
    return (small.transpose(method) if method is not None else small), orientation in (5, 6, 7, 8)


def read_image_file(path: str | os.PathLike, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file, or `ImageDecodeError` (missing, directory, FIFO, empty, huge...)."""
    path = Path(path)
    name = str(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None  # also a broken link
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except OSError as exc:  # symlink loops, names too long...
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from None
    if stat.S_ISDIR(st.st_mode):
        raise ImageDecodeError(name, "is a directory")
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would block or never end
        raise ImageDecodeError(name, "not a regular file")
    if st.st_size == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    if st.st_size > max_bytes:
        raise ImageDecodeError(name, f"file too large ({st.st_size:,} bytes, limit {max_bytes:,})")
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from None


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` to an RGB image; raises `ImageDecodeError` naming the file and the reason."""
    data = read_image_file(path)
    return _decode(io.BytesIO(data), str(path), max_pixels)[0]


def load_image_bytes(data: bytes, name: str = "<upload>", *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an in-memory image (an upload)."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)[0]


def probe_image_bytes(
    data: bytes, name: str = "<upload>", *, max_pixels: int = MAX_PIXELS, thumb_size: int = 256
) -> ImageProbe:
    """Fully decode (so corrupt files fail here) but keep only a small RGB copy.

    JPEGs decode at reduced scale (at least `thumb_size` on each side), which makes scanning
    large collections several times faster; `width`/`height` are still the full decoded size.
    """
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    img, (w, h), fmt, mode = _decode(io.BytesIO(data), name, max_pixels, draft=thumb_size)
    return ImageProbe(width=w, height=h, format=fmt, mode=mode, thumbnail=img)


def degraded_copy(img: Image.Image, *, jpeg_quality: int, side: int) -> Image.Image:
    """The image as a re-shared copy would look: shorter side at most `side` px, re-encoded as
    JPEG at `jpeg_quality`. Used to check that an answer does not hang on fragile pixels."""
    img = img.convert("RGB")
    short = min(img.size)
    if short > side:
        f = side / short
        img = img.resize((max(1, round(img.width * f)), max(1, round(img.height * f))), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(jpeg_quality))
    buf.seek(0)
    out = Image.open(buf)
    out.load()
    return out
