"""Safe image decoding: every file becomes an RGB PIL image or one typed error naming it.

Pillow does the decoding; this module adds the policy: EXIF orientation, mode conversion
(transparency composited on white), a decompression-bomb limit, and one error type.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

# 8,000 x 8,000 = 64 Mpx: bigger than any painting scan the models need (they see 224-512 px),
# small enough that one decode cannot take gigabytes.
MAX_PIXELS = 64_000_000

SUPPORTED_FORMATS = {"JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "MPO"}


class ImageDecodeError(Exception):
    """An image that cannot be used, with the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode == "RGB":
        return img
    if img.mode == "P":
        img = img.convert("RGBA") if "transparency" in img.info else img.convert("RGB")
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping at 255.
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if img.mode.startswith("I;16") else max(float(arr.max()), 1.0)
        img = Image.fromarray((arr / hi * 255.0).clip(0, 255).astype("uint8"), mode="L")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _decode(fp, name: str, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(fp)
        except UnidentifiedImageError:
            raise ImageDecodeError(name, "not an image (unrecognised file format)") from None
        except Image.DecompressionBombWarning as exc:
            raise ImageDecodeError(name, f"image too large (decompression bomb): {exc}") from None
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(name, f"image too large (decompression bomb): {exc}") from None
        fmt = img.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise ImageDecodeError(name, f"unsupported image format {fmt}")
        w, h = img.size
        if w * h > max_pixels:
            raise ImageDecodeError(
                name, f"image too large: {w}x{h} = {w * h:,} pixels (limit {max_pixels:,})"
            )
        if w < 1 or h < 1:
            raise ImageDecodeError(name, f"empty image ({w}x{h})")
        try:
            if getattr(img, "is_animated", False):
                img.seek(0)  # first frame of an animation
            img.load()
            img = ImageOps.exif_transpose(img) or img
            return _to_rgb(img)
        except ImageDecodeError:
            raise
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            msg = str(exc) or type(exc).__name__
            if "truncated" in msg.lower() or isinstance(exc, EOFError):
                raise ImageDecodeError(name, f"truncated image file ({msg})") from None
            raise ImageDecodeError(name, f"corrupt image data ({msg})") from None
        except Image.DecompressionBombError as exc:
            raise ImageDecodeError(name, f"image too large (decompression bomb): {exc}") from None


def load_image(path: str | os.PathLike, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode `path` to an RGB image; raises `ImageDecodeError` naming the file and the reason."""
    path = Path(path)
    name = str(path)
    try:
        if path.is_dir():
            raise ImageDecodeError(name, "is a directory")
        size = path.stat().st_size
    except ImageDecodeError:
        raise
    except FileNotFoundError:
        raise ImageDecodeError(name, "file not found") from None
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except OSError as exc:  # symlink loops, bad names...
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from None
    if size == 0:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    try:
        with open(path, "rb") as fh:
            return _decode(fh, name, max_pixels)
    except PermissionError:
        raise ImageDecodeError(name, "permission denied") from None
    except ImageDecodeError:
        raise
    except OSError as exc:
        raise ImageDecodeError(name, f"cannot read file ({exc.strerror or exc})") from None


def load_image_bytes(data: bytes, name: str = "<upload>", *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an in-memory image (an upload)."""
    if not data:
        raise ImageDecodeError(name, "empty file (0 bytes)")
    return _decode(io.BytesIO(data), name, max_pixels)
