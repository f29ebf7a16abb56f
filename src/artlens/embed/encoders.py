"""Encoders: one image in, one L2-normalised float32 vector out.

`get_encoder(name, device=...)` returns, for CLIP on the CPU, an onnxruntime encoder over the
batch-independent INT8 model (fast, no torch import); for CLIP on a GPU, the torch model doing
the same INT8 arithmetic (`artlens.models.clip.torch_int8`); and a torch encoder for every other
backbone and for fine-tuned weights. `device` is `cpu`, `cuda[:N]` or `auto`
(`artlens.models.device`). Each encoder has a `backbone_id` that changes whenever the weights,
the runtime or the preprocessing change, so the embedding store never mixes vectors from
different models, and a `batch_size` suited to its device.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from artlens.metrics import l2_normalize
from artlens.models import clip as clip_mod
from artlens.models.device import default_batch_size, resolve_device
from artlens.models.preprocessing import Preprocessing

CLIP_NAME = "clip-vit-b16"


def _digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def state_digest(state: Mapping[str, Any]) -> str:
    """A content hash of a state dict (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for key in sorted(state):
        arr = np.ascontiguousarray(np.asarray(state[key]))
        h.update(f"{key}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def make_backbone_id(name: str, runtime: str, fingerprint: Mapping[str, Any]) -> str:
    """`<name>-<runtime>-<hash>`: readable, and different whenever anything in `fingerprint` is."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    return f"{safe}-{runtime}-{_digest({'name': name, 'runtime': runtime, **fingerprint})}"


class Encoder:
    """Base class. Subclasses set `backbone_id`, `dim`, `preprocess` and implement `embed_batch`.

    `preprocess` must be a plain callable (PIL image -> (3,H,W) float32 array) that does not hold
    the model: worker processes call it to decode and preprocess in parallel with inference.
    """

    backbone_id: str
    dim: int
    name: str
    preprocess: Callable[[Any], np.ndarray]
    device: str = "cpu"
    batch_size: int = 32  # images per `embed_batch` call when the caller does not say

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self.embed_batch(np.stack([self.preprocess(img) for img in images]))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backbone_id!r}, dim={self.dim})"


# --------------------------------------------------------------------------- onnxruntime (CLIP)
class OnnxEncoder(Encoder):
    """An onnxruntime session whose first output is the embedding."""

    def __init__(self, name: str, session, preprocess: Callable, backbone_id: str, output: str | None = None, runner: Callable | None = None,
                 dim: int | None = None):
        self.name = name
        self.session = session
        self.runner = runner  # optional: runs a batch instead of `session` (e.g. ClipOnnxRunner.features); `dim` its width
        self.preprocess = preprocess
        self.backbone_id = backbone_id
        self.input_name = session.get_inputs()[0].name
        outputs = [o.name for o in session.get_outputs()]
        self.output_name = output if output in outputs else outputs[0]
        if dim is None:
            dim = session.get_outputs()[outputs.index(self.output_name)].shape[-1]
        self.dim = int(dim) if isinstance(dim, int) else int(self.embed_batch(np.zeros((1, 3, 224, 224), np.float32)).shape[1])

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.runner is not None:
            return l2_normalize(self.runner(batch))
        (out,) = self.session.run([self.output_name], {self.input_name: batch})
        return l2_normalize(out)


def _clip_onnx_encoder() -> OnnxEncoder:
    """CLIP through onnxruntime: the batch-independent INT8 model built by artlens.models.clip."""
    from artlens.models.backbones import get_spec

    # One single-threaded run per core, on small slices of the batch, through one shared session
    # (faster than one 2-thread session on 2 cores: see ClipOnnxRunner and benchmarks/clip_variants.py).
    runner = clip_mod.ClipOnnxRunner()
    spec = get_spec(CLIP_NAME)
    pre = Preprocessing.from_spec(spec)
    fingerprint = {
        # The cached model's file name hashes the weights' source id and the build recipe.
        "model": clip_mod.clip_onnx_path().name,
        # The file does not hold the normalisation done after it (`clip_features`): name it here.
        "features": f"embed+patch-means{list(clip_mod.CLIP_MID_LAYERS)}",
        "weights_id": spec.weights_id,
        "preprocess": pre.fingerprint(),
    }
    backbone_id = make_backbone_id(CLIP_NAME, "onnx", fingerprint)
    return OnnxEncoder(CLIP_NAME, runner.sessions[0], pre, backbone_id, clip_mod.ONNX_OUTPUT,
                       runner=runner.features, dim=clip_mod.CLIP_FEATURE_DIM)


# --------------------------------------------------------------------------- torch
class TorchEncoder(Encoder):
    """A torch backbone from the registry (eval mode, no grad) with its spec's preprocessing.

    `int8=True` (CLIP with its shipped weights): the linear layers do the INT8 encoder's per-token
    arithmetic (`artlens.models.clip.torch_int8`), so features agree with the onnxruntime
    encoder's (cosine >= 0.99) on any device; the fp32 rebuild agrees only to 0.975-0.984."""

    def __init__(self, name: str, *, backbone_state: Mapping[str, Any] | None = None, device: str = "cpu", pretrained: bool = True,
                 preprocessing: Preprocessing | Mapping[str, Any] | None = None, int8: bool = False):
        import torch

        from artlens.models.backbones import create_backbone, get_spec

        self.name = name
        self.spec = get_spec(name)
        self.device = resolve_device(device)
        self.batch_size = default_batch_size(self.device, getattr(self.spec, "kind", "cnn"))
        # Backbones without pretrained weights (simple-cnn) start from random weights: seeded, so
        # that every process gets the same ones and the store never mixes two random draws.
        random_init = not backbone_state and (not pretrained or getattr(self.spec, "weights_id", None) == "scratch")

        def build(with_weights: bool):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                return create_backbone(name, pretrained=with_weights)

        model = build(pretrained and not backbone_state)
        if backbone_state:
            # A fine-tuned state replaces every tensor it names; if it names only some (frozen
            # layers left out), the rest come from the pretrained weights.
            expected = set(model.state_dict())
            unknown = sorted(set(backbone_state) - expected)
            if unknown:
                raise ValueError(f"backbone state does not fit {name}: unknown tensors {', '.join(unknown[:5])}")
            if any(k not in backbone_state and not k.endswith("num_batches_tracked") for k in expected):
                model = build(True)
            tensors = {k: torch.from_numpy(np.ascontiguousarray(np.asarray(v))) for k, v in backbone_state.items()}
            model.load_state_dict(tensors, strict=False)
        if int8:
            if backbone_state or not pretrained:
                raise ValueError("int8 needs the shipped CLIP weights (no fine-tuned state, pretrained=True)")
            from artlens.models.clip.torch_int8 import emulate_int8

            emulate_int8(model)
        if self.device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True  # fixed input sizes: let cuDNN pick its fastest kernels
        self.model = model.eval().to(self.device)
        # A fine-tune may have trained at its own image size: its config's preprocessing wins.
        self.preprocess = Preprocessing.from_config(preprocessing, name) if preprocessing else Preprocessing.from_spec(self.spec)
        self.dim = int(self.spec.feature_dim)
        fingerprint = {
            "weights_id": f"random-init-seed0-torch{torch.__version__}" if random_init else getattr(self.spec, "weights_id", None),
            "state": state_digest(backbone_state)[:16] if backbone_state else None,
            "preprocess": self.preprocess.fingerprint(),
        }
        if int8:  # not bit-identical to the onnxruntime encoder (float rounding moves some INT8 steps)
            fingerprint["features"] = "int8-pertoken-emulated"
        self.backbone_id = make_backbone_id(name, "torch-int8" if int8 else "torch", fingerprint)

    def embed_batch(self, batch: np.ndarray) -> np.ndarray:
        import torch

        if len(batch) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)).to(self.device, non_blocking=True)
        with torch.inference_mode():
            feats = self.model(x)
        feats = feats.float().flatten(1).cpu().numpy()
        return l2_normalize(feats)


