"""Grad-CAM explanations on tiny generated images with small stand-in or random-weight backbones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from artlens.explain import METHODS, ExplainError, Explainer, tokens_to_grid
from artlens.explain.faithfulness import BlurImputer, deletion_test, random_map
from artlens.explain.network import build_explain_model, resolve_layer
from artlens.explain.overlay import place_cam, prepare_image
from artlens.models.artmodel import ArtModel
from artlens.models.heads import MultiTaskHeads

torch.set_num_threads(1)

SIZE = 32
PRE = {"input_size": SIZE, "resize_size": SIZE, "mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bilinear"}


class RedDetector(nn.Module):
    """Feature 0 fires on red pixels, feature 1 on green ones, 2 on brightness, 3 is constant:
    what the class depends on is known."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 0.3]))  # a constant feature: after
            # L2 normalisation the red feature then still says how much red there is
            centre = (slice(None), slice(None), 1, 1)
            w = self.conv.weight[centre]
            w[0] = torch.tensor([1.0, -1.0, -1.0])  # red
            w[1] = torch.tensor([-1.0, 1.0, -1.0])  # green
            w[2] = torch.tensor([0.2, 0.2, 0.2])  # brightness
        self.act = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x):
        return self.pool(self.act(self.conv(x))).flatten(1)


def red_model(with_norm: bool = False) -> ArtModel:
    norm = (torch.full((4,), 0.01), torch.full((4,), 2.0)) if with_norm else None
    tasks = {"colour": {"labels": ["red", "green"]}, "origin": {"labels": ["human", "ai"], "hidden": [3]}}
    heads = MultiTaskHeads(4, tasks, norm=norm)
    with torch.no_grad():
        lin = heads.heads["colour"][0]
        lin.weight.copy_(torch.tensor([[4.0, -4.0, 0, 0], [-4.0, 4.0, 0, 0]]))
        lin.bias.zero_()
    config = {
        "mode": "probe",
        "backbone": {"name": "red-detector", "feature_dim": 4},
        "preprocessing": PRE,
        "tasks": [{"name": "colour", "labels": ["red", "green"]}, {"name": "origin", "labels": ["human", "ai"], "hidden": [3]}],
    }
    return ArtModel.from_torch(config, heads)


def red_square(w=SIZE, h=SIZE, at=(2, 2), side=10, colour=(230, 20, 20)) -> Image.Image:
    arr = np.full((h, w, 3), 128, dtype=np.uint8)
    arr[at[1] : at[1] + side, at[0] : at[0] + side] = colour
    return Image.fromarray(arr)


@pytest.fixture(scope="module")
def explainer():
    torch.manual_seed(0)
    return Explainer(red_model(), backbone=RedDetector())


@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_finds_the_red_square(explainer, method):
    exp = explainer.explain(red_square(at=(2, 2)), method=method, layers="conv")
    assert exp.label == "red" and exp.prob > 0.5
    cam = exp.cam
    assert cam.shape == (SIZE, SIZE) and cam.dtype == np.float32
    assert np.isfinite(cam).all() and cam.min() >= 0 and cam.max() <= 1 + 1e-6
    inside = cam[2:12, 2:12].mean()
    outside = cam[16:, 16:].mean()
    assert inside > 0.5 and inside > 3 * outside, (method, inside, outside)
    assert exp.overlay.size == (SIZE, SIZE)


def test_target_class_moves_the_map(explainer):
    # red square top-left, green square bottom-right: asking for "green" must look bottom-right
    img = red_square(at=(2, 2))
    arr = np.asarray(img).copy()
    arr[20:30, 20:30] = (20, 230, 20)
    img = Image.fromarray(arr)
    red = explainer.explain(img, target_class="red", layers="conv")
    green = explainer.explain(img, target_class="green", layers="conv")
    assert green.label == "green" and green.class_index == 1
    assert red.cam[2:12, 2:12].mean() > red.cam[20:30, 20:30].mean()
    assert green.cam[20:30, 20:30].mean() > green.cam[2:12, 2:12].mean()
    assert green.prob + red.prob == pytest.approx(1.0, abs=1e-5)
    # labels are also found case-insensitively and by index
    assert explainer.explain(img, target_class="GREEN", layers="conv").class_index == 1
    assert explainer.explain(img, target_class=0, layers="conv").label == "red"


