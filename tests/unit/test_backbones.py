"""Backbone registry, preprocessing and the CLIP helpers, on random weights and tiny inputs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from artlens.models import backbones as B
from artlens.models import clip as C

torch.set_num_threads(1)

EXPECTED = {
    "clip-vit-b16": 512 + 3 * 768,  # image embedding + mid-layer patch means
    "efficientnet-lite0": 1280,
    "efficientnet-lite1": 1280,
    "efficientnet-lite2": 1280,
    "mobilenet-v2": 1280,
    "resnet18": 512,
    "resnet50": 2048,
    "efficientnet_b0": 1280,
    "efficientnet_b2": 1408,
    "densenet121": 1024,
    "vgg19": 4096,
    "inception_v3": 2048,
    "convnext_tiny": 768,
    "simple-cnn": 4096,
}
CNNS = sorted(n for n in EXPECTED if n != "clip-vit-b16")


def test_registry_lists_every_backbone_with_a_spec():
    assert B.list_backbones() == sorted(EXPECTED)
    assert B.list_backbones("efficientnet-lite*") == ["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
    for name, dim in EXPECTED.items():
        spec = B.get_spec(name)
        assert spec.name == name and spec.feature_dim == dim
        assert spec.kind == ("vit" if name == "clip-vit-b16" else "cnn")
        pre = spec.preprocessing
        assert pre.interpolation in ("bicubic", "bilinear")
        assert pre.resize_size >= pre.input_size
        assert len(pre.mean) == len(pre.std) == 3
        assert spec.weights_id
    assert B.get_spec("inception_v3").preprocessing.input_size == 299
    assert B.get_spec("efficientnet-lite0").preprocessing.mean == (0.5, 0.5, 0.5)
    assert B.get_spec("clip-vit-b16").preprocessing is C.CLIP_PREPROCESSING
    assert B.get_spec("clip-vit-b16").preprocessing.to_config() == {
        "input_size": 224, "resize_size": 224, "mean": list(C.CLIP_MEAN), "std": list(C.CLIP_STD),
        "interpolation": "bicubic",
    }


def test_unknown_backbone_names_the_known_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet1000'.*resnet18"):
        B.get_spec("resnet1000")
    with pytest.raises(ValueError, match="unknown backbone"):
        B.create_backbone("resnet1000", pretrained=False)


@pytest.mark.parametrize("name", CNNS)
def test_cnn_shapes_and_gradcam_layer(name):
    # Built on the meta device: shapes and module paths without allocating or computing anything.
    spec = B.get_spec(name)
    with torch.device("meta"):
        model = B.create_backbone(name, pretrained=False)
        size = spec.preprocessing.input_size
        out = model(torch.empty(2, 3, size, size))
    assert tuple(out.shape) == (2, spec.feature_dim)
    assert not model.training
    layer = model.get_submodule(spec.gradcam_layer)
    assert isinstance(layer, torch.nn.Module)


@pytest.mark.parametrize("name", ["mobilenet-v2", "efficientnet-lite0", "resnet18", "inception_v3"])
def test_with_classifier_gives_imagenet_logits(name):
    spec = B.get_spec(name)
    with torch.device("meta"):
        model = B.create_backbone(name, pretrained=False, with_classifier=True)
        size = spec.preprocessing.input_size
        out = model(torch.empty(1, 3, size, size))
    assert tuple(out.shape) == (1, 1000)


def test_simple_cnn_features_are_real_and_trainable(tmp_path):
    model = B.create_backbone("simple-cnn")  # no pretrained weights exist: random, from scratch
    x = torch.randn(3, 3, 128, 128)
    feats = model(x)
    assert feats.shape == (3, 4096) and torch.isfinite(feats).all()
    assert (feats >= 0).all()  # pooled ReLU output
    # The Grad-CAM layer is the second conv block's ReLU: (N, 64, 64, 64) at 128 px.
    acts = {}
    model.get_submodule("features.4").register_forward_hook(lambda m, i, o: acts.update(a=o))
    model(x[:1]).sum().backward()
    assert acts["a"].shape == (1, 64, 64, 64)
    assert model.features[0].weight.grad is not None
    # Any input size gives the same feature size (adaptive pool).
    assert model(torch.randn(1, 3, 96, 160)).shape == (1, 4096)
    # A weights file round-trips.
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    again = B.create_backbone("simple-cnn", weights=tmp_path / "w.safetensors")
    model.eval()
    assert torch.allclose(again(x), model(x))
    with pytest.raises(ValueError, match="no pretrained classifier"):
        B.create_backbone("simple-cnn", with_classifier=True)


def _tiny_clip():
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    cfg = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, projection_dim=16, num_hidden_layers=2, num_attention_heads=2,
        image_size=224, patch_size=16, hidden_act="quick_gelu",
    )
    torch.manual_seed(0)
    return CLIPVisionModelWithProjection(cfg).eval()


def test_clip_encoder_wrapper_and_vit_reshape_transform():
    clip = _tiny_clip()
    with pytest.raises(ValueError, match="do not fit a 2-block"):
        B._clip_encoder_class()(clip)  # the real mid layers (5, 7, 9) need 12 blocks
    enc = B._clip_encoder_class()(clip, mid_layers=(0, 1)).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = enc(x)
        ref = clip(pixel_values=x, output_hidden_states=True)
    emb = torch.nn.functional.normalize(ref.image_embeds, dim=1)
    proj = emb.shape[1]
    assert out.shape == (2, proj + 2 * clip.config.hidden_size)
    assert torch.allclose(out.norm(dim=1), torch.ones(2), atol=1e-5)
    assert torch.allclose(out[:, :proj] * 3**0.5, emb, atol=1e-5)  # 3 blocks, each scaled by 1/sqrt(3)
    # the second block: block 0's mean patch token, centred and normalised, the same as clip_features'
    mid0 = ref.hidden_states[1][:, 1:].mean(dim=1)
    mid0 = torch.nn.functional.normalize(mid0 - mid0.mean(dim=1, keepdim=True), dim=1)
    assert torch.allclose(out[:, proj : proj + clip.config.hidden_size] * 3**0.5, mid0, atol=1e-5)
    # The spec's Grad-CAM layer path (with the last layer index of this 2-layer model) resolves.
    layer = enc.get_submodule(C.CLIP_GRADCAM_LAYER.replace("layers.11", "layers.1"))
    acts = {}
    layer.register_forward_hook(lambda m, i, o: acts.update(a=o))
    enc(x).sum().backward()
    grid = C.vit_reshape_transform(acts["a"])
    assert grid.shape == (2, 32, 14, 14)
    # Token 1 is the top-left patch, token 14 the first patch of the second row; CLS is dropped.
    assert torch.equal(grid[:, :, 0, 0], acts["a"][:, 1, :])
    assert torch.equal(grid[:, :, 1, 0], acts["a"][:, 15, :])
    with pytest.raises(ValueError, match="expected 197 tokens"):
        C.vit_reshape_transform(torch.zeros(1, 50, 8))
    with pytest.raises(ValueError, match="no pretrained classifier"):
        B.create_backbone("clip-vit-b16", with_classifier=True)


def test_clip_preprocess_resizes_crops_and_normalises():
    # 448 x 300, left half red, right half blue: short side -> 224, width 334, centre crop 224.
    arr = np.zeros((300, 448, 3), np.uint8)
    arr[:, :224] = (255, 0, 0)
    arr[:, 224:] = (0, 0, 255)
    x = C.clip_preprocess(Image.fromarray(arr))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    red = (np.array([1.0, 0, 0]) - C.CLIP_MEAN) / C.CLIP_STD
    blue = (np.array([0, 0, 1.0]) - C.CLIP_MEAN) / C.CLIP_STD
    assert np.allclose(x[:, 100, 5], red, atol=1e-5)  # left edge of the crop is still red
    assert np.allclose(x[:, 100, 218], blue, atol=1e-5)
    # The red/blue border sits at the centre of the crop.
    border = np.argmax(x[2, 100] > 0)
    assert 108 <= border <= 114
    # Other modes are converted; a batch stacks.
    grey = Image.fromarray(np.full((50, 60), 128, np.uint8), "L")
    batch = C.clip_preprocess_batch([grey, Image.fromarray(arr)])
    assert batch.shape == (2, 3, 224, 224)
    assert np.allclose(batch[0, :, 10, 10], (128 / 255 - np.array(C.CLIP_MEAN)) / C.CLIP_STD, atol=1e-2)
    assert C.clip_preprocess_batch([]).shape == (0, 3, 224, 224)


def test_generic_preprocess_matches_torchvision_and_clip():
    from torchvision import transforms as T

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (170, 231, 3), dtype=np.uint8))
    pre = B.get_spec("resnet18").preprocessing
    ref = T.Compose([
        T.Resize(pre.resize_size, interpolation=T.InterpolationMode.BILINEAR),
        T.CenterCrop(pre.input_size),
        T.ToTensor(),
        T.Normalize(pre.mean, pre.std),
    ])(img).numpy()
    ours = pre(img)
    assert ours.shape == ref.shape == (3, 224, 224)
    assert np.abs(ours - ref).max() < 1e-4
    assert np.array_equal(B.get_spec("clip-vit-b16").preprocessing(img), C.clip_preprocess(img))


def test_importing_clip_and_registry_does_not_import_torch():
    code = (
        "import sys; import artlens.models.clip, artlens.models.backbones, artlens.models.weights; "
        "from artlens.models.backbones import get_spec; get_spec('clip-vit-b16'); "
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'timm') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _tiny_int8_onnx(tmp_path):
    """A two-layer MLP quantized the way the shipped CLIP model was (onnxruntime quantize_dynamic)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 96)) * 0.2).astype(np.float32)
    w2 = (rng.standard_normal((96, 8)) * 0.2).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("MatMul", ["r", "W2"], ["y"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 8])],
        [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "fp32.onnx"))
    quantize_dynamic(str(tmp_path / "fp32.onnx"), str(tmp_path / "int8.onnx"), per_channel=True, weight_type=QuantType.QInt8)
    return tmp_path / "fp32.onnx", tmp_path / "int8.onnx"


