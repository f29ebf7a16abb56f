"""Grad-CAM explanations for an ArtModel, built on pytorch-grad-cam.

The ArtModel keeps only heads (and, for fine-tuned models, backbone weights); here it becomes one
differentiable `nn.Module` again: the registry's backbone (for CLIP probes the fp32 torch rebuild
of the INT8 encoder, so gradients exist) followed by one task's head. pytorch-grad-cam then hooks
the backbone's target layer (the registry's `gradcam_layer`, or any named layers).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import torch
from torch import nn

from artlens.models.preprocessing import Preprocessing

if TYPE_CHECKING:
    from artlens.models.artmodel import ArtModel

# Method name (CLI and API) -> pytorch-grad-cam class name.
METHODS = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "eigencam": "EigenCAM",
    "layercam": "LayerCAM",
}
_ALIASES = {"gradcampp": "gradcam++", "gradcam_plusplus": "gradcam++", "gradcamplusplus": "gradcam++"}

# Overlays are drawn at most this large (long side); the CAM itself is computed at the model's input.
MAX_DISPLAY = 1024


class ExplainError(ValueError):
    """A request that cannot be explained (unknown task, class, layer or method), with the reason."""


def method_class(method: str):
    """The pytorch-grad-cam class for a method name (`gradcam`, `gradcam++`, `eigencam`, `layercam`)."""
    import pytorch_grad_cam

    key = _ALIASES.get(method.lower(), method.lower())
    if key not in METHODS:
        raise ExplainError(f"unknown CAM method {method!r} (choose from {', '.join(METHODS)})")
    return getattr(pytorch_grad_cam, METHODS[key])


# --------------------------------------------------------------------------- the differentiable model
class ArtNet(nn.Module):
    """Backbone + the heads of an ArtModel; `forward` gives the logits of `self.task`.

    The heads were trained on the encoders' embeddings, which are L2-normalised (probe models on
    the embedding store, fine-tuned ones through the same normalisation), so the features are
    normalised here too before the heads' standardisation.
    """

    def __init__(self, backbone: nn.Module, heads: nn.Module, task: str):
        super().__init__()
        self.backbone = backbone
        self.heads = heads  # MultiTaskHeads: holds the probe's feature standardisation
        self.task = task

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.backbone(x).flatten(1).float(), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        heads = self.heads
        if getattr(heads, "norm_mean", None) is not None:
            feats = (feats - heads.norm_mean) / heads.norm_std
        return heads.heads[self.task](feats)


def load_art_model(model: "str | Path | ArtModel") -> "ArtModel":
    from artlens.models.artmodel import ArtModel

    if isinstance(model, ArtModel):
        return model
    return ArtModel.load(model)


def build_backbone(art: "ArtModel"):
    """The registry backbone of `art` as a torch module, with the fine-tuned weights when it has them.

    For a probe model over CLIP, `create_backbone("clip-vit-b16")` is the fp32 rebuild of the offline
    INT8 encoder, so the gradient can flow from the head back to the patch tokens.
    """
    from artlens.models.backbones import create_backbone

    state = art.backbone_state()
    if art.mode == "finetune" and state:
        net = create_backbone(art.backbone_name, pretrained=False)
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
        missing, unexpected = net.load_state_dict(tensors, strict=False)
        # BatchNorm counters are bookkeeping, not weights; anything else missing is a broken model.
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ExplainError(
                f"fine-tuned backbone weights do not fit {art.backbone_name}: "
                f"missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
    else:
        # Seeded like the encoders (artlens.embed.encoders.TorchEncoder): a backbone without
        # pretrained weights (simple-cnn) starts from random ones, and the probe heads were
        # trained on the features of the seed-0 draw; any other draw explains another network.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = create_backbone(art.backbone_name, pretrained=True)
    return net


def build_explain_model(art: "ArtModel", task: str | None = None, backbone=None):
    """One `nn.Module` (eval mode) giving the logits of `task` for a normalised image batch.

    `backbone` overrides the registry (tests pass small stand-ins); its output must be
    `(N, art.feature_dim)`.
    """
    task = task or art.task_names[0]
    try:
        art.task(task)
    except KeyError as exc:  # names the tasks the model has
        raise ExplainError(exc.args[0]) from None
    if backbone is None:
        backbone = build_backbone(art)
    net = ArtNet(backbone, art.torch_heads(), task)
    net.eval()
    # Gradients are needed for the activations only, not the weights: frozen parameters (and an
    # input that requires grad, see Explainer.explain) keep memory and time down for CLIP's 86M.
    for p in net.parameters():
        p.requires_grad_(False)
    return net


# --------------------------------------------------------------------------- layers
_BRACKET = re.compile(r"\[(-?\d+)\]")


def resolve_layer(root, name: str):
    """The submodule at a dotted path (`blocks.6`, `layer4[-1]`, `encoder.layers.-1.layer_norm1`)."""
    path = _BRACKET.sub(r".\1", name.strip()).strip(".")
    module = root
    done: list[str] = []
    for part in path.split(".") if path else []:
        nxt = None
        if re.fullmatch(r"-?\d+", part):
            try:
                nxt = module[int(part)]
            except (TypeError, IndexError, KeyError):
                nxt = getattr(module, part, None)
        else:
            nxt = getattr(module, part, None)
        if nxt is None or not hasattr(nxt, "register_forward_hook"):
            names = [n for n, _ in root.named_modules() if n]
            close = difflib.get_close_matches(path, names, n=5, cutoff=0.5)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            at = ".".join(done) or "<model>"
            raise ExplainError(f"layer {name!r}: {at} has no submodule {part!r}{hint}")
        module = nxt
        done.append(part)
    return module


def default_layer(backbone_name: str) -> str:
    from artlens.models.backbones import get_spec

    return get_spec(backbone_name).gradcam_layer


def tokens_to_grid(tensor: torch.Tensor) -> torch.Tensor:
    """Reshape transform for pytorch-grad-cam that accepts CNN maps and ViT token sequences.

    (N, C, H, W) passes through. (N, T, C) with T = 1 + h*w (a class token first, as in CLIP's
    1 + 14x14) or T = h*w becomes (N, C, h, w). A sequence-first (T, N, C) layout is recognised
    by its token count.
    """
    if tensor.ndim == 4:
        return tensor
    if tensor.ndim != 3:
        raise ExplainError(f"cannot turn a layer output of shape {tuple(tensor.shape)} into a 2-D map")

    def grid(t: int) -> int | None:
        for extra in (1, 0):
            side = math.isqrt(t - extra)
            if side * side == t - extra and side > 1:
                return side
        return None

    if grid(tensor.shape[1]) is None and grid(tensor.shape[0]) is not None:
        tensor = tensor.transpose(0, 1)  # (T, N, C) -> (N, T, C)
    n, t, c = tensor.shape
    side = grid(t)
    if side is None:
        raise ExplainError(f"layer output has {t} tokens, not a square grid (with or without a class token)")
    tokens = tensor[:, t - side * side :, :]  # drop the class token
    return tokens.reshape(n, side, side, c).permute(0, 3, 1, 2)


# --------------------------------------------------------------------------- preprocessing
@dataclass
class Prepared:
    """One image ready for the model, and where the model's view lies in the display image."""

    tensor: torch.Tensor  # (1, 3, S, S), normalised
    display: Image.Image  # the image as shown in overlays (long side <= MAX_DISPLAY)
    box: tuple[int, int, int, int]  # the model's centre crop, in display pixels (l, t, r, b)