def test_feature_standardisation_is_part_of_the_model():
    art = red_model(with_norm=True)
    net = build_explain_model(art, "colour", backbone=RedDetector())
    x = torch.randn(2, 3, SIZE, SIZE)
    raw = net.backbone(x).detach().numpy()
    feats = raw / np.linalg.norm(raw, axis=1, keepdims=True)  # the encoders' L2-normalised embeddings
    expected = art.head_logits(feats)["colour"]
    np.testing.assert_allclose(net(x).detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    net.task = "origin"
    np.testing.assert_allclose(net(x).detach().numpy(), art.head_logits(feats)["origin"], rtol=1e-5, atol=1e-5)


def test_other_task_and_hidden_layer_head(explainer):
    exp = explainer.explain(red_square(), task="origin", layers="conv")
    assert exp.task == "origin" and exp.label in ("human", "ai")
    assert exp.cam.shape == (SIZE, SIZE)


def test_bad_requests_name_the_problem(explainer):
    img = red_square()
    with pytest.raises(ExplainError, match="blue"):
        explainer.explain(img, target_class="blue", layers="conv")
    with pytest.raises(ExplainError, match="conv"):  # suggests the real name
        explainer.explain(img, layers="convv")
    with pytest.raises(ExplainError, match="method"):
        explainer.explain(img, method="magic", layers="conv")
    with pytest.raises(ExplainError, match="style"):
        explainer.explain(img, task="style", layers="conv")
    with pytest.raises(ExplainError, match="out of range"):
        explainer.explain(img, target_class=7, layers="conv")


def test_several_layers_make_a_strip_and_a_stack(explainer, tmp_path):
    exp = explainer.explain(red_square(), layers="conv,act")
    assert exp.layers == ["conv", "act"] and len(exp.cams) == 2
    assert exp.overlay.width > 3 * SIZE  # input + one panel per layer
    paths = exp.save(tmp_path, "square")
    stack = np.load(paths["npy"])
    assert stack.shape == (2, SIZE, SIZE)
    meta = json.loads(paths["json"].read_text())
    assert meta["label"] == "red" and meta["layers"] == ["conv", "act"]
    assert Image.open(paths["png"]).size == exp.overlay.size


def test_map_stays_inside_the_models_centre_crop(explainer):
    # A wide image: the model sees only the centre square; the map must be 0 on the cut-off sides
    # and the red square (inside the crop) must be where it is highest.
    img = red_square(w=96, h=SIZE, at=(40, 4), side=12)
    exp = explainer.explain(img, layers="conv")
    assert exp.box == (32, 0, 64, SIZE)
    assert exp.cam.shape == (SIZE, 96)
    assert exp.cam[:, :32].max() == 0 and exp.cam[:, 64:].max() == 0
    ys, xs = np.unravel_index(np.argmax(exp.cam), exp.cam.shape)
    assert 38 <= xs <= 54 and 2 <= ys <= 18
    # outside the crop the overlay is the dimmed picture, not heat-map colours
    over = np.asarray(exp.overlay)
    assert (over[:, :32] <= 128 * 0.35 + 1).all()


def test_prepare_image_box_and_tensor():
    pre = dict(PRE, resize_size=40)
    prep = prepare_image(Image.new("RGB", (80, 40), (255, 0, 0)), pre)
    assert prep.tensor.shape == (1, 3, SIZE, SIZE)
    assert torch.allclose(prep.tensor[0, 0], torch.ones(SIZE, SIZE), atol=1e-4)  # (1 - .5) / .5
    # short side 40 -> resized 80x40, crop 32 at (24, 4)
    assert prep.box == (24, 4, 56, 36)
    cam = place_cam(np.ones((SIZE, SIZE), np.float32), prep.box, prep.display.size)
    assert cam.sum() == SIZE * SIZE and cam[4:36, 24:56].min() == 1


def test_tokens_to_grid_layouts():
    n, side, c = 2, 4, 5
    tokens = torch.arange(n * (1 + side * side) * c, dtype=torch.float32).reshape(n, 1 + side * side, c)
    grid = tokens_to_grid(tokens)
    assert grid.shape == (n, c, side, side)
    # patch token 1 (the first after CLS) is the top-left cell; token 1 + side is the next row
    assert torch.equal(grid[:, :, 0, 0], tokens[:, 1, :])
    assert torch.equal(grid[:, :, 1, 0], tokens[:, 1 + side, :])
    assert torch.equal(tokens_to_grid(tokens.transpose(0, 1)), grid)  # sequence-first
    assert tokens_to_grid(tokens[:, 1:, :]).shape == (n, c, side, side)  # no class token
    conv = torch.zeros(n, c, 3, 3)
    assert tokens_to_grid(conv) is conv
    with pytest.raises(ExplainError):
        tokens_to_grid(torch.zeros(n, 7, c))


def test_resolve_layer_paths():
    net = nn.Sequential(nn.Conv2d(3, 3, 1), nn.Sequential(nn.ReLU(), nn.Conv2d(3, 3, 1)))
    assert resolve_layer(net, "1.1") is net[1][1]
    assert resolve_layer(net, "1[-1]") is net[1][1]
    assert resolve_layer(net, "-1.0") is net[1][0]
    with pytest.raises(ExplainError, match="no submodule"):
        resolve_layer(net, "1.5")


def test_deletion_of_highlighted_pixels_hurts_more_than_random(explainer):
    torch.manual_seed(0)  # ROAD's in-painting adds a little noise
    img = red_square(at=(4, 18), side=9)
    exp = explainer.explain(img, layers="conv")
    tensor = prepare_image(img, PRE).tensor
    res = deletion_test(explainer.net, tensor, exp.input_cams[0], exp.class_index, n_random=6, seed=1, imputer="road")
    # in-painting the map's top fifth from the grey around it removes the red: the evidence is gone
    assert res.cam_drop > 0.8 * res.score
    assert res.cam_drop > res.random_drop + 1.0, res
    # the least highlighted fifth is background: deleting it does not hurt
    least = deletion_test(explainer.net, tensor, 1 - exp.input_cams[0], exp.class_index, n_random=0, imputer="road")
    assert least.cam_drop < 0.1 * res.cam_drop


def test_blur_imputer_touches_only_the_deleted_pixels():
    img = torch.from_numpy(np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32))
    keep = torch.ones(16, 16)
    keep[4:8, 4:8] = 0
    out = BlurImputer()(img, keep)
    assert torch.equal(out[:, keep.bool()], img[:, keep.bool()])
    inside = out[:, 4:8, 4:8]
    assert not torch.allclose(inside, img[:, 4:8, 4:8])
    assert inside.std() < img.std() / 2  # smoothed: detail gone