@pytest.mark.parametrize("fuse", [True, False])
def test_batch_independent_rewrite_on_a_tiny_quantized_model(tmp_path, fuse):
    import onnxruntime as ort

    fp32, int8 = _tiny_int8_onnx(tmp_path)
    out = C.build_batch_independent_onnx(int8, tmp_path / "pt.onnx", fuse=fuse)
    first = out.read_bytes()
    C.build_batch_independent_onnx(int8, tmp_path / "pt2.onnx", fuse=fuse)
    assert (tmp_path / "pt2.onnx").read_bytes() == first  # deterministic

    def session(p):
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])

    ref, dyn, pt = session(fp32), session(int8), session(out)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5, 64)).astype(np.float32)
    x[3] *= 40.0  # a batch mate with a much larger range

    def run(s, a):
        return s.run(["y"], {"x": a})[0]

    # The shipped scheme: row 0's result changes when a loud image joins the batch.
    assert not np.allclose(run(dyn, x[:1]), run(dyn, x)[:1], atol=1e-3)
    # Per-token: identical alone and in any batch, and close to fp32.
    alone = np.concatenate([run(pt, x[i : i + 1]) for i in range(4)])
    assert np.allclose(alone, run(pt, x), atol=1e-6)
    assert np.allclose(alone, run(pt, x[::-1])[::-1], atol=1e-6)
    exact = run(ref, x)
    assert np.abs(alone - exact).max() < 0.02 * np.abs(exact).max()


