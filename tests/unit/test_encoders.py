"""Encoders: preprocessing from the spec, normalised outputs, backbone ids, cheap import."""

from __future__ import annotations

import subprocess
import sys
import types
from dataclasses import dataclass, replace

import numpy as np
import pytest
from PIL import Image

from artlens.embed.encoders import TorchEncoder, get_encoder, make_backbone_id, state_digest
from artlens.models.preprocessing import Preprocessing

TINY = Preprocessing(input_size=16, resize_size=18, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5), interpolation="bilinear")


@dataclass(frozen=True)
class Spec:
    name: str = "tiny"
    feature_dim: int = 6
    preprocessing: Preprocessing = TINY
    kind: str = "cnn"
    weights_id: str = "tiny-w1"
    gradcam_layer: str = "0"


def test_import_is_cheap():
    code = "import sys, artlens.embed; print(sorted(m for m in ('torch', 'onnxruntime', 'pandas') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_spec_preprocess_resizes_crops_and_normalises():
    pre = Preprocessing.from_spec(Spec())
    # A wide image: left third red, middle green, right third blue. Short side -> 18, centre crop 16
    # keeps only the green middle.
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0] = 255
    arr[:, 30:60, 1] = 255
    arr[:, 60:, 2] = 255
    out = pre(Image.fromarray(arr))
    assert out.shape == (3, 16, 16) and out.dtype == np.float32
    expected = (np.array([0, 1, 0], np.float32) - np.array(TINY.mean)) / np.array(TINY.std)
    np.testing.assert_allclose(out.mean(axis=(1, 2)), expected, atol=1e-5)
    # greyscale input comes out as 3 channels too
    assert pre(Image.new("L", (20, 40), 128)).shape == (3, 16, 16)


def test_backbone_id_follows_weights_and_preprocessing():
    a = Preprocessing.from_spec(Spec())
    b = Preprocessing.from_spec(Spec(preprocessing=replace(TINY, interpolation="bicubic")))
    id_a = make_backbone_id("tiny", "torch", {"pre": a.fingerprint()})
    assert id_a == make_backbone_id("tiny", "torch", {"pre": a.fingerprint()})
    assert id_a != make_backbone_id("tiny", "torch", {"pre": b.fingerprint()})
    assert id_a.startswith("tiny-torch-")
    s1 = {"w": np.ones((2, 2), np.float32)}
    s2 = {"w": np.ones((2, 2), np.float32) * 1.001}
    assert state_digest(s1) == state_digest({"w": np.ones((2, 2), np.float32)}) != state_digest(s2)


@pytest.fixture
def tiny_registry(monkeypatch):
    """A stand-in `artlens.models.backbones` with one small conv backbone (random weights)."""
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)

    def create_backbone(name, pretrained=True, weights=None):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Conv2d(3, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
        )

    mod = types.ModuleType("artlens.models.backbones")
    mod.get_spec = lambda name: Spec(name=name)
    mod.create_backbone = create_backbone
    monkeypatch.setitem(sys.modules, "artlens.models.backbones", mod)
    return mod


def _images(n):
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 256, (20 + i, 24, 3), dtype=np.uint8)) for i in range(n)]


def test_torch_encoder_is_normalised_and_batch_independent(tiny_registry):
    enc = TorchEncoder("tiny")
    assert enc.dim == 6
    imgs = _images(5)
    batch = enc.embed_images(imgs)
    assert batch.shape == (5, 6) and batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    alone = np.concatenate([enc.embed_images([im]) for im in imgs])
    assert (np.sum(alone * batch, axis=1) >= 0.999).all()  # eval mode: BatchNorm uses running stats


def test_fine_tuned_state_changes_vectors_and_id(tiny_registry):
    base = TorchEncoder("tiny")
    state = {k: v.detach().numpy().copy() for k, v in base.model.state_dict().items()}
    same = TorchEncoder("tiny", backbone_state=state)
    state["0.weight"] = state["0.weight"] * -1.0
    tuned = TorchEncoder("tiny", backbone_state=state)
    imgs = _images(3)
    np.testing.assert_allclose(same.embed_images(imgs), base.embed_images(imgs), atol=1e-6)
    assert not np.allclose(tuned.embed_images(imgs), base.embed_images(imgs), atol=1e-3)
    assert len({base.backbone_id, same.backbone_id, tuned.backbone_id}) == 3
    # a partial state (frozen layers left out) fills in the rest from the pretrained weights
    partial = TorchEncoder("tiny", backbone_state={"0.weight": state["0.weight"]})
    np.testing.assert_allclose(partial.embed_images(imgs), tuned.embed_images(imgs), atol=1e-6)
    # a state that does not fit the backbone is refused, not half-loaded
    with pytest.raises(RuntimeError, match="size mismatch"):
        TorchEncoder("tiny", backbone_state={"0.weight": np.zeros((1, 1, 1, 1), np.float32)})
    with pytest.raises(ValueError, match="unknown tensors head.weight"):
        TorchEncoder("tiny", backbone_state={**state, "head.weight": np.zeros(3, np.float32)})
    # get_encoder builds a fresh torch encoder for a state, and caches pretrained ones
    assert get_encoder("tiny", backbone_state=state).backbone_id == tuned.backbone_id


def test_real_registry_simple_cnn():
    backbones = pytest.importorskip("artlens.models.backbones")
    if "simple-cnn" not in backbones.list_backbones():
        pytest.skip("simple-cnn not registered")
    import torch

    torch.set_num_threads(1)
    enc = TorchEncoder("simple-cnn", pretrained=False)
    vecs = enc.embed_images(_images(3))
    assert vecs.shape == (3, backbones.get_spec("simple-cnn").feature_dim)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name", ["efficientnet-lite0", "mobilenet-v2", "clip-vit-b16"])
def test_encoders_preprocess_with_the_registrys_description(name):
    backbones = pytest.importorskip("artlens.models.backbones")
    spec = backbones.get_spec(name)
    enc = TorchEncoder(name, pretrained=False)
    assert enc.preprocess == spec.preprocessing
    assert enc.preprocess(_images(1)[0].resize((301, 217))).shape == (3, spec.preprocessing.input_size, spec.preprocessing.input_size)


def test_fine_tuned_encoder_takes_the_models_preprocessing(tiny_registry):
    own = {"input_size": 12, "resize_size": 14, "mean": [0, 0, 0], "std": [1, 1, 1], "interpolation": "bicubic"}
    state = {k: v.detach().numpy().copy() for k, v in TorchEncoder("tiny").model.state_dict().items()}
    tuned = TorchEncoder("tiny", backbone_state=state, preprocessing=own)
    assert tuned.preprocess == Preprocessing.from_config(own)
    assert tuned.preprocess(_images(1)[0]).shape == (3, 12, 12)
    # a partial block takes the rest from the registry
    assert TorchEncoder("tiny", backbone_state=state, preprocessing={"input_size": 12}).preprocess == replace(
        TINY, input_size=12, resize_size=12)


def test_random_init_backbone_does_not_depend_on_the_global_rng():
    pytest.importorskip("artlens.models.backbones")
    import torch

    torch.set_num_threads(1)
    img = [Image.new("RGB", (40, 30), (200, 30, 90))]
    torch.manual_seed(123)
    a = TorchEncoder("simple-cnn")
    torch.rand(1000)
    b = TorchEncoder("simple-cnn")
    np.testing.assert_array_equal(a.embed_images(img), b.embed_images(img))
    assert a.backbone_id == b.backbone_id
    assert torch.initial_seed() == 123  # the caller's RNG is left alone
