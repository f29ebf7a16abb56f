"""The model artifact: round trips, numpy/torch agreement, and refusal of bad files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from artlens.models.artmodel import ArtModel, ModelFormatError, new_config


def _model(hidden=(), seed=0, dim=8) -> ArtModel:
    import torch

    from artlens.models.heads import MultiTaskHeads

    torch.manual_seed(seed)
    tasks = [
        {"name": "style", "labels": ["a", "b", "c"], "hidden": list(hidden), "threshold": 0.5, "temperature": 2.0},
        {"name": "origin", "labels": ["human", "ai"]},
    ]
    heads = MultiTaskHeads(dim, {t["name"]: t for t in tasks}, norm=(torch.randn(dim), torch.rand(dim) + 0.5))
    cfg = {"backbone": {"name": "simple-cnn", "weights_id": "test", "feature_dim": dim}, "tasks": tasks}
    return ArtModel.from_torch(cfg, heads)


@pytest.mark.parametrize("hidden", [(), (16, 4)])
def test_round_trip_and_numpy_matches_torch(tmp_path, hidden):
    import torch

    m = _model(hidden)
    m.save(tmp_path / "m")
    loaded = ArtModel.load(tmp_path / "m")
    x = np.random.default_rng(1).normal(size=(5, 8)).astype(np.float32)
    np_logits = loaded.head_logits(x)
    heads = loaded.torch_heads().eval()
    with torch.no_grad():
        t_logits = heads(torch.from_numpy(x))
    for task in ("style", "origin"):
        np.testing.assert_allclose(np_logits[task], t_logits[task].numpy(), rtol=1e-5, atol=1e-5)
    probs = loaded.predict_proba(x)
    np.testing.assert_allclose(probs["style"].sum(axis=1), 1.0, rtol=1e-6)
    # temperature 2 flattens the distribution compared with the raw softmax
    raw = np.exp(np_logits["style"]) / np.exp(np_logits["style"]).sum(axis=1, keepdims=True)
    assert probs["style"].max(axis=1).mean() < raw.max(axis=1).mean()
    assert loaded.task("style").threshold == 0.5


def test_refuses_mismatched_labels(tmp_path):
    m = _model()
    m.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m/config.json").read_text())
    cfg["tasks"][0]["labels"].append("d")  # 4 labels, head has 3 outputs
    (tmp_path / "m/config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelFormatError, match="does not match"):
        ArtModel.load(tmp_path / "m")


def test_refuses_pickle_and_garbage(tmp_path):
    import pickle

    m = _model()
    m.save(tmp_path / "m")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    (tmp_path / "m/model.safetensors").write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ModelFormatError, match="safetensors"):
        ArtModel.load(tmp_path / "m")
    assert not marker.exists()
    (tmp_path / "m/config.json").write_text("{not json")
    with pytest.raises(ModelFormatError, match="JSON"):
        ArtModel.load(tmp_path / "m")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelFormatError, match="missing"):
        ArtModel.load(tmp_path / "empty")


def test_refuses_unknown_tensor_and_format(tmp_path):
    m = _model()
    m.tensors["evil.tensor"] = np.zeros(3, np.float32)
    with pytest.raises(ModelFormatError, match="unexpected tensor"):
        ArtModel(m.config, m.tensors)
    cfg = dict(new_config(m.config))
    cfg["format"] = "something-else"
    with pytest.raises(ModelFormatError, match="format"):
        ArtModel(cfg, {k: v for k, v in m.tensors.items() if k != "evil.tensor"})


def test_background_logits_are_stored_as_int8_rows(tmp_path):
    """Only the open-set background weights go to disk as int8 with a scale per row (the shipped
    model stays small); they load back as float32 within half a step, every other tensor bit for
    bit; a crafted int8 tensor without a valid scale is one error naming it."""
    from safetensors.numpy import load_file, save_file

    m = _model()
    rng = np.random.default_rng(0)
    bg = rng.normal(size=(40, 8)).astype(np.float32)
    m.tensors["openset.style.background.weight"] = bg
    m.tensors["openset.style.background.bias"] = rng.normal(size=40).astype(np.float32)
    ArtModel.save(m, tmp_path / "m")
    on_disk = load_file(tmp_path / "m" / "model.safetensors")
    assert {k for k, v in on_disk.items() if v.dtype == np.int8} == {"openset.style.background.weight"}
    assert on_disk["openset.style.background.weight_scale"].shape == (40,)
    back = ArtModel.load(tmp_path / "m")
    w = back.tensors["openset.style.background.weight"]
    assert w.dtype == np.float32 and "openset.style.background.weight_scale" not in back.tensors
    step = np.abs(bg).max(1, keepdims=True) / 127
    assert np.all(np.abs(w - bg) <= step / 2 + 1e-7)
    for k, v in m.tensors.items():
        if k != "openset.style.background.weight":
            np.testing.assert_array_equal(back.tensors[k], v)
    for bad in ({}, {"openset.style.background.weight_scale": -on_disk["openset.style.background.weight_scale"]},
                {"openset.style.background.weight_scale": np.ones(3, np.float32)}):
        crafted = {k: v for k, v in on_disk.items() if k != "openset.style.background.weight_scale"} | bad
        save_file(crafted, tmp_path / "m" / "model.safetensors")
        with pytest.raises(ModelFormatError, match="background.weight is int8 without a valid"):
            ArtModel.load(tmp_path / "m")