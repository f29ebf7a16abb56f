"""The differentiable model Grad-CAM runs through: an ArtModel's backbone + one task's head, and its layers.

The ArtModel keeps only heads (and, for fine-tuned models, backbone weights); here it becomes one
`nn.Module` again: the registry's backbone (for CLIP probes the fp32 torch rebuild of the INT8
encoder, so gradients exist) followed by one task's head.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

if TYPE_CHECKING:
    from artlens.models.artmodel import ArtModel


class ExplainError(ValueError):
    """A request that cannot be explained (unknown task, class, layer or method), with the reason."""


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
