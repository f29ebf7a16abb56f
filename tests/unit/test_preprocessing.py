"""Preprocessing: one description per backbone, validated, round-tripped through config.json, and
the one source of the eval pixels, the train transforms' normalisation and explain's crop box."""

from __future__ import annotations

import json
import math
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from artlens.models.preprocessing import Preprocessing

SRC = Path(__file__).resolve().parents[2] / "src" / "artlens"
PRE = Preprocessing(input_size=32, resize_size=36, mean=(0.5, 0.4, 0.3), std=(0.25, 0.2, 0.5), interpolation="bicubic")


def _img(w=80, h=60, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert(mode)


def test_config_round_trip_and_the_shipped_models_block():
    cfg = PRE.to_config()
    assert cfg == {"input_size": 32, "resize_size": 36, "mean": [0.5, 0.4, 0.3], "std": [0.25, 0.2, 0.5],
                   "interpolation": "bicubic"}
    assert Preprocessing.from_config(json.loads(json.dumps(cfg))) == PRE
    # the default model's config.json (the current format) gives the CLIP registry description
    shipped = json.loads((SRC / "default" / "config.json").read_text())["preprocessing"]
    pre = Preprocessing.from_config(shipped)
    assert pre == Preprocessing.from_spec("clip-vit-b16") and pre.to_config() == shipped
    assert pickle.loads(pickle.dumps(pre)) == pre and hash(pre) == hash(Preprocessing.from_config(shipped))


def test_partial_blocks_take_the_rest_from_the_registry():
    reg = Preprocessing.from_spec("resnet18")
    assert Preprocessing.from_config(None, "resnet18") == reg
    assert Preprocessing.from_config({"interpolation": "bicubic"}, "resnet18").interpolation == "bicubic"
    # an input size without a resize size: no crop
    small = Preprocessing.from_config({"input_size": 64}, "resnet18")
    assert (small.input_size, small.resize_size, small.mean) == (64, 64, reg.mean)
    with pytest.raises(ValueError, match="missing .*interpolation"):
        Preprocessing.from_config({"input_size": 8, "resize_size": 8, "mean": [0] * 3, "std": [1] * 3})
    # a bad value is named even when the backbone is unknown
    with pytest.raises(ValueError, match="std"):
        Preprocessing.from_config({"std": [1, 0, 1]}, "no-such-backbone")


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"std": [0.2, 0.0, 0.2]}, "std"),
        ({"std": [-1, 1, 1]}, "std"),
        ({"std": [1, math.inf, 1]}, "std"),
        ({"mean": [0.5, math.nan, 0.5]}, "mean"),
        ({"mean": [0.5, 0.5]}, "mean"),
        ({"mean": "grey"}, "mean"),
        ({"input_size": 0}, "input_size"),
        ({"resize_size": -4}, "resize_size"),
        ({"input_size": 22.5}, "input_size"),
        ({"input_size": True}, "input_size"),
        ({"input_size": math.nan}, "input_size"),
        ({"resize_size": "256"}, "resize_size"),
        ({"interpolation": "lanczos"}, "interpolation"),
    ],
)
def test_invalid_values_are_refused_with_the_field_named(change, field):
    with pytest.raises(ValueError, match=rf"preprocessing: {field}"):
        Preprocessing.from_config(PRE.to_config() | change)


def test_a_zero_std_in_config_json_is_a_model_format_error():
    from artlens.models.artmodel import ArtModel, ModelFormatError

    cfg = json.loads((SRC / "default" / "config.json").read_text())
    cfg["preprocessing"]["std"][2] = 0
    with pytest.raises(ModelFormatError, match="preprocessing: std must be > 0"):
        ArtModel(cfg, {})


def test_eval_pixels_resize_crop_and_normalise():
    # 90x30: left third red, middle green, right blue. Short side -> 36 (108x36), crop 32 keeps green.
    arr = np.zeros((30, 90, 3), np.uint8)
    arr[:, :30, 0], arr[:, 30:60, 1], arr[:, 60:, 2] = 255, 255, 255
    x = PRE(Image.fromarray(arr))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32 and x.flags.c_contiguous
    expected = (np.array([0, 1, 0], np.float32) - np.array(PRE.mean)) / np.array(PRE.std)
    np.testing.assert_allclose(x[:, 10:22, 10:22].mean(axis=(1, 2)), expected, atol=1e-5)
    assert np.isfinite(x).all()
    assert PRE(_img(mode="L")).shape == PRE(_img(mode="RGBA")).shape == (3, 32, 32)
    assert PRE.batch([_img(), _img(seed=1)]).shape == (2, 3, 32, 32)
    assert PRE.batch([]).shape == (0, 3, 32, 32)


def test_eval_matches_torchvision_and_the_torch_transform():
    import torch
    from torchvision import transforms as T

    for pre in (PRE, Preprocessing.from_spec("resnet18"), Preprocessing(40, 30, (0.5,) * 3, (0.25,) * 3, "bilinear")):
        ref = T.Compose([T.Resize(pre.resize_size, interpolation=pre.torch_interpolation), T.CenterCrop(pre.input_size),
                         T.ToTensor(), T.Normalize(pre.mean, pre.std)])
        for img in (_img(), _img(31, 57, seed=2), _img(301, 217, seed=3)):
            ours = pre(img)
            np.testing.assert_allclose(ours, ref(img).numpy(), atol=1e-5)  # pads like torchvision when 30 < 40
            t = pre.eval_transform()(img)
            assert isinstance(t, torch.Tensor) and np.array_equal(t.numpy(), ours)


def test_crop_box_is_where_the_crop_comes_from():
    # a white square exactly where the box says, black elsewhere: the crop is all white
    for pre, (w, h) in ((PRE, (80, 60)), (PRE, (45, 120)), (Preprocessing(16, 16, (0,) * 3, (1,) * 3, "nearest"), (16, 40))):
        l, t, r, b = pre.crop_box(w, h)
        rw, rh = pre.resized_size(w, h)
        assert abs((r - l) - pre.input_size * w / rw) <= 1 and abs((b - t) - pre.input_size * h / rh) <= 1
        arr = np.zeros((h, w, 3), np.uint8)
        arr[t:b, l:r] = 255
        inner = pre.crop(Image.fromarray(arr)).crop((2, 2, pre.input_size - 2, pre.input_size - 2))
        assert np.asarray(inner).min() > 200
    # mapped onto a half-size display copy
    assert PRE.crop_box(80, 40, into=(40, 20)) == tuple(round(v / 2) for v in PRE.crop_box(80, 40))
    # short side 36 of 80x40 -> 72x36, crop 32 at (20, 2), back in original pixels
    assert PRE.crop_box(80, 40) == (22, 2, 58, 38)


def test_at_size_and_crop_pct():
    assert Preprocessing.from_spec("resnet18").crop_pct == pytest.approx(0.875)
    big = PRE.at_size(64)
    assert (big.input_size, big.resize_size) == (64, 72) and big.crop_pct == PRE.crop_pct


def test_fingerprint_is_the_embedding_store_key():
    # backbone ids hash this dict: its shape must not change, or every embedding store is rebuilt
    assert Preprocessing.from_spec("clip-vit-b16").fingerprint() == {
        "input_size": 224, "resize_size": 224, "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
    }


def test_importing_does_not_import_torch():
    code = ("import sys, artlens.models.preprocessing as P; P.Preprocessing.from_spec('resnet18'); "
            "print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