def prepare_image(img: Image.Image, pre: "Preprocessing | Mapping[str, Any]") -> Prepared:
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
    return Prepared(tensor=tensor, display=display, box=pre.crop_box(w, h, into=display.size))


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


# --------------------------------------------------------------------------- explanations
@dataclass
class Explanation:
    """What a model saw in one image for one task.

    `cam` is the map of the first layer, `cams` one per layer (in order), each (H, W) float32 in
    [0, 1] at the size of `overlay`'s panels (the display image); `overlay` is one overlay, or a
    strip of captioned overlays when several layers were asked for.

    Probabilities come from the torch model the gradients flow through. For CLIP that is the fp32
    rebuild, while `artlens predict` runs the INT8 ONNX model: embeddings agree to cosine ~0.995,
    but a probe's standardised head can turn that into a few points of probability.
    """

    task: str
    label: str
    class_index: int
    prob: float
    predicted: str
    predicted_prob: float
    method: str
    layers: list[str]
    cams: list[np.ndarray]
    overlay: Image.Image
    image: Image.Image
    box: tuple[int, int, int, int]
    top: list[dict[str, Any]] = field(default_factory=list)
    input_cams: list[np.ndarray] = field(default_factory=list)  # at the model's input size

    @property
    def cam(self) -> np.ndarray:
        return self.cams[0]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "label": self.label,
            "class_index": self.class_index,
            "prob": round(self.prob, 6),
            "predicted": self.predicted,
            "predicted_prob": round(self.predicted_prob, 6),
            "method": self.method,
            "layers": self.layers,
            "crop_box": list(self.box),
            "top": self.top,
        }

    def save(self, out_dir: str | Path, stem: str) -> dict[str, Path]:
        """`<stem>.<task>.<method>.png` (overlay), `.npy` (raw map, (H,W) or (L,H,W)) and `.json`."""
        import io
        import json

        from artlens.paths import atomic_write_bytes, atomic_write_text

        out_dir = Path(out_dir)
        base = f"{stem}.{self.task}.{self.method.replace('+', 'p')}"
        paths = {"png": out_dir / f"{base}.png", "npy": out_dir / f"{base}.npy", "json": out_dir / f"{base}.json"}
        buf = io.BytesIO()
        self.overlay.save(buf, format="PNG")
        atomic_write_bytes(paths["png"], buf.getvalue())
        buf = io.BytesIO()
        np.save(buf, self.cams[0] if len(self.cams) == 1 else np.stack(self.cams))
        atomic_write_bytes(paths["npy"], buf.getvalue())
        meta = self.to_dict() | {"overlay": paths["png"].name, "map": paths["npy"].name}
        atomic_write_text(paths["json"], json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        return paths


class Explainer:
    """Holds the differentiable model of an ArtModel; explains images one at a time.

    >>> ex = Explainer("models/clip-probe")          # doctest: +SKIP
    >>> e = ex.explain(load_image("monet.jpg"), task="style", method="gradcam++")
    >>> e.label, e.prob, e.cam.shape
    """

    def __init__(self, model: "str | Path | ArtModel", task: str | None = None, backbone=None, device: str = "cpu"):
        self.model = load_art_model(model)
        self.device = device  # a resolved device (artlens.models.device.resolve_device): cpu, cuda[:N]
        self.net = build_explain_model(self.model, task, backbone=backbone).to(device)
        self.default_task = self.net.task
        self.pre = self.model.preprocessing

    def _spec_layer(self) -> str:
        layer = getattr(self, "_default_layer", None)
        if layer is None:
            layer = self._default_layer = default_layer(self.model.backbone_name)
        return layer

    def layer(self, name: str):
        """A backbone layer by dotted path (relative to the backbone, or starting with `backbone.`)."""
        root = self.net.backbone
        if name.startswith("backbone."):
            name = name[len("backbone."):]
        return resolve_layer(root, name)

    def class_index(self, task: str, target_class: str | int | None, probs: np.ndarray) -> int:
        labels = self.model.task(task).labels
        if target_class is None:
            return int(np.argmax(probs))
        if isinstance(target_class, (int, np.integer)) or (isinstance(target_class, str) and target_class.isdigit() and target_class not in labels):
            idx = int(target_class)
            if not 0 <= idx < len(labels):
                raise ExplainError(f"class index {idx} is out of range for task {task!r} ({len(labels)} labels)")
            return idx
        if target_class in labels:
            return labels.index(target_class)
        lower = {lab.lower(): i for i, lab in enumerate(labels)}
        if str(target_class).lower() in lower:
            return lower[str(target_class).lower()]
        close = difflib.get_close_matches(str(target_class), labels, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else f" ({', '.join(labels[:12])}{', ...' if len(labels) > 12 else ''})"
        raise ExplainError(f"task {task!r} has no label {target_class!r}{hint}")

    def explain(
        self,
        image: Image.Image,
        task: str | None = None,
        target_class: str | int | None = None,
        method: str = "gradcam",
        layers: Sequence[str] | str | None = None,
        top_k: int = 3,
    ) -> Explanation:
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        task = task or self.default_task
        try:
            cfg = self.model.task(task)
        except KeyError as exc:
            raise ExplainError(exc.args[0]) from None
        self.net.task = task
        cam_cls = method_class(method)
        method = _ALIASES.get(method.lower(), method.lower())
        if isinstance(layers, str):
            layers = [s for s in layers.split(",") if s.strip()]
        layer_names = [s.strip() for s in layers] if layers else [self._spec_layer()]
        modules = [self.layer(n) for n in layer_names]

        prep = prepare_image(image, self.pre)
        with torch.no_grad():
            logits = self.net(prep.tensor.to(self.device))[0].float().cpu()
        probs = torch.softmax(logits / cfg.temperature, dim=-1).numpy()
        idx = self.class_index(task, target_class, probs)
        pred = int(np.argmax(probs))
        order = np.argsort(-probs)[:top_k]

        # The weights are frozen, so the input must ask for a gradient for one to reach the layer.
        x = prep.tensor.to(self.device).clone().requires_grad_(True)
        input_cams, cams, panels = [], [], []
        for name, module in zip(layer_names, modules):
            # One CAM object per layer: pytorch-grad-cam would average several layers into one map.
            with cam_cls(model=self.net, target_layers=[module], reshape_transform=tokens_to_grid) as cam:
                grayscale = cam(input_tensor=x, targets=[ClassifierOutputTarget(idx)])[0]
            grayscale = np.nan_to_num(grayscale.astype(np.float32), nan=0.0)
            input_cams.append(grayscale)
            full = place_cam(grayscale, prep.box, prep.display.size)
            cams.append(full)
            panels.append(overlay_image(prep.display, full, prep.box))
        if len(panels) == 1:
            overlay = panels[0]
        else:
            overlay = captioned_strip([prep.display, *panels], ["input", *layer_names])
        return Explanation(
            task=task,
            label=cfg.labels[idx],
            class_index=idx,
            prob=float(probs[idx]),
            predicted=cfg.labels[pred],
            predicted_prob=float(probs[pred]),
            method=method,
            layers=layer_names,
            cams=cams,
            overlay=overlay,
            image=prep.display,
            box=prep.box,
            top=[{"label": cfg.labels[i], "prob": round(float(probs[i]), 6)} for i in order],
            input_cams=input_cams,
        )


def explain_image(
    model: "str | Path | ArtModel",
    image: "Image.Image | str | Path",
    task: str | None = None,
    target_class: str | int | None = None,
    method: str = "gradcam",
    layers: Sequence[str] | str | None = None,
) -> Explanation:
    """Explain one image with one model (builds the model each call; reuse an `Explainer` for many)."""
    if not isinstance(image, Image.Image):
        from artlens.data.images import load_image

        image = load_image(image)
    return Explainer(model, task=task).explain(image, task=task, target_class=target_class, method=method, layers=layers)
