"""Augmentation presets: shapes, normalisation, determinism of eval, the five full-resolution crops."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from artlens.models.preprocessing import Preprocessing
from artlens.train.transforms import PRESETS, train_transform

torch.set_num_threads(1)
PRE = Preprocessing(input_size=32, resize_size=36, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), interpolation="bicubic")


def _img(w=80, h=60, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def test_eval_transform_is_deterministic_and_normalised():
    tf = PRE.eval_transform()
    img = Image.new("RGB", (50, 40), (128, 128, 128))
    x = tf(img)
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x, torch.full_like(x, (128 / 255 - 0.5) / 0.25), atol=1e-3)
    assert torch.equal(tf(_img()), tf(_img()))
    # the same pixels the encoders get
    assert np.array_equal(tf(_img()).numpy(), PRE(_img()))


def test_image_size_override_keeps_the_resize_ratio():
    g = PRE.at_size(64)
    assert (g.input_size, g.resize_size, g.interpolation, g.mean) == (64, 72, "bicubic", PRE.mean)
    assert g.eval_transform()(_img()).shape == (3, 64, 64)
    assert PRE.at_size(None) is PRE.at_size(32) is PRE


@pytest.mark.parametrize("preset", PRESETS)
def test_presets_give_model_sized_tensors(preset):
    tf = train_transform(preset, PRE)
    assert tf.views == (6 if preset == "patch" else 1)
    for view in range(tf.views):
        assert tf(_img(), view).shape == (3, 32, 32)
    # DataLoader workers get a pickled copy
    again = pickle.loads(pickle.dumps(tf))
    assert again(_img(), 0).shape == (3, 32, 32)


def test_flip_preset_uses_the_eval_geometry():
    torch.manual_seed(0)
    flip, ref = train_transform("flip", PRE), PRE.eval_transform()(_img())
    outs = [flip(_img()) for _ in range(8)]
    assert any(torch.equal(o, ref) for o in outs) and any(torch.equal(o, ref.flip(-1)) for o in outs)


def test_standard_preset_is_random_and_none_is_not():
    torch.manual_seed(0)
    std = train_transform("standard", PRE)
    assert not torch.equal(std(_img()), std(_img()))
    none = train_transform("none", PRE)
    assert torch.equal(none(_img()), PRE.eval_transform()(_img()))


def test_colour_jitter_is_off_by_default():
    from torchvision import transforms as T

    assert not any(isinstance(t, T.ColorJitter) for t in train_transform("standard", PRE).whole.transforms)
    assert any(isinstance(t, T.ColorJitter) for t in train_transform("standard", PRE, color_jitter=0.2).whole.transforms)


def test_patch_crops_are_full_resolution_regions():
    # a 64x64 image with a distinct colour in each corner: the crops are those pixels, not a resize
    arr = np.zeros((64, 64, 3), np.uint8)
    arr[:32, :32] = (255, 0, 0)
    arr[:32, 32:] = (0, 255, 0)
    arr[32:, :32] = (0, 0, 255)
    arr[32:, 32:] = (255, 255, 0)
    img = Image.fromarray(arr, "RGB")
    tf = train_transform("patch", PRE)
    crops = tf.region_crops(img)
    assert [c.size for c in crops] == [(32, 32)] * 5
    assert [c.getpixel((5, 5)) for c in crops[:4]] == [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]
    # a small image is upscaled to one crop
    assert tf.region_crops(_img(20, 10))[0].size == (32, 32)


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown augmentation preset"):
        train_transform("heavy", PRE)
