"""Train transform presets (torchvision), like torchvision's references/classification.

- `none`: the eval transform (resize the short side, centre crop, normalise).
- `flip`: eval geometry + random horizontal flip.
- `standard`: random resized crop, horizontal flip, small rotation; colour jitter is off by
  default (colour is evidence of style), switch it on with `color_jitter`.
- `patch`: `standard`, plus five full-resolution crops of each image (four corners and the
  centre, cut at the model's input size without downscaling), so the model also sees brushwork
  and texture at the scale of the original. Each image then yields six training samples.

Size, interpolation and mean/std come from the model's `Preprocessing` (fine-tuning at another
size: `pre.at_size(image_size)`); every preset ends in its normalisation, so training sees the
pixels that prediction will.
"""

from __future__ import annotations

from artlens.models.preprocessing import Preprocessing

PRESETS = ("none", "flip", "standard", "patch")


class TrainTransform:
    """`transform(img, view=0)`; `views` samples per image (6 for `patch`, else 1)."""

    def __init__(self, preset: str, pre: Preprocessing, *, rotation: float = 15.0, scale: tuple[float, float] = (0.6, 1.0),
                 color_jitter: float = 0.0, vflip: bool = False):
        from torchvision import transforms as T

        if preset not in PRESETS:
            raise ValueError(f"unknown augmentation preset {preset!r} (use one of {', '.join(PRESETS)})")
        self.preset = preset
        self.pre = pre
        interp = pre.torch_interpolation
        flips = [T.RandomHorizontalFlip()] + ([T.RandomVerticalFlip()] if vflip else [])
        finish = pre.tensor_transform()
        if preset == "none":
            self.whole = pre.eval_transform()
        elif preset == "flip":
            self.whole = T.Compose([pre.crop, *flips, finish])
        else:
            steps = [T.RandomResizedCrop(pre.input_size, scale=tuple(scale), interpolation=interp), *flips]
            if rotation:
                steps.append(T.RandomRotation(float(rotation), interpolation=interp))
            if color_jitter:
                c = float(color_jitter)
                steps.append(T.ColorJitter(brightness=c, contrast=c, saturation=c, hue=min(0.5, c / 4)))
            self.whole = T.Compose([*steps, finish])
        self.views = 6 if preset == "patch" else 1
        self._patch_finish = T.Compose([*flips, finish])

    def region_crops(self, img):
        """The five full-resolution crops (top-left, top-right, bottom-left, bottom-right, centre)."""
        from torchvision.transforms import functional as F

        size = self.pre.input_size
        w, h = img.size
        if min(w, h) < size:  # smaller than one crop: upscale just enough
            img = F.resize(img, size, interpolation=self.pre.torch_interpolation)
        return F.five_crop(img, [size, size])

    def __call__(self, img, view: int = 0):
        if view == 0:
            return self.whole(img)
        return self._patch_finish(self.region_crops(img)[view - 1])


def train_transform(preset: str, pre: Preprocessing, **options) -> TrainTransform:
    return TrainTransform(preset, pre, **options)
