"""Grad-CAM on real paintings: is the map faithful, and does it stay on the picture?

A tiny probe (logistic regression on a few paintings of three styles) over a real pretrained
backbone stands in for a trained model, so the test needs no model files and runs in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from artlens.data.images import load_image
from artlens.explain import Explainer
from artlens.explain.faithfulness import deletion_test
from artlens.explain.gradcam import prepare_image
from artlens.models.artmodel import ArtModel
from artlens.models.heads import MultiTaskHeads

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared():
    # module-scoped twin of conftest's `shared_datasets`: the expensive fixtures below are built once
    root = Path(os.environ.get("ARTLENS_SHARED", Path(__file__).resolve().parents[2].parent / "shared")) / "datasets"
    if not root.is_dir():
        pytest.skip(f"{root} is not there")
    return root

STYLES = ("Ukiyo_e", "Pointillism", "Pop_Art")
N_TRAIN, N_TEST = 8, 2


def _images(root, style, start, n):
    files = sorted((root / "wikiart-styles" / style).glob("*.jpg"))
    return files[start : start + n]


def _backbone(name):
    backbones = pytest.importorskip("artlens.models.backbones", reason="backbone registry not available")
    if name not in backbones.list_backbones():
        pytest.skip(f"{name} is not in the registry")
    try:
        return backbones.create_backbone(name, pretrained=True)
    except Exception as exc:  # weights package not installed: nothing to explain with
        pytest.skip(f"{name}: no pretrained weights ({exc})")


def probe_model(name: str, net, root) -> ArtModel:
    """Logistic regression on N_TRAIN paintings per style, as an ArtModel (probe mode)."""
    from sklearn.linear_model import LogisticRegression

    from artlens.explain.gradcam import preprocessing_of

    spec = pytest.importorskip("artlens.models.backbones").get_spec(name)
    pre = {k: getattr(spec, k) for k in ("input_size", "resize_size", "mean", "std", "interpolation")}
    dummy = {"mode": "probe", "backbone": {"name": name, "feature_dim": spec.feature_dim}, "preprocessing": pre}
    x, y = [], []
    net.eval()
    with torch.no_grad():
        for label, style in enumerate(STYLES):
            batch = torch.cat([prepare_image(load_image(p), pre).tensor for p in _images(root, style, 0, N_TRAIN)])
            x.append(net(batch).numpy())
            y += [label] * len(batch)
    x = np.concatenate(x)
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=0.5, max_iter=2000).fit((x - mean) / std, y)
    heads = MultiTaskHeads(spec.feature_dim, {"style": {"labels": list(STYLES)}}, norm=(torch.from_numpy(mean), torch.from_numpy(std)))
    with torch.no_grad():
        heads.heads["style"][0].weight.copy_(torch.from_numpy(clf.coef_).float())
        heads.heads["style"][0].bias.copy_(torch.from_numpy(clf.intercept_).float())
    art = ArtModel.from_torch(dummy | {"tasks": [{"name": "style", "labels": list(STYLES)}]}, heads)
    assert preprocessing_of(art)["input_size"] == spec.input_size
    return art


@pytest.fixture(scope="module", params=["efficientnet-lite0", "clip-vit-b16"])
def explainer(request, shared):
    torch.set_num_threads(1)  # 2 threads thrash when the CI cores are busy
    torch.manual_seed(0)
    name = request.param
    net = _backbone(name)
    art = probe_model(name, net, shared)
    return Explainer(art, backbone=net)


def test_deleting_the_highlighted_fifth_hurts_more_than_a_random_fifth(explainer, shared_datasets):
    torch.manual_seed(0)
    cam_drops, random_drops, correct = [], [], 0
    for label, style in enumerate(STYLES):
        for path in _images(shared_datasets, style, N_TRAIN, N_TEST):  # paintings the probe never saw
            img = load_image(path)
            exp = explainer.explain(img, method="gradcam")
            correct += exp.class_index == label
            tensor = prepare_image(img, explainer.pre).tensor
            res = deletion_test(explainer.net, tensor, exp.input_cams[0], exp.class_index, fraction=0.2, n_random=4, seed=label)
            cam_drops.append(res.cam_drop)
            random_drops.append(res.random_drop)
    assert correct >= len(cam_drops) - 2  # the probe works, so its explanations mean something
    cam_mean, random_mean = float(np.mean(cam_drops)), float(np.mean(random_drops))
    assert cam_mean > random_mean, (cam_drops, random_drops)
    assert sum(c > r for c, r in zip(cam_drops, random_drops)) >= len(cam_drops) // 2


def test_the_map_stays_on_the_painting_not_the_padding(explainer, shared_datasets):
    # Louvre photographs are padded to 500x500 with white: the model has nothing to find there.
    path = shared_datasets / "louvre-genre" / "train" / "genre_painting" / "cl010059235.jpg"
    if not path.is_file():
        pytest.skip("Louvre image not there")
    img = load_image(path)
    exp = explainer.explain(img, method="gradcam")
    arr = np.asarray(exp.image, dtype=np.int16)
    padding = (arr.min(axis=2) > 245) & (np.ptp(arr, axis=2) < 6)  # pure white margin
    inside = np.zeros(padding.shape, bool)
    l, t, r, b = exp.box
    inside[t:b, l:r] = True
    pad, pic = padding & inside, ~padding & inside
    assert pad.sum() > 0.05 * inside.sum()  # the test image does have a margin
    assert exp.cam[pic].mean() > 1.5 * exp.cam[pad].mean(), (exp.cam[pic].mean(), exp.cam[pad].mean())


def test_explain_cli_writes_png_npy_and_json(explainer, shared_datasets, tmp_path, monkeypatch):
    import json

    from typer.testing import CliRunner

    import artlens.explain.gradcam as gradcam
    from artlens.cli import app

    explainer.model.save(tmp_path / "model")
    monkeypatch.setattr(gradcam, "build_backbone", lambda art: explainer.net.backbone)  # no second load
    img = _images(shared_datasets, "Ukiyo_e", N_TRAIN, 1)[0]
    res = CliRunner().invoke(
        app, ["explain", str(tmp_path / "model"), str(img), "--method", "gradcam++", "--out", str(tmp_path / "out"), "--json"]
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["task"] == "style" and row["label"] in STYLES and 0 < row["prob"] <= 1
    cam = np.load(row["files"]["npy"])
    assert cam.shape == (224, 224) and 0 <= cam.min() and cam.max() <= 1
    assert json.loads(open(row["files"]["json"]).read())["method"] == "gradcam++"