def test_random_map_is_smooth_and_seeded():
    a = random_map((32, 32), np.random.default_rng(3))
    b = random_map((32, 32), np.random.default_rng(3))
    assert a.shape == (32, 32) and np.array_equal(a, b)
    assert np.abs(np.diff(a, axis=0)).mean() < 0.1  # neighbouring pixels close: blobs, not salt


# --------------------------------------------------------------------------- registry backbones
def _backbones():
    return pytest.importorskip("artlens.models.backbones", reason="backbone registry not available")


def _registry_model(name: str, mode: str = "probe"):
    backbones = _backbones()
    spec = backbones.get_spec(name)
    heads = MultiTaskHeads(spec.feature_dim, {"style": {"labels": ["a", "b", "c"]}})
    state = None
    if mode == "finetune":
        torch.manual_seed(1)
        state = backbones.create_backbone(name, pretrained=False).state_dict()
    config = {
        "mode": mode,
        "backbone": {"name": name, "feature_dim": spec.feature_dim},
        # 64 px keeps it quick (EigenCAM's SVD grows with the map's area); the model's own size wins
        "preprocessing": spec.preprocessing.to_config() | {"input_size": 64, "resize_size": 64},
        "tasks": [{"name": "style", "labels": ["a", "b", "c"]}],
    }
    return ArtModel.from_torch(config, heads, backbone_state=state), state


@pytest.mark.parametrize("name", ["simple-cnn", "resnet18"])
@pytest.mark.parametrize("method", list(METHODS))
def test_registry_backbones_default_layer(name, method, image_factory):
    backbones = _backbones()
    if name not in backbones.list_backbones():
        pytest.skip(f"{name} not in the registry")
    torch.manual_seed(0)
    art, _ = _registry_model(name)
    ex = Explainer(art, backbone=backbones.create_backbone(name, pretrained=False))
    img = Image.open(image_factory("x.png", size=(72, 56), seed=4))
    exp = ex.explain(img, method=method)
    assert exp.layers == [backbones.get_spec(name).gradcam_layer]
    assert exp.cam.shape == (56, 72) and np.isfinite(exp.cam).all()
    assert exp.cam.max() > 0


