"""Grad-CAM explanations for an ArtModel, built on pytorch-grad-cam: `Explainer` and `Explanation`.

The model is rebuilt as one differentiable module (`artlens.explain.network`); pytorch-grad-cam
hooks the backbone's target layer (the registry's `gradcam_layer`, or any named layers) and the
map is drawn over the picture (`artlens.explain.overlay`).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from artlens.explain.network import (
    ExplainError,
    build_explain_model,
    default_layer,
    load_art_model,
    resolve_layer,
    tokens_to_grid,
)
from artlens.explain.overlay import captioned_strip, overlay_image, place_cam, prepare_image

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


def method_class(method: str):
    """The pytorch-grad-cam class for a method name (`gradcam`, `gradcam++`, `eigencam`, `layercam`)."""
    import pytorch_grad_cam

    key = _ALIASES.get(method.lower(), method.lower())
    if key not in METHODS:
        raise ExplainError(f"unknown CAM method {method!r} (choose from {', '.join(METHODS)})")
    return getattr(pytorch_grad_cam, METHODS[key])


# --------------------------------------------------------------------------- explanations
@dataclass
class Explanation:
    """What a model saw in one image for one task.

    `cam` is the map of the first layer, `cams` one per layer (in order), each (H, W) float32 in
    [0, 1] at the size of `overlay`'s panels (the display image); `overlay` is one overlay, or a
    strip of captioned overlays when several layers were asked for.

    Probabilities come from the torch model the gradients flow through. For CLIP that is the fp32
    rebuild, while `artlens predict` runs the INT8 ONNX model: embeddings agree closely (the README
    gives the measured cosine), but a probe's standardised head can turn that into a few points of probability.
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
