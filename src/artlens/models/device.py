"""Which device inference runs on: `cpu`, `cuda` (or `cuda:N`) or `auto`, and batch sizes for it.

`resolve_device("auto")` is cheap where there is no GPU: it asks the CUDA driver (libcuda, through
ctypes) how many devices there are before importing torch, so `artlens predict` on a CPU machine
never pays for torch. `resolve_device("cuda")` without a usable device raises `DeviceError` with
one line saying why.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
import sys

__all__ = ["DEVICES", "DeviceError", "resolve_device", "cuda_device_count", "default_batch_size"]

DEVICES = ("cpu", "cuda", "auto")
_DEVICE = re.compile(r"^(cpu|auto|cuda(?::(\d+))?)$")


class DeviceError(ValueError):
    """The device asked for cannot be used (no CUDA device, torch built without CUDA...)."""


@functools.cache
def _driver_device_count() -> int:
    """CUDA devices the driver sees (0 without a driver), without importing torch."""
    if sys.platform == "darwin":
        return 0
    names = ("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")
    for name in names:
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        try:
            if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
                return 0
        except AttributeError:  # not the driver API
            continue
        return int(count.value)
    return 0


def cuda_device_count() -> int:
    """CUDA devices usable from torch here (0 when there is no driver, no device, or `CUDA_VISIBLE_DEVICES`
    hides them all). Imports torch only when the driver reports a device."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    if "torch" not in sys.modules and _driver_device_count() == 0:
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str | None = "auto") -> str:
    """`cpu`, `cuda`, `cuda:N` or `auto` -> the device to use (`cpu` or `cuda[:N]`).

    `auto` is `cuda` when a CUDA device is usable, else `cpu`. `cuda` without one raises
    `DeviceError`; so does an unknown name."""
    name = (device or "auto").strip().lower()
    m = _DEVICE.match(name)
    if m is None:
        raise DeviceError(f"unknown device {device!r}: use cpu, cuda, cuda:N or auto")
    if name == "cpu":
        return "cpu"
    count = cuda_device_count()
    if name == "auto":
        return "cuda" if count else "cpu"
    if count == 0:
        raise DeviceError(f"no CUDA device: {_why_no_cuda()} (use --device cpu or auto)")
    index = int(m.group(2) or 0)
    if index >= count:
        raise DeviceError(f"no CUDA device {index}: {count} visible (use cuda:0 to cuda:{count - 1})")
    return name


def _why_no_cuda() -> str:
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return "CUDA_VISIBLE_DEVICES hides every device"
    if _driver_device_count() == 0:
        return "no NVIDIA driver or GPU found"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.backends.cuda.is_built():
        return f"torch {torch.__version__} is a CPU-only build"
    return "torch cannot use the GPU"


def default_batch_size(device: str, kind: str = "cnn") -> int:
    """Images per batch when the caller gives none: 32 on the CPU (the encoders slice it further
    between threads), 256 on a GPU for a ViT (CLIP B/16 in fp32 holds ~1 GB of activations per
    256 images) and 512 for a CNN."""
    if not str(device).startswith("cuda"):
        return 32
    return 256 if kind == "vit" else 512