# --------------------------------------------------------------------------- factory
_CACHE: dict[tuple[str, str], Encoder] = {}


def get_encoder(backbone_name: str, *, backbone_state: Mapping[str, Any] | None = None, device: str = "cpu",
                preprocessing: Preprocessing | Mapping[str, Any] | None = None) -> Encoder:
    """The encoder for a registry backbone on `device` (`cpu`, `cuda[:N]` or `auto`; `DeviceError`
    when it cannot be used).

    CLIP with its pretrained weights runs through onnxruntime on the CPU and as the INT8-emulating
    torch model on a GPU; a fine-tuned backbone (`backbone_state`, the `backbone.*` tensors of an
    ArtModel with the prefix removed) and every other backbone use the torch model. Pretrained
    encoders are built once per process and device and shared. `preprocessing` (a model's
    `Preprocessing` or its config.json block) applies to fine-tuned backbones only: frozen
    encoders keep their registry preprocessing, which the embedding store is keyed on.
    """
    if isinstance(backbone_name, Encoder):
        return backbone_name
    device = resolve_device(device)
    if backbone_state:
        return TorchEncoder(backbone_name, backbone_state=backbone_state, device=device, preprocessing=preprocessing)
    key = (backbone_name, device)
    enc = _CACHE.get(key)
    if enc is None:
        if backbone_name == CLIP_NAME and device == "cpu":
            enc = _clip_onnx_encoder()
        else:
            enc = TorchEncoder(backbone_name, device=device, int8=backbone_name == CLIP_NAME)
        _CACHE[key] = enc
    return enc


def model_encoder(model, *, device: str = "cpu") -> Encoder:
    """The encoder an ArtModel predicts with on `device`: its fine-tuned backbone state and its own
    preprocessing when it has one, else the shared pretrained encoder."""
    state = model.backbone_state() or None
    pre = model.preprocessing if state else None
    return get_encoder(model.backbone_name, backbone_state=state, device=device, preprocessing=pre)
