"""Where the model looked, drawn on the picture: the model's view of an image, the CAM placed on it, overlays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from artlens.models.preprocessing import Preprocessing

# Overlays are drawn at most this large (long side); the CAM itself is computed at the model's input.
MAX_DISPLAY = 1024


# --------------------------------------------------------------------------- preprocessing
@dataclass
class PreparedImage:
    """One image ready for the model, and where the model's view lies in the display image."""

    tensor: torch.Tensor  # (1, 3, S, S), normalised
    display: Image.Image  # the image as shown in overlays (long side <= MAX_DISPLAY)
    box: tuple[int, int, int, int]  # the model's centre crop, in display pixels (l, t, r, b)


def prepare_image(img: Image.Image, pre: "Preprocessing | Mapping[str, Any]") -> PreparedImage:
    """The model's eval preprocessing (`Preprocessing`, or a config.json block), so the explained
    pixels are exactly the predicted ones.

    Also returns the crop box mapped onto the display image, so the map is drawn where the model
    looked instead of being stretched over parts it never saw.
    """
    pre = Preprocessing.from_config(pre)
    img = img.convert("RGB")
    tensor = torch.from_numpy(pre(img)).unsqueeze(0)
    display = img
    w, h = img.size
    if max(w, h) > MAX_DISPLAY:
        f = MAX_DISPLAY / max(w, h)
        display = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
    return PreparedImage(tensor=tensor, display=display, box=pre.crop_box(w, h, into=display.size))


def place_cam(cam: np.ndarray, box: tuple[int, int, int, int], display_size: tuple[int, int]) -> np.ndarray:
    """Stretch a square model-input CAM onto its crop box of the display image; 0 outside it."""
    import cv2

    dw, dh = display_size
    l, t, r, b = box
    out = np.zeros((dh, dw), dtype=np.float32)
    bw, bh = max(1, r - l), max(1, b - t)
    resized = cv2.resize(cam.astype(np.float32), (bw, bh), interpolation=cv2.INTER_LINEAR)
    out[t : t + bh, l : l + bw] = resized[: dh - t, : dw - l]
    return out


# --------------------------------------------------------------------------- drawing
def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def overlay_image(display: Image.Image, cam: np.ndarray, box=None, image_weight: float = 0.5) -> Image.Image:
    """The heat map blended over the picture (JET colours); what the model did not see is dimmed."""
    from pytorch_grad_cam.utils.image import show_cam_on_image

    rgb = np.asarray(display.convert("RGB"), dtype=np.float32) / 255.0
    out = show_cam_on_image(rgb, np.clip(cam, 0.0, 1.0), use_rgb=True, image_weight=image_weight)
    if box is not None:
        l, t, r, b = box
        outside = np.ones(cam.shape, dtype=bool)
        outside[t:b, l:r] = False
        out[outside] = (np.asarray(display.convert("RGB"))[outside] * 0.35).astype(np.uint8)
    return Image.fromarray(out)


def captioned_strip(images: Sequence[Image.Image], captions: Sequence[str], pad: int = 6) -> Image.Image:
    """Images side by side (same height), each with a caption line under it."""
    height = max(im.height for im in images)
    scaled = [im if im.height == height else im.resize((max(1, round(im.width * height / im.height)), height)) for im in images]
    font_size = max(12, min(22, height // 20))
    font = _font(font_size)
    cap_h = font_size + 2 * pad
    width = sum(im.width for im in scaled) + pad * (len(scaled) + 1)
    sheet = Image.new("RGB", (width, height + cap_h + pad), "white")
    draw = ImageDraw.Draw(sheet)
    x = pad
    for im, cap in zip(scaled, captions):
        sheet.paste(im, (x, pad))
        text = cap
        while draw.textlength(text, font=font) > im.width and len(text) > 4:
            # layer paths differ at their end (`...layers.10.layer_norm1`): keep the end
            text = "..." + text.lstrip(".")[2:]
        draw.text((x, height + pad + pad // 2), text, fill="black", font=font)
        x += im.width + pad
    return sheet
