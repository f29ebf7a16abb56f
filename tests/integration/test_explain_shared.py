"""Grad-CAM on real paintings: is the map faithful, and does it stay on the picture?

A tiny probe (logistic regression on a few paintings of six styles) over a real pretrained
backbone stands in for a trained model, so the tests need no model files.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from artlens.data.images import load_image
from artlens.explain import Explainer
from artlens.explain.faithfulness import deletion_test
from artlens.explain.overlay import prepare_image
from artlens.models.artmodel import ArtModel
from artlens.models.heads import MultiTaskHeads

pytestmark = pytest.mark.integration

STYLES = ("Baroque", "Impressionism", "Ukiyo_e", "Pop_Art", "Cubism", "Rococo")
# A Louvre photograph of a Baroque painting, padded with white to 500x500 (a quarter is margin).
PADDED = ("louvre-genre", "train", "genre_painting", "cl010059235.jpg")


@pytest.fixture(scope="module")
def shared(shared_datasets):
    # module-scoped so that the expensive fixtures below are built once
    return shared_datasets


def _files(root, style, start, n):
    # every 20th file: the folders are sorted by artist, so this spreads over many painters
    return sorted((root / "wikiart-styles" / style).glob("*.jpg"))[start::20][:n]


def probe_explainer(name: str, root: Path, n_train: int) -> Explainer:
    """Logistic regression on `n_train` paintings per style over a pretrained backbone, as a
    probe ArtModel, wrapped for explanations."""
    from sklearn.linear_model import LogisticRegression

    backbones = pytest.importorskip("artlens.models.backbones", reason="backbone registry not available")
    torch.set_num_threads(1)  # 2 threads thrash when the CI cores are busy
    try:
        net = backbones.create_backbone(name, pretrained=True)
    except Exception as exc:  # weights package not installed: nothing to explain with
        pytest.skip(f"{name}: no pretrained weights ({exc})")
    spec = backbones.get_spec(name)
    pre = spec.preprocessing
    x, y = [], []
    with torch.no_grad():
        for label, style in enumerate(STYLES):
            files = _files(root, style, 0, n_train)
            batch = torch.cat([prepare_image(load_image(p), pre).tensor for p in files])
            x.append(torch.nn.functional.normalize(net(batch), dim=1).numpy())  # as the encoders give them
            y += [label] * len(files)
    x = np.concatenate(x)
    mean, std = x.mean(0), x.std(0) + 1e-6
    clf = LogisticRegression(C=0.5, max_iter=3000).fit((x - mean) / std, y)
    heads = MultiTaskHeads(spec.feature_dim, {"style": {"labels": list(STYLES)}}, norm=(torch.from_numpy(mean), torch.from_numpy(std)))
    with torch.no_grad():
        heads.heads["style"][0].weight.copy_(torch.from_numpy(clf.coef_).float())
        heads.heads["style"][0].bias.copy_(torch.from_numpy(clf.intercept_).float())
    config = {
        "mode": "probe",
        "backbone": {"name": name, "feature_dim": spec.feature_dim},
        "preprocessing": pre.to_config(),
        "tasks": [{"name": "style", "labels": list(STYLES)}],
    }
    return Explainer(ArtModel.from_torch(config, heads), backbone=net)


@pytest.fixture(scope="module")
def lite0(shared):
    return probe_explainer("efficientnet-lite0", shared, n_train=20)


@pytest.fixture(scope="module")
def clip(shared):
    return probe_explainer("clip-vit-b16", shared, n_train=5)


def test_deleting_the_highlighted_fifth_hurts_more_than_a_random_fifth(lite0, shared):
    torch.manual_seed(0)
    cam_drops, random_drops, correct = [], [], 0
    for label, style in enumerate(STYLES):
        for path in _files(shared, style, 1, 3):  # paintings the probe never saw
            img = load_image(path)
            exp = lite0.explain(img, method="gradcam")
            correct += exp.class_index == label
            tensor = prepare_image(img, lite0.pre).tensor
            res = deletion_test(lite0.net, tensor, exp.input_cams[0], exp.class_index, fraction=0.2, n_random=4, seed=label)
            cam_drops.append(res.cam_drop)
            random_drops.append(res.random_drop)
    assert correct >= len(cam_drops) // 3  # the probe works (chance: 1 in 6), so its maps mean something
    # averaged over the paintings (and 4 random fifths each): the map's fifth matters more
    assert np.mean(cam_drops) > np.mean(random_drops), (cam_drops, random_drops)


@pytest.mark.parametrize("which", ["lite0", "clip"])
def test_the_map_stays_on_the_painting_not_the_padding(which, request, shared):
    explainer = request.getfixturevalue(which)
    path = shared.joinpath(*PADDED)
    if not path.is_file():
        pytest.skip(f"{path} not there")
    exp = explainer.explain(load_image(path), method="gradcam")
    assert exp.label == "Baroque"
    arr = np.asarray(exp.image, dtype=np.int16)
    margin = (arr.min(axis=2) > 245) & (np.ptp(arr, axis=2) < 6)  # pure white padding
    seen = np.zeros(margin.shape, bool)
    l, t, r, b = exp.box
    seen[t:b, l:r] = True
    assert (margin & seen).sum() > 0.1 * seen.sum()  # the photograph does have a margin
    on_picture, on_margin = exp.cam[~margin & seen].mean(), exp.cam[margin & seen].mean()
    assert on_picture > 2 * on_margin, (on_picture, on_margin)


def test_explain_cli_writes_png_npy_and_json(lite0, shared, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import artlens.explain.network as network
    from artlens.cli import app

    lite0.model.save(tmp_path / "model")
    monkeypatch.setattr(network, "build_backbone", lambda art: lite0.net.backbone)  # no second load
    img = _files(shared, "Ukiyo_e", 2, 1)[0]
    res = CliRunner().invoke(
        app, ["explain", str(tmp_path / "model"), str(img), "--method", "gradcam++", "--out", str(tmp_path / "out"), "--json"]
    )
    assert res.exit_code == 0, res.output
    row = json.loads(res.stdout.strip().splitlines()[-1])
    assert row["task"] == "style" and row["label"] in STYLES and 0 < row["prob"] <= 1
    cam = np.load(row["files"]["npy"])
    assert cam.shape == load_image(img).size[::-1] and 0 <= cam.min() and cam.max() <= 1
    assert json.loads(Path(row["files"]["json"]).read_text())["method"] == "gradcam++"
