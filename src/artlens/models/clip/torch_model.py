"""CLIP's image tower in torch: the fp32 `transformers.CLIPVisionModelWithProjection` rebuilt from
the INT8 weights (dequantized: W = ((q - zero_point) * scale).T), for gradients, Grad-CAM and
fine-tuning. Cached as safetensors + config.json under `cache_dir()/models/`.

Importing this module is cheap: torch and transformers load inside the functions.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from artlens.models.clip.cache import build_lock, cache_key, models_dir, weights_source
from artlens.models.clip.spec import BACKBONE_NAME, CLIP_EMBED_DIM, CLIP_GRID, CLIP_INPUT_SIZE, CLIP_LAYERS, CLIP_PATCH
from artlens.models.weights import WeightsSource, load_state_dict_file
from artlens.paths import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import CLIPVisionModelWithProjection

# Bump when the rebuild below changes: the cache folder carries it in its name.
TORCH_RECIPE = "fp32-v1"


def clip_vision_config():
    """transformers' config of OpenAI CLIP ViT-B/16's vision tower (built in code: no hub)."""
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=768,
        intermediate_size=3072,
        projection_dim=CLIP_EMBED_DIM,
        num_hidden_layers=CLIP_LAYERS,
        num_attention_heads=12,
        num_channels=3,
        image_size=CLIP_INPUT_SIZE,
        patch_size=CLIP_PATCH,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
    )


def onnx_int8_linears(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The INT8 linear layers of the shipped ONNX model: transformers module name (e.g.
    `vision_model.encoder.layers.0.self_attn.q_proj`) -> (q int8 [in, out], scale, zero_point).

    Each is a MatMulInteger node named like `/vision_model/encoder/layers.0/self_attn/q_proj/MatMul_quant`
    whose weight is `<base>_quantized` with `<base>_scale` and `<base>_zero_point`."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    out = {}
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        base = node.input[1].removesuffix("_quantized")
        module = node.name.removesuffix("/MatMul_quant").strip("/").replace("/", ".")
        out[module] = tuple(numpy_helper.to_array(inits[f"{base}{suffix}"]) for suffix in ("_quantized", "_scale", "_zero_point"))
    return out


def _dequantize_onnx(path: Path) -> dict[str, np.ndarray]:
    """fp32 weights of `CLIPVisionModelWithProjection` from the INT8 ONNX model: fp32 initializers
    are named like the transformers parameters; each linear layer (`onnx_int8_linears`) becomes
    W = ((q - zero_point) * scale).T."""
    import onnx
    from onnx import numpy_helper

    state: dict[str, np.ndarray] = {}
    for init in onnx.load(str(path)).graph.initializer:
        if init.name.startswith(("vision_model.", "visual_projection")):
            state[init.name] = numpy_helper.to_array(init).astype(np.float32)
    for module, (q, scale, zero) in onnx_int8_linears(path).items():
        w = (q.astype(np.float32) - zero.astype(np.float32)) * scale.astype(np.float32)
        state[f"{module}.weight"] = np.ascontiguousarray(w.T)
    return state


def clip_state_dict(weights: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict for `CLIPVisionModelWithProjection`: dequantized from the INT8 ONNX, or read
    from a safetensors file (e.g. openai/clip-vit-base-patch16's model.safetensors: the text tower's
    tensors are dropped)."""
    import torch

    path = weights_source(weights).fetch()
    if path.suffix == ".onnx":
        return {k: torch.from_numpy(v) for k, v in _dequantize_onnx(path).items()}
    state = load_state_dict_file(path)
    return {
        k: v.float() for k, v in state.items() if k.startswith(("vision_model.", "visual_projection"))
    }


def _torch_cache(source: WeightsSource) -> Path:
    return models_dir() / f"{BACKBONE_NAME}-{cache_key(source, TORCH_RECIPE)}-fp32"


def _build_torch_cache(weights, dst: Path) -> None:
    from safetensors.torch import save_file

    state = clip_state_dict(weights)
    state = {k: v.contiguous() for k, v in state.items() if not k.endswith("position_ids")}
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "recipe": TORCH_RECIPE})
        config = clip_vision_config().to_dict()
        config["architectures"] = ["CLIPVisionModelWithProjection"]
        atomic_write_text(tmp / "config.json", json.dumps(config, indent=2, sort_keys=True))
        try:
            os.replace(tmp, dst)  # a directory rename is atomic; fails if another process won the race
        except OSError:
            if not (dst / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def clip_torch_model(weights: str | os.PathLike | None = None) -> CLIPVisionModelWithProjection:
    """The fp32 `transformers.CLIPVisionModelWithProjection` (eval mode, float32, CPU), rebuilt from the
    INT8 weights once and cached under `cache_dir()/models/` as safetensors + config.json.

    `model(pixel_values=x).image_embeds` is the 512-d projected embedding (not normalised)."""
    from transformers import CLIPVisionModelWithProjection

    source = weights_source(weights)
    cached = _torch_cache(source)
    if not (cached / "model.safetensors").is_file():
        with build_lock:
            if not (cached / "model.safetensors").is_file():
                _build_torch_cache(weights, cached)
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a local load: no "Loading weights" bar on every call
    try:
        model = CLIPVisionModelWithProjection.from_pretrained(str(cached), local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.float().eval()



def clip_features_torch(image_embeds, patch_means):
    """`clip_features` in torch (differentiable: the fp32 backbone for Grad-CAM and fine-tuning):
    `image_embeds` (N, 512) and a list of per-layer patch means (N, hidden) -> (N, 512 + len * hidden)."""
    import torch

    mids = [m - m.mean(dim=1, keepdim=True) for m in patch_means]
    blocks = [torch.nn.functional.normalize(b, dim=1) for b in (image_embeds, *mids)]
    return torch.cat(blocks, dim=1) / len(blocks) ** 0.5



def vit_reshape_transform(tensor, height: int = CLIP_GRID, width: int = CLIP_GRID):
    """pytorch-grad-cam `reshape_transform` for CLIP ViT-B/16: drop the CLS token and turn the
    (N, 1 + 14*14, C) token activations into a (N, C, 14, 14) map."""
    if isinstance(tensor, tuple):  # some hooks see a layer's tuple output
        tensor = tensor[0]
    n, tokens, channels = tensor.shape
    if tokens != height * width + 1:
        raise ValueError(f"expected {height * width + 1} tokens (CLS + {height}x{width}), got {tokens}")
    return tensor[:, 1:, :].reshape(n, height, width, channels).permute(0, 3, 1, 2)