def test_finetuned_backbone_weights_are_loaded():
    backbones = _backbones()
    name = "simple-cnn" if "simple-cnn" in backbones.list_backbones() else "resnet18"
    art, state = _registry_model(name, mode="finetune")
    net = build_explain_model(art)  # builds the backbone from the registry + the saved state
    for k, v in state.items():
        np.testing.assert_array_equal(net.backbone.state_dict()[k].numpy(), v.numpy())


def test_cli_explain_with_a_finetuned_model(tmp_path, image_factory):
    from typer.testing import CliRunner

    from artlens.cli import app

    _backbones()
    art, _ = _registry_model("simple-cnn" if "simple-cnn" in _backbones().list_backbones() else "resnet18", mode="finetune")
    art.save(tmp_path / "model")
    good = image_factory("good.png", size=(80, 64), seed=2)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\x00not a jpeg")
    out = tmp_path / "out"
    runner = CliRunner()
    res = runner.invoke(app, ["explain", str(tmp_path / "model"), str(good), str(bad), "--out", str(out), "--json"])
    assert res.exit_code == 2, res.output  # one image failed, the other was explained
    rows = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    assert len(rows) == 1 and rows[0]["label"] in ("a", "b", "c")
    assert np.load(out / "good.style.gradcam.npy").shape == (64, 80)
    assert Image.open(out / "good.style.gradcam.png").size == (80, 64)
    assert "bad.jpg" in res.output

    spec_layer = _backbones().get_spec(art.backbone_name).gradcam_layer
    res = runner.invoke(app, ["explain", str(tmp_path / "model"), str(good), "--out", str(out), "--layer", f"{spec_layer},{spec_layer}", "--method", "eigencam"])
    assert res.exit_code == 0, res.output
    assert np.load(out / "good.style.eigencam.npy").shape == (2, 64, 80)

    res = runner.invoke(app, ["explain", str(tmp_path / "model"), str(good), "--class", "zebra"])
    assert res.exit_code == 1 and "zebra" in res.output
    res = runner.invoke(app, ["explain", str(tmp_path / "model"), str(good), "--task", "genre"])
    assert res.exit_code == 1 and "genre" in res.output
    res = runner.invoke(app, ["explain", str(tmp_path / "nomodel"), str(good)])
    assert res.exit_code == 1 and "nomodel" in res.output


def test_explain_uses_the_models_preprocessing_not_the_registrys(image_factory):
    # A fine-tune trained at `finetune.image_size` 64 on resnet18 (registry: 224/256): explain must
    # feed the model what training and validation fed it (config.json's preprocessing), so its
    # probabilities are the training pipeline's and the map's grid is the trained one.
    backbones = _backbones()
    torch.manual_seed(0)
    art, _ = _registry_model("resnet18", mode="finetune")
    pre = art.config["preprocessing"]
    pre["resize_size"] = 73  # resize, then centre crop, like finetune.image_size 64 with crop_pct 0.875
    assert (pre["input_size"], backbones.get_spec("resnet18").preprocessing.input_size) == (64, 224)
    ex = Explainer(art)  # the registry backbone + the saved fine-tuned weights
    img = Image.open(image_factory("wide.png", size=(90, 70), seed=5))
    exp = ex.explain(img)
    assert exp.input_cams[0].shape == (64, 64) and exp.cam.shape == (70, 90)
    x = art.preprocessing.eval_transform()(img).unsqueeze(0)  # the training/validation transform
    with torch.no_grad():
        probs = torch.softmax(ex.net(x)[0], -1).numpy()
    assert exp.prob == pytest.approx(float(probs[exp.class_index]), abs=1e-5)


def test_predict_uses_the_models_preprocessing_like_explain(image_factory):
    # predict/evaluate/similar build their encoder from the same config.json preprocessing as
    # explain, so all of them give a fine-tuned model the pixels it was trained on.
    from artlens.embed import model_encoder
    from artlens.predict import Predictor

    torch.manual_seed(0)
    art, _ = _registry_model("resnet18", mode="finetune")
    art.config["preprocessing"]["resize_size"] = 73
    enc = model_encoder(art)
    img = Image.open(image_factory("wide.png", size=(90, 70), seed=5))
    assert enc.preprocess(img).shape == (3, 64, 64)
    exp = Explainer(art).explain(img)
    (row,) = Predictor(art).predict_images([img])
    probs = {p["label"]: p["prob"] for p in row["tasks"][exp.task]["top"]}
    assert probs[exp.label] == pytest.approx(exp.prob, abs=1e-4)
