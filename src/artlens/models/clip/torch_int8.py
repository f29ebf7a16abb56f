"""The batch-independent INT8 encoder's arithmetic in torch, for GPUs.

onnxruntime's INT8 kernels are CPU kernels, and the fp32 rebuild (`torch_model`) is not what the
heads were trained on: its features agree with the INT8 encoder's to cosine 0.975-0.984 only.
`emulate_int8(model)` swaps each linear layer of a torch CLIP tower (the transformers model or
the registry's `ClipImageEncoder` around it) for `PerTokenInt8Linear`, which does what the ONNX
model built by `build` does: quantize each token row of the input to INT8 with its own symmetric
scale (max |x| / 127, zero point 128), multiply with the shipped INT8 weights exactly (int32
accumulation through `torch._int_mm`, or fp32 where that is not available), and rescale. Layer
norms, attention and the patch embedding stay in fp32, as in the ONNX model; so the features match
the CPU encoder's to float rounding, on any device.

Importing this module is cheap: torch loads inside the functions.
"""

from __future__ import annotations

import functools
import os

import numpy as np

from artlens.models.clip.cache import require_onnx, weights_source
from artlens.models.clip.torch_model import onnx_int8_linears

__all__ = ["emulate_int8", "per_token_linear_class"]


@functools.cache
def per_token_linear_class():
    """`PerTokenInt8Linear`, defined on first use so that importing this module does not import torch."""
    import torch
    from torch import nn

    class PerTokenInt8Linear(nn.Module):
        """y = (Q(x) @ Wq) * w_scale * s_x + bias, with Q(x) = round(x / s_x) per row, s_x = max|x| / 127.

        `weight_q`: int8 [in, out] (the ONNX layout), `weight_scale`: per output column (or one). The
        same steps, in the same order, as the ONNX model's ReduceMax/ReduceMin -> QuantizeLinear
        -> MatMulIntegerToFloat -> Add."""

        def __init__(self, weight_q: np.ndarray, weight_scale: np.ndarray, bias):
            super().__init__()
            q = np.asarray(weight_q)
            if q.dtype != np.int8 or q.ndim != 2:
                raise ValueError(f"expected an int8 [in, out] weight, got {q.dtype} {q.shape}")
            self.in_features, self.out_features = q.shape
            self.register_buffer("weight_q", torch.from_numpy(np.array(q, order="C")))  # a writable copy
            self.register_buffer("weight_q_float", torch.from_numpy(q.astype(np.float32)))
            w_scale = np.asarray(weight_scale, np.float32).reshape(-1)
            if w_scale.size not in (1, self.out_features):
                raise ValueError(f"expected 1 or {self.out_features} weight scales, got {w_scale.size}")
            self.register_buffer("weight_scale", torch.from_numpy(w_scale.copy()))
            self.register_buffer("inv127", torch.tensor(1.0 / 127.0, dtype=torch.float32))
            self.bias = None if bias is None else nn.Parameter(bias.detach().clone().float(), requires_grad=False)
            self.int_mm = hasattr(torch, "_int_mm")

        def quantize(self, x):
            """(int-valued q in [-128, 127], per-row scale s): x ~ q * s."""
            amax = torch.maximum(x.amax(dim=-1, keepdim=True), -x.amin(dim=-1, keepdim=True)).clamp_min(1e-6)
            scale = amax * self.inv127
            q = torch.clamp(torch.round(x / scale) + 128.0, 0.0, 255.0) - 128.0
            return q, scale

        def matmul(self, q):
            """q (M, in) int-valued float -> q @ Wq as float32, exact (int32 accumulation) where possible."""
            if self.int_mm and q.shape[0] > 16 and self.in_features % 8 == 0 and self.out_features % 8 == 0:
                try:
                    return torch._int_mm(q.to(torch.int8).contiguous(), self.weight_q).to(torch.float32)
                except (RuntimeError, NotImplementedError):  # a build or device without the int8 kernel
                    self.int_mm = False
            return q @ self.weight_q_float

        def forward(self, x):
            x = x.float()
            shape = x.shape
            q, scale = self.quantize(x.reshape(-1, shape[-1]))
            y = (self.matmul(q) * self.weight_scale) * scale
            if self.bias is not None:
                y = y + self.bias
            return y.reshape(*shape[:-1], self.out_features)

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, per-token INT8"

    return PerTokenInt8Linear


def emulate_int8(model, weights: str | os.PathLike | None = None):
    """Replace, in place, every linear layer of `model` (a transformers CLIP vision model or the
    registry's CLIP backbone) that the INT8 ONNX model quantizes by a `PerTokenInt8Linear` over
    the shipped INT8 weights. Returns `model`. Raises ValueError when a quantized layer has no
    counterpart in `model` or its shape differs (other weights than the shipped ones)."""
    import torch

    linears = onnx_int8_linears(require_onnx(weights_source(weights)))
    cls = per_token_linear_class()
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    replaced = 0
    for name, (q, scale, zero) in linears.items():
        old = modules.get(name)
        if not isinstance(old, torch.nn.Linear):
            raise ValueError(f"CLIP INT8 emulation: the model has no linear layer {name}")
        if tuple(old.weight.shape) != (q.shape[1], q.shape[0]):
            raise ValueError(f"CLIP INT8 emulation: {name} is {tuple(old.weight.shape)}, the INT8 weight {q.shape[::-1]}")
        if np.any(np.asarray(zero) != 0):
            raise ValueError(f"CLIP INT8 emulation: {name} has non-zero weight zero points")
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, cls(q, scale, old.bias).to(device))
        replaced += 1
    if replaced == 0:
        raise ValueError("CLIP INT8 emulation: no quantized layer found")
    return model
