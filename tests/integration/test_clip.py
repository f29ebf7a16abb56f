"""CLIP ViT-B/16 with the real weights: the ONNX form is batch-independent and agrees with the fp32
torch rebuild; both are built once into the (per test session) cache dir."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from artlens.models import clip as C
from artlens.models.backbones import create_backbone, get_spec
from artlens.models.weights import MissingWeightsError, resolve_weights
from artlens.paths import cache_dir

pytestmark = pytest.mark.integration

# fp32 rebuild, L2-normalised image_embeds[:6] of scikit-learn's sample images (measured).
GOLDEN = {
    "china.jpg": [-0.0056, -0.1101, -0.0232, -0.0163, -0.0356, -0.0050],
    "flower.jpg": [-0.0207, -0.1258, 0.0112, -0.0097, -0.0035, -0.0027],
}


def _norm(a):
    return a / np.linalg.norm(a, axis=1, keepdims=True)


def _cos(a, b):
    return (_norm(a) * _norm(b)).sum(1)


@pytest.fixture(scope="module", autouse=True)
def _weights():
    try:
        resolve_weights("clip-vit-b16")
    except MissingWeightsError as exc:
        pytest.skip(str(exc))
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def session():
    return C.clip_onnx_session(threads=2)


@pytest.fixture(scope="module")
def torch_model():
    return C.clip_torch_model()


@pytest.fixture(scope="module")
def pixels(shared_datasets_module):
    """6 images to check, and 26 others (paintings, AI images, a flat and a noise image) as batch mates."""
    root = shared_datasets_module
    paintings = sorted((root / "wikiart-styles").glob("*/*.jpg"))
    ai = sorted((root / "ai-sd-artists" / "images").glob("*"))
    louvre = sorted((root / "louvre-genre").glob("*/*/*"))
    probe = paintings[::1000][:4] + ai[:1] + louvre[:1]
    mates = paintings[7::250][:20] + ai[100::400][:4]
    imgs = [Image.open(p).convert("RGB") for p in probe + mates]
    imgs.append(Image.new("RGB", (300, 240), (0, 0, 0)))
    imgs.append(Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)))
    x = C.clip_preprocess_batch(imgs)
    assert x.shape == (32, 3, 224, 224)
    return x[:6], x[6:]


@pytest.fixture(scope="module")
def shared_datasets_module():
    # module-scoped twin of conftest's `shared_datasets` (same location rule), so that the
    # images are decoded once for the module
    import os
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    root = Path(os.environ.get("ARTLENS_SHARED", repo.parent / "shared")) / "datasets"
    if not root.is_dir():
        pytest.skip(f"{root} is not there")
    return root


def test_onnx_model_is_built_once_into_the_cache():
    import onnx

    path = C.clip_onnx_path()
    assert path.parent == cache_dir() / "models" and path.suffix == ".onnx"
    mtime = path.stat().st_mtime_ns
    assert C.clip_onnx_path() == path and path.stat().st_mtime_ns == mtime
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]  # no temporary leftovers
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    assert "DynamicQuantizeLinear" not in ops  # the batch-wide quantization is gone
    assert ops.count("MatMulIntegerToFloat") == 73  # every linear layer stays INT8
    assert ops.count("MultiHeadAttention") == 12  # the fused build passed its self-check
    outputs = [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]
    assert outputs == [C.ONNX_OUTPUT, C.ONNX_MID_OUTPUT]


def test_onnx_embeddings_do_not_depend_on_the_batch(session, pixels):
    probe, mates = pixels
    alone = np.concatenate([C.clip_embed(session, probe[i : i + 1]) for i in range(len(probe))])
    assert alone.shape == (6, 512) and np.isfinite(alone).all()
    reversed_batch = C.clip_embed(session, probe[::-1])[::-1]
    # a batch of 32: the probes spread among 26 other images, the loud noise image included
    order = np.random.default_rng(1).permutation(32)
    mixed_in = np.concatenate([probe, mates])[order]
    mixed_out = C.clip_embed(session, mixed_in)[np.argsort(order)][:6]
    with C.ClipOnnxRunner(workers=2) as runner:  # slices of a batch on two sessions
        runner_out = runner(np.concatenate([mates[:9], probe]))[9:]
    for other in (reversed_batch, mixed_out, runner_out):
        cos = _cos(alone, other)
        assert cos.min() >= 0.999, cos
    # the full feature vector (with the mid-layer patch means) is batch-independent too
    with C.ClipOnnxRunner(workers=2) as runner:
        feats_alone = np.concatenate([runner.features(probe[i : i + 1]) for i in range(len(probe))])
        feats_mixed = runner.features(np.concatenate([mates[:9], probe]))[9:]
    assert feats_alone.shape == (6, C.CLIP_FEATURE_DIM)
    assert (feats_alone * feats_mixed).sum(1).min() >= 0.999
    # different images stay different
    assert _cos(alone[:1], alone[1:2])[0] < 0.99


def test_onnx_agrees_with_the_fp32_torch_rebuild(session, torch_model, pixels):
    probe, _ = pixels
    with torch.no_grad():
        ref = torch_model(pixel_values=torch.from_numpy(probe)).image_embeds.numpy()
    cos = _cos(C.clip_embed(session, probe), ref)
    assert cos.min() > 0.95 and cos.mean() > 0.98, cos


def test_torch_rebuild_is_stable_and_is_the_registry_backbone(torch_model):
    from sklearn.datasets import load_sample_image

    x = torch.from_numpy(C.clip_preprocess_batch([Image.fromarray(load_sample_image(f)) for f in GOLDEN]))
    with torch.no_grad():
        emb = torch_model(pixel_values=x).image_embeds.numpy()
    assert np.allclose(_norm(emb)[:, :6], np.array(list(GOLDEN.values())), atol=2e-3)

    backbone = create_backbone("clip-vit-b16")
    spec = get_spec("clip-vit-b16")
    acts = {}
    layer = backbone.get_submodule(spec.gradcam_layer)
    layer.register_forward_hook(lambda m, i, o: acts.update(a=o))
    layer.register_full_backward_hook(lambda m, gi, go: acts.update(g=go[0]))
    out = backbone(x[:1])
    assert out.shape == (1, spec.feature_dim) and spec.feature_dim == C.CLIP_FEATURE_DIM
    # the first block is the normalised embedding (/ 2); the whole is what the ONNX encoder gives
    assert np.allclose(out.detach().numpy()[:, :512] * 2, _norm(emb[:1]), atol=1e-4)
    with C.ClipOnnxRunner(workers=1) as runner:
        onnx_feats = runner.features(x[:1].numpy())
    assert float((out.detach().numpy() * onnx_feats).sum()) > 0.97
    out[0, 0].backward()
    grid = C.vit_reshape_transform(acts["g"])
    assert grid.shape == (1, 768, 14, 14)
    # The gradient reaches the patch tokens through the last block's attention: a spatial map.
    assert float(grid.abs().sum(1).std()) > 0


def test_runner_slices_give_the_same_bits(pixels):
    probe, mates = pixels
    x = np.concatenate([probe, mates[:5]])  # 11 images: slices of 2 end in one of 3, slices of 4 in one of 3
    with C.ClipOnnxRunner(workers=2, slice_size=2) as two, C.ClipOnnxRunner(workers=2, slice_size=4) as four:
        assert np.array_equal(two.features(x), four.features(x))
        assert len(two.sessions) == 1  # one session, shared by the threads


def test_int8_emulation_in_torch_agrees_with_the_onnx_encoder(pixels):
    """The GPU path's arithmetic, checked on the CPU: features within cosine 0.99 of onnxruntime's
    (measured 0.997-0.999: float rounding moves a few INT8 steps), closer than the fp32 rebuild."""
    from artlens.models.clip.torch_int8 import emulate_int8

    probe, _ = pixels
    with C.ClipOnnxRunner(workers=2) as runner:
        ref = runner.features(probe)
    backbone = create_backbone("clip-vit-b16")
    with torch.inference_mode():
        fp32 = torch.nn.functional.normalize(backbone(torch.from_numpy(probe)), dim=1).numpy()
        emulated = emulate_int8(backbone)(torch.from_numpy(probe)).numpy()
    cos, cos_fp32 = (emulated * ref).sum(1), (fp32 * ref).sum(1)
    assert cos.min() >= 0.99 and cos.mean() > cos_fp32.mean(), (cos, cos_fp32)
    assert sum(type(m).__name__ == "PerTokenInt8Linear" for m in backbone.modules()) == 73


@pytest.mark.skipif(not __import__("artlens.models.device", fromlist=["x"]).cuda_device_count(), reason="no CUDA device")
def test_cuda_features_agree_with_the_cpu(pixels):
    """Untested on real hardware when written (no GPU there): CLIP (INT8 emulation) and a CNN on the
    GPU give the CPU encoders' features to cosine >= 0.99."""
    from artlens.embed import get_encoder

    probe, _ = pixels  # CLIP-normalised 224 px inputs: as good as any for comparing two devices
    for name in ("clip-vit-b16", "efficientnet-lite0"):
        cpu, gpu = get_encoder(name, device="cpu"), get_encoder(name, device="cuda")
        assert gpu.device == "cuda" and gpu.batch_size > cpu.batch_size
        cos = (cpu.embed_batch(probe) * gpu.embed_batch(probe)).sum(1)
        assert cos.min() >= 0.99, (name, cos)
    # the GPU's CLIP vectors are not bit-identical to onnxruntime's: the store keeps them apart
    assert get_encoder("clip-vit-b16", device="cuda").backbone_id != get_encoder("clip-vit-b16").backbone_id
