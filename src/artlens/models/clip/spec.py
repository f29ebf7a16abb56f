"""What CLIP ViT-B/16's image tower is, as artlens uses it: its constants, its preprocessing, the
names of the ONNX encoder's inputs and outputs, and the feature vector built from them.

numpy only (no torch, no onnxruntime): everything else in `artlens.models.clip` builds on this.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from artlens.models.preprocessing import Preprocessing

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image

BACKBONE_NAME = "clip-vit-b16"
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CLIP_INPUT_SIZE = 224
# OpenAI's reference transform: short side to 224 (bicubic), centre crop 224, CLIP's mean/std.
CLIP_PREPROCESSING = Preprocessing(CLIP_INPUT_SIZE, CLIP_INPUT_SIZE, CLIP_MEAN, CLIP_STD, "bicubic")
CLIP_PATCH = 16
CLIP_GRID = CLIP_INPUT_SIZE // CLIP_PATCH  # 14 x 14 patches + 1 CLS token
CLIP_EMBED_DIM = 512
CLIP_LAYERS = 12
CLIP_HIDDEN = 768
# The backbone's feature vector is the image embedding plus, for these blocks (0-based), the mean
# over the 196 patch tokens of the residual stream after the block. Mid-layer statistics carry
# brushwork and texture that the final CLS embedding, trained to match captions, mostly drops
# (the README's benchmark section has the measured gain). They come from the same forward pass,
# so cost no speed.
CLIP_MID_LAYERS = (5, 7, 9)
CLIP_FEATURE_DIM = CLIP_EMBED_DIM + len(CLIP_MID_LAYERS) * CLIP_HIDDEN
# The last block's first norm: the CLS output reaches every patch token through that block's
# attention, so gradients there are spatial (the last block's norm2/MLP acts per token: CLS only).
# The mid-layer patch means (CLIP_MID_LAYERS) bypass it: their share of a logit is not in the map.
CLIP_GRADCAM_LAYER = f"vision_model.encoder.layers.{CLIP_LAYERS - 1}.layer_norm1"

ONNX_INPUT = "pixel_values"
ONNX_OUTPUT = "image_embeds"
ONNX_MID_OUTPUT = "patch_means"  # (N, 3 * 768): see CLIP_MID_LAYERS


def clip_preprocess(img: PIL.Image.Image) -> np.ndarray:
    """OpenAI CLIP's eval preprocessing (`CLIP_PREPROCESSING`): float32 (3, 224, 224)."""
    return CLIP_PREPROCESSING(img)


def clip_preprocess_batch(images) -> np.ndarray:
    """`clip_preprocess` over a list of images: float32 (N, 3, 224, 224)."""
    return CLIP_PREPROCESSING.batch(images)


def clip_features(image_embeds: np.ndarray, patch_means: np.ndarray) -> np.ndarray:
    """The CLIP backbone's feature vector (N, CLIP_FEATURE_DIM), unit norm, from the encoder's two
    outputs: the image embedding and each mid layer's patch mean (centred over its channels, which
    removes the residual stream's large constant offsets), each block L2-normalised, all four
    scaled by 1/2. The first 512 values are the normalised CLIP embedding / 2."""
    emb = np.asarray(image_embeds, np.float32)
    mids = np.asarray(patch_means, np.float32).reshape(len(emb), len(CLIP_MID_LAYERS), CLIP_HIDDEN)
    mids = mids - mids.mean(axis=2, keepdims=True)

    def unit(x):
        return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)

    blocks = [unit(emb)] + [unit(mids[:, j]) for j in range(mids.shape[1])]
    return (np.concatenate(blocks, axis=1) / np.sqrt(len(blocks))).astype(np.float32)

