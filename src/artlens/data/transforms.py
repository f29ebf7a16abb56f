"""Train and eval transform presets (torchvision), like torchvision's references/classification.

Presets for training:
- `none`: the eval transform (resize the short side, centre crop, normalise).
- `flip`: eval geometry + random horizontal flip.
- `standard`: random resized crop, horizontal flip, small rotation; colour jitter is off by
  default (colour is evidence of style), switch it on with `color_jitter`.
- `patch`: `standard`, plus five full-resolution crops of each image (four corners and the
  centre, cut at the model's input size without downscaling), so the model also sees brushwork
  and texture at the scale of the original. Each image then yields six training samples.

Geometry and normalisation come from the backbone's preprocessing (`BackboneSpec` or the model
config's `preprocessing` dict); `image_size` overrides the input size (the resize keeps the spec's
resize/crop ratio).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

PRESETS = ("none", "flip", "standard", "patch")


@dataclass(frozen=True)
class Geometry:
    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def from_preprocessing(cls, pre: Any, image_size: int | None = None) -> "Geometry":
        """From a `BackboneSpec`, a `preprocessing` dict, or a `Geometry`."""
        if isinstance(pre, Geometry):
            g = pre
        else:
            get = (lambda k, d=None: pre.get(k, d)) if isinstance(pre, Mapping) else (lambda k, d=None: getattr(pre, k, d))
            size = int(get("input_size"))
            g = cls(size, int(get("resize_size") or size), tuple(map(float, get("mean"))), tuple(map(float, get("std"))),
                    str(get("interpolation") or "bilinear"))
        if image_size and int(image_size) != g.input_size:
            ratio = g.resize_size / g.input_size
            g = cls(int(image_size), int(round(int(image_size) * ratio)), g.mean, g.std, g.interpolation)
        return g

    def as_dict(self) -> dict:
        return {"input_size": self.input_size, "resize_size": self.resize_size, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
            "nearest": InterpolationMode.NEAREST}.get(name, InterpolationMode.BILINEAR)


def _finish(g: Geometry) -> list:
    from torchvision import transforms as T

    return [T.ToTensor(), T.Normalize(g.mean, g.std)]


def eval_transform(pre: Any, image_size: int | None = None) -> Callable:
    """PIL image -> normalised tensor (3, S, S): resize the short side, centre crop."""
    from torchvision import transforms as T

    g = Geometry.from_preprocessing(pre, image_size)
    return T.Compose([T.Resize(g.resize_size, interpolation=_interp(g.interpolation)), T.CenterCrop(g.input_size),
                      *_finish(g)])


class TrainTransform:
    """`transform(img, view=0)`; `views` samples per image (6 for `patch`, else 1)."""

    def __init__(self, preset: str, pre: Any, image_size: int | None = None, *, rotation: float = 15.0,
                 scale: tuple[float, float] = (0.6, 1.0), color_jitter: float = 0.0, vflip: bool = False):
        from torchvision import transforms as T

        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r} (use one of {', '.join(PRESETS)})")
        self.preset = preset
        self.geometry = g = Geometry.from_preprocessing(pre, image_size)
        interp = _interp(g.interpolation)
        flips = [T.RandomHorizontalFlip()] + ([T.RandomVerticalFlip()] if vflip else [])
        if preset == "none":
            self.whole = eval_transform(g)
        elif preset == "flip":
            self.whole = T.Compose([T.Resize(g.resize_size, interpolation=interp), T.CenterCrop(g.input_size),
                                    *flips, *_finish(g)])
        else:
            steps = [T.RandomResizedCrop(g.input_size, scale=tuple(scale), interpolation=interp), *flips]
            if rotation:
                steps.append(T.RandomRotation(float(rotation), interpolation=interp))
            if color_jitter:
                c = float(color_jitter)
                steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(0.5, c / 4)))
            self.whole = T.Compose([*steps, *_finish(g)])
        self.views = 6 if preset == "patch" else 1
        self._patch_finish = T.Compose([*flips, *_finish(g)])

    def region_crops(self, img):
        """The five full-resolution crops (top-left, top-right, bottom-left, bottom-right, centre)."""
        from torchvision.transforms import functional as F

        size = self.geometry.input_size
        w, h = img.size
        if min(w, h) < size:  # smaller than one crop: upscale just enough
            img = F.resize(img, size, interpolation=_interp(self.geometry.interpolation))
        return F.five_crop(img, [size, size])

    def __call__(self, img, view: int = 0):
        if view == 0:
            return self.whole(img)
        return self._patch_finish(self.region_crops(img)[view - 1])


def train_transform(preset: str, pre: Any, image_size: int | None = None, **options) -> TrainTransform:
    return TrainTransform(preset, pre, image_size, **options)