def test_rewrite_rejects_a_model_without_dynamic_quantization(tmp_path):
    fp32, _ = _tiny_int8_onnx(tmp_path)
    with pytest.raises(ValueError, match="no dynamically quantized MatMul"):
        C.build_batch_independent_onnx(fp32, tmp_path / "x.onnx")
    assert not (tmp_path / "x.onnx").exists()


def _toy_encoder(tmp_path):
    """An ONNX model with the CLIP encoder's interface: per-image mean colour -> 512-d embedding and
    3 x 768 patch means."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 512)).astype(np.float32)
    w2 = rng.standard_normal((3, 3 * 768)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["pixel_values"], ["m"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["m", "W"], ["image_embeds"]),
            helper.make_node("MatMul", ["m", "W2"], ["patch_means"]),
        ],
        "toy",
        [helper.make_tensor_value_info("pixel_values", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("image_embeds", TensorProto.FLOAT, ["N", 512]),
         helper.make_tensor_value_info("patch_means", TensorProto.FLOAT, ["N", 3 * 768])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w2, "W2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "toy.onnx"))
    return tmp_path / "toy.onnx"


def test_runner_splits_batches_across_sessions_in_order(tmp_path):
    import onnxruntime as ort

    path = _toy_encoder(tmp_path)
    sessions = [ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]) for _ in range(3)]
    x = np.random.default_rng(1).standard_normal((7, 3, 224, 224)).astype(np.float32)
    expected = sessions[0].run(["image_embeds"], {"pixel_values": x})[0]
    with C.ClipOnnxRunner(sessions=sessions) as runner:
        assert runner.workers == 3
        assert np.allclose(runner(x), expected, atol=1e-5)
        assert np.allclose(C.clip_embed(runner, x[:2]), expected[:2], atol=1e-5)  # fewer images than workers
        assert runner(x[:0]).shape == (0, 512)
        emb, mids = sessions[0].run(["image_embeds", "patch_means"], {"pixel_values": x})
        assert np.allclose(runner.features(x), C.clip_features(emb, mids), atol=1e-5)
        assert runner.features(x[:0]).shape == (0, C.CLIP_FEATURE_DIM)
        with pytest.raises(ValueError, match=r"expected \(N, 3, 224, 224\)"):
            runner(x[:, :, :100])
    assert np.allclose(C.clip_embed(sessions[1], x), expected, atol=1e-5)


def test_clip_features_normalise_each_block():
    rng = np.random.default_rng(0)
    emb = rng.standard_normal((4, C.CLIP_EMBED_DIM)).astype(np.float32)
    mids = rng.standard_normal((4, 3 * 768)).astype(np.float32)
    f = C.clip_features(emb, mids)
    assert f.shape == (4, C.CLIP_FEATURE_DIM) and f.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(f[:, :512] * 2, emb / np.linalg.norm(emb, axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    blocks = f[:, 512:].reshape(4, 3, 768)
    np.testing.assert_allclose(np.linalg.norm(blocks, axis=2), 0.5, rtol=1e-5)
    np.testing.assert_allclose(blocks.sum(axis=2), 0.0, atol=1e-4)  # centred over the channels
    # the embedding's scale and a mid layer's constant offset (the residual stream's) do not matter
    shifted = mids.copy()
    shifted[:, 768:1536] += 50.0
    np.testing.assert_allclose(C.clip_features(emb * 3, shifted), f, atol=1e-5)
    # but each block's content does: a different mid layer changes only its own block
    other = mids.copy()
    other[:, :768] = rng.standard_normal((4, 768))
    g = C.clip_features(emb, other)
    assert np.allclose(g[:, :512], f[:, :512]) and np.allclose(g[:, 1280:], f[:, 1280:])
    assert not np.allclose(g[:, 512:1280], f[:, 512:1280], atol=1e-3)
