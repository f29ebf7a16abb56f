"""Safe decoding: every input becomes an RGB image or one ImageDecodeError naming file and reason."""

from __future__ import annotations

import io
import os
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from artlens.data.images import (
    ImageDecodeError,
    load_image,
    load_image_bytes,
    probe_image_bytes,
    read_image_file,
)
from tests.conftest import make_image


def write_png_bomb(path: Path, width: int = 30_000, height: int = 30_000) -> Path:
    """A valid 1-bit greyscale PNG of `width` x `height`, written row by row with zlib: the file is
    ~100 KB and making it takes no memory (Pillow would need the whole image)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\x00" * ((width + 7) // 8)  # filter byte + packed bits
    comp = zlib.compressobj(9)
    parts = [comp.compress(row) for _ in range(height)]
    idat = b"".join(parts) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def jpeg_bytes(size=(64, 48), seed=0, **save) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", **save)
    return buf.getvalue()


def reason_of(path) -> str:
    with pytest.raises(ImageDecodeError) as info:
        load_image(path)
    assert info.value.path == str(path)
    assert str(info.value) == f"{path}: {info.value.reason}"
    return info.value.reason


# ---------------------------------------------------------------------------------------------
# Good images in every mode come out RGB
# ---------------------------------------------------------------------------------------------


def test_rgb_jpeg(image_factory):
    img = load_image(image_factory("a.jpg", size=(40, 30)))
    assert img.mode == "RGB" and img.size == (40, 30)


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :10] = (255, 0, 0)  # red stripe on the left edge
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=95)
    out = load_image(path)
    assert out.size == (20, 60)
    top = np.asarray(out)[:5].mean(axis=(0, 1))
    assert top[0] > 150 and top[1] < 100  # the red stripe is now along the top
    probe = probe_image_bytes(path.read_bytes(), str(path))
    assert (probe.width, probe.height) == (20, 60)


def test_rgba_is_composited_on_white(tmp_path):
    arr = np.zeros((10, 10, 4), np.uint8)
    arr[..., 0] = 255  # red, fully transparent on the left half
    arr[:, 5:, 3] = 255
    path = tmp_path / "alpha.png"
    Image.fromarray(arr, "RGBA").save(path)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255)
    assert tuple(out[0, 9]) == (255, 0, 0)


@pytest.mark.parametrize("mode", ["P", "L", "LA", "1", "CMYK", "YCbCr", "RGBA"])
def test_modes_become_rgb(mode):
    img = Image.fromarray(np.random.default_rng(1).integers(0, 256, (12, 16, 3), dtype=np.uint8)).convert(mode)
    fmt = "JPEG" if mode in ("CMYK", "YCbCr") else "PNG"
    buf = io.BytesIO()
    img.save(buf, fmt)
    out = load_image_bytes(buf.getvalue(), f"x.{fmt.lower()}")
    assert out.mode == "RGB" and out.size == (16, 12)


@pytest.mark.parametrize("mode", ["PA", "I", "F", "I;16B", "RGBX", "LAB", "HSV"])
def test_in_memory_modes_become_rgb(mode):
    """Modes files rarely carry but Pillow can hand over (TIFF, PSD...)."""
    from artlens.data.images import _to_rgb

    base = Image.fromarray(np.random.default_rng(2).integers(0, 256, (6, 8), dtype=np.uint8))
    img = base.convert("P").convert("PA") if mode == "PA" else base.convert("RGB").convert(mode) if mode in ("RGBX", "LAB", "HSV") else base.convert(mode)
    out = _to_rgb(img)
    assert out.mode == "RGB" and out.size == (8, 6)


def test_unconvertible_mode_is_named():
    from artlens.data.images import _to_rgb

    with pytest.raises(ValueError, match="unsupported image mode La"):
        _to_rgb(Image.new("La", (4, 4)))


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (8, 8), 0)
    img.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    img.putpixel((7, 7), 1)
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    out = np.asarray(load_image(path))
    assert tuple(out[0, 0]) == (255, 255, 255)  # transparent index -> white
    assert tuple(out[7, 7]) == (200, 10, 10)


def test_16bit_png_is_scaled_not_clipped(tmp_path):
    arr = np.full((10, 10), 65535, np.uint16)
    arr[:, :5] = 32768
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    out = np.asarray(load_image(path))
    assert out[0, 9, 0] == 255
    assert 120 <= out[0, 0, 0] <= 130  # half of full scale, not clipped to 255


def test_cmyk_jpeg_colour(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("RGB", (16, 16), (200, 20, 20)).convert("CMYK").save(path, quality=95)
    out = np.asarray(load_image(path)).mean(axis=(0, 1))
    assert out[0] > 150 and out[1] < 80 and out[2] < 80


def test_animated_gif_gives_first_frame(tmp_path):
    frames = [Image.new("RGB", (10, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out = np.asarray(load_image(path)).mean(axis=(0, 1))
    assert out[0] > 200 and out[2] < 50


def test_one_pixel_image(tmp_path):
    assert load_image(make_image(tmp_path / "one.png", size=(1, 1))).size == (1, 1)


def test_probe_decodes_large_jpeg_at_reduced_scale():
    data = jpeg_bytes(size=(2048, 1024))
    probe = probe_image_bytes(data, "big.jpg", thumb_size=256)
    assert (probe.width, probe.height) == (2048, 1024)
    assert probe.format == "JPEG" and probe.thumbnail.mode == "RGB"
    assert 256 <= min(probe.thumbnail.size) < 1024  # draft mode: 1/2..1/8 scale


# ---------------------------------------------------------------------------------------------
# Bad inputs: one typed error with a reason
# ---------------------------------------------------------------------------------------------


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty file" in reason_of(tmp_path / "empty.jpg")


def test_truncated_jpeg(tmp_path):
    data = jpeg_bytes(size=(200, 200))
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in reason_of(path)
    with pytest.raises(ImageDecodeError, match="truncated"):
        probe_image_bytes(path.read_bytes(), str(path))  # draft decoding still reads the stream


def test_truncated_png(tmp_path):
    path = make_image(tmp_path / "cut.png", size=(100, 100))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert "truncated" in reason_of(path) or "corrupt" in reason_of(path)


@pytest.mark.parametrize(
    "content,expected",
    [
        (b"just some notes\nnot a picture\n", "text file"),
        (b"<!DOCTYPE html><html><body>404</body></html>", "HTML"),
        (b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n", "PDF"),
        (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"></svg>', "SVG"),
        (b"\x00\x01\x02\x03\xff\xfe\xfd binary junk", "not an image"),
    ],
)
def test_non_images_named_jpg(tmp_path, content, expected):
    path = tmp_path / "fake.jpg"
    path.write_bytes(content)
    assert expected in reason_of(path)


def test_unsupported_format_is_named(tmp_path):
    path = tmp_path / "icon.ico"
    Image.new("RGB", (16, 16)).save(path, "ICO")
    assert reason_of(path) == "unsupported image format ICO"


def test_pixel_limit(tmp_path):
    path = make_image(tmp_path / "wide.png", size=(300, 200))
    with pytest.raises(ImageDecodeError, match="too large"):
        load_image(path, max_pixels=50_000)
    assert load_image(path, max_pixels=60_000).size == (300, 200)


def test_png_bomb_is_refused_cheaply(tmp_path):
    path = write_png_bomb(tmp_path / "bomb.png")
    assert path.stat().st_size < 2_000_000
    assert "too large" in reason_of(path)


def test_missing_directory_fifo(tmp_path):
    assert "not found" in reason_of(tmp_path / "nope.jpg")
    (tmp_path / "dir.jpg").mkdir()
    assert reason_of(tmp_path / "dir.jpg") == "is a directory"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")
        assert reason_of(tmp_path / "pipe.jpg") == "not a regular file"  # and does not block


def test_symlink_loop(tmp_path):
    loop = tmp_path / "loop.jpg"
    os.symlink(loop, loop)
    assert "cannot read" in reason_of(loop) or "not found" in reason_of(loop)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_permission_denied(tmp_path):
    path = make_image(tmp_path / "locked.jpg")
    path.chmod(0)
    try:
        assert reason_of(path) == "permission denied"
    finally:
        path.chmod(0o644)


def test_file_size_limit(tmp_path):
    path = make_image(tmp_path / "a.png", size=(50, 50))
    with pytest.raises(ImageDecodeError, match="file too large"):
        read_image_file(path, max_bytes=100)


def test_error_pickles_across_processes():
    err = pickle.loads(pickle.dumps(ImageDecodeError("/x/y.jpg", "empty file (0 bytes)")))
    assert isinstance(err, ImageDecodeError)
    assert (err.path, err.reason, str(err)) == ("/x/y.jpg", "empty file (0 bytes)", "/x/y.jpg: empty file (0 bytes)")


def test_empty_upload():
    with pytest.raises(ImageDecodeError, match="empty"):
        load_image_bytes(b"", "upload.png")


# ---------------------------------------------------------------------------------------------
# Property-based: nothing but ImageDecodeError, ever
# ---------------------------------------------------------------------------------------------

_SEEDS: list[bytes] = []


def _seed_files() -> list[bytes]:
    if not _SEEDS:
        base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8))
        for fmt, kw in [("JPEG", {}), ("JPEG", {"progressive": True}), ("PNG", {}), ("GIF", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {})]:
            buf = io.BytesIO()
            base.save(buf, fmt, **kw)
            _SEEDS.append(buf.getvalue())
    return _SEEDS


def _decode_or_typed_error(data: bytes) -> None:
    for fn in (load_image_bytes, probe_image_bytes):
        try:
            out = fn(data, "fuzz.bin")
        except ImageDecodeError as exc:
            assert exc.path == "fuzz.bin" and exc.reason
        else:
            img = out if isinstance(out, Image.Image) else out.thumbnail
            assert img.mode == "RGB"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=0, max_size=2048))
def test_random_bytes_never_crash(data):
    _decode_or_typed_error(data)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(min_value=0, max_value=6),
    st.lists(st.tuples(st.integers(min_value=0, max_value=10**6), st.integers(min_value=0, max_value=255)), max_size=8),
    st.one_of(st.none(), st.integers(min_value=1, max_value=10**6)),
)
def test_mutated_images_never_crash(which, flips, cut):
    """Valid files with flipped bytes and truncation reach deep into the decoders."""
    data = bytearray(_seed_files()[which])
    for pos, value in flips:
        data[pos % len(data)] = value
    if cut is not None:
        data = data[: max(1, cut % len(data))]
    _decode_or_typed_error(bytes(data))
