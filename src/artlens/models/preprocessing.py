"""One description of a backbone's input, and everything derived from it.

A `Preprocessing` says how an image becomes a model input: short side resized to `resize_size`
(with `interpolation`), centre crop `input_size` x `input_size`, scale to [0, 1], normalise with
`mean`/`std`. Each registered backbone carries one (`BackboneSpec.preprocessing`), a model stores
its own in `config.json` (`to_config` / `from_config`), and everything else derives from it:

    >>> pre = Preprocessing.from_spec("resnet18")
    >>> pre.to_config()
    {'input_size': 224, 'resize_size': 256, 'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'interpolation': 'bilinear'}
    >>> x = pre(img)                        # float32 (3, 224, 224): what the encoders consume
    >>> t = pre.eval_transform()(img)       # the same pixels as a torch tensor (training, Grad-CAM)
    >>> pre.crop_box(*img.size)             # where the model looks, in the image's pixels

The geometry is torchvision's `Resize(int)` + `CenterCrop` (the reference eval transform of every
registered backbone) done with Pillow, so inference needs neither torch nor torchvision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

__all__ = ["Preprocessing", "INTERPOLATIONS"]

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
_KEYS = ("input_size", "resize_size", "mean", "std", "interpolation")


def _size(name: str, value: Any) -> int:
    number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or value != int(value):
        raise ValueError(f"preprocessing: {name} must be a whole number of pixels, got {value!r}")
    if int(value) <= 0:
        raise ValueError(f"preprocessing: {name} must be positive, got {value!r}")
    return int(value)


def _channels(name: str, value: Any, positive: bool) -> tuple[float, float, float]:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"preprocessing: {name} must be 3 numbers (R, G, B), got {value!r}") from None
    if len(out) != 3:
        raise ValueError(f"preprocessing: {name} must be 3 numbers (R, G, B), got {len(out)}")
    if not all(math.isfinite(v) for v in out):
        raise ValueError(f"preprocessing: {name} must be finite, got {list(out)}")
    if positive and not all(v > 0 for v in out):
        # std divides the pixels: 0 would turn the image into NaN/inf
        raise ValueError(f"preprocessing: {name} must be > 0 in every channel, got {list(out)}")
    return out


@dataclass(frozen=True)
class Preprocessing:
    """Eval preprocessing of one backbone (or of one trained model). Immutable and picklable, so
    worker processes can run it; validated on construction."""

    input_size: int  # side of the square centre crop the model sees
    resize_size: int  # the short side is resized to this first (input/resize = timm's crop_pct)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str  # one of INTERPOLATIONS

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_size", _size("input_size", self.input_size))
        object.__setattr__(self, "resize_size", _size("resize_size", self.resize_size))
        object.__setattr__(self, "mean", _channels("mean", self.mean, positive=False))
        object.__setattr__(self, "std", _channels("std", self.std, positive=True))
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocessing: interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec: Any) -> "Preprocessing":
        """The registry's description of a backbone: a `BackboneSpec` or a registered name."""
        if isinstance(spec, str):
            from artlens.models.backbones import get_spec

            spec = get_spec(spec)
        return spec.preprocessing

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, backbone: str | None = None) -> "Preprocessing":
        """From a config.json `preprocessing` block. Keys it lacks come from the registry's
        description of `backbone`, except that a missing `resize_size` with an `input_size`
        given means no crop (resize_size = input_size). Raises ValueError naming the bad field."""
        if isinstance(config, Preprocessing):
            return config
        if config is not None and not isinstance(config, Mapping):
            raise ValueError(f"preprocessing: expected an object, got {type(config).__name__}")
        given = {k: config[k] for k in _KEYS if k in (config or {})}
        if "input_size" in given and "resize_size" not in given:
            given["resize_size"] = given["input_size"]
        missing = [k for k in _KEYS if k not in given]
        if not missing:
            return cls(**given)
        if backbone is None:
            raise ValueError(f"preprocessing: missing {', '.join(missing)}")
        # Check the given fields first, so a bad value is named even when the backbone is unknown.
        cls(**{**_PLACEHOLDER, **given})
        return replace(cls.from_spec(backbone), **given)

    def to_config(self) -> dict[str, Any]:
        """The config.json `preprocessing` block (JSON types)."""
        return {"input_size": self.input_size, "resize_size": self.resize_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}

    def at_size(self, input_size: int | None) -> "Preprocessing":
        """The same description at another input size, keeping the resize/crop ratio
        (fine-tuning at `finetune.image_size`)."""
        if not input_size or int(input_size) == self.input_size:
            return self
        size = int(input_size)
        return replace(self, input_size=size, resize_size=int(round(size * self.resize_size / self.input_size)))

    @property
    def crop_pct(self) -> float:
        """input_size / resize_size, timm's name for the ratio."""
        return self.input_size / self.resize_size

    def fingerprint(self) -> dict[str, Any]:
        """What an encoder's backbone id hashes (rounded, so float noise does not change the id)."""
        return {"input_size": self.input_size, "resize_size": self.resize_size, "mean": [round(m, 8) for m in self.mean],
                "std": [round(s, 8) for s in self.std], "interpolation": self.interpolation}

    # ------------------------------------------------------------------ geometry
    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the short side is resized to `resize_size` (torchvision's rounding)."""
        s = self.resize_size
        return (s, int(s * height / width)) if width <= height else (int(s * width / height), s)

    def _crop_origin(self, width: int, height: int) -> tuple[int, int]:
        # torchvision's CenterCrop: an edge shorter than the crop is padded with black on both sides
        def start(n: int) -> int:
            c = self.input_size
            return -((c - n) // 2) if c > n else int(round((n - c) / 2.0))

        return start(width), start(height)

    def crop_box(self, width: int, height: int, into: tuple[int, int] | None = None) -> tuple[int, int, int, int]:
        """The model's centre crop of a (width, height) image as (left, top, right, bottom) in the
        pixels of a copy of that image of size `into` (default: the image itself), clipped to it.
        Explain uses it to draw a heat map where the model looked."""
        rw, rh = self.resized_size(width, height)
        left, top = self._crop_origin(rw, rh)
        dw, dh = into or (width, height)
        sx, sy = dw / rw, dh / rh
        c = self.input_size
        return (max(0, round(left * sx)), max(0, round(top * sy)), min(dw, round((left + c) * sx)), min(dh, round((top + c) * sy)))

    # ------------------------------------------------------------------ eval, numpy
    def crop(self, img):
        """The PIL image the model sees, before normalisation: RGB, resized, centre cropped."""
        from PIL import Image

        if img.mode != "RGB":
            img = img.convert("RGB")
        new = self.resized_size(*img.size)
        if new != img.size:
            img = img.resize(new, getattr(Image.Resampling, self.interpolation.upper()))
        left, top = self._crop_origin(*img.size)
        c = self.input_size
        if (left, top, img.size) == (0, 0, (c, c)):
            return img
        return img.crop((left, top, left + c, top + c))  # outside the image Pillow fills black

    def normalize(self, img) -> np.ndarray:
        """A (cropped) PIL image -> float32 (3, H, W): scaled to [0, 1], normalised."""
        if img.mode != "RGB":
            img = img.convert("RGB")
        arr = np.asarray(img, dtype=np.float32).transpose(2, 0, 1) * (1.0 / 255.0)
        mean = np.asarray(self.mean, np.float32).reshape(3, 1, 1)
        std = np.asarray(self.std, np.float32).reshape(3, 1, 1)
        return np.ascontiguousarray((arr - mean) / std, dtype=np.float32)

    def __call__(self, img) -> np.ndarray:
        """The eval transform: PIL image -> float32 (3, input_size, input_size)."""
        return self.normalize(self.crop(img))

    def batch(self, images: Sequence[Any]) -> np.ndarray:
        """The eval transform over a list of images: float32 (N, 3, input_size, input_size)."""
        if len(images) == 0:
            return np.zeros((0, 3, self.input_size, self.input_size), np.float32)
        return np.stack([self(im) for im in images])

    # ------------------------------------------------------------------ torch
    def eval_transform(self) -> "TensorTransform":
        """The eval transform as a torch tensor (3, S, S): the same pixels as `__call__`."""
        return TensorTransform(self, crop=True)

    def tensor_transform(self) -> "TensorTransform":
        """The last step of a train transform: an already cropped PIL image -> normalised tensor."""
        return TensorTransform(self, crop=False)

    @property
    def torch_interpolation(self):
        """torchvision's `InterpolationMode` for `interpolation`."""
        from torchvision.transforms import InterpolationMode

        return InterpolationMode(self.interpolation)


@dataclass(frozen=True)
class TensorTransform:
    """A picklable PIL -> torch tensor step over a `Preprocessing` (for DataLoader workers)."""

    pre: Preprocessing
    crop: bool = True

    def __call__(self, img):
        import torch

        return torch.from_numpy(self.pre(img) if self.crop else self.pre.normalize(img))


# A stand-in for the fields a partial config lacks, only to validate the ones it has.
_PLACEHOLDER = {"input_size": 1, "resize_size": 1, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "interpolation": "bilinear"}
