"""Fine-tune mode on tiny generated images: checkpoints, logs, export, resume after SIGKILL, and a
resumed run ending bit-identical to an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import lightning as L
import pytest
import torch
from torch import nn

from artlens.models.preprocessing import Preprocessing


torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]


class TinySpec:
    name = "tiny"
    feature_dim = 8
    preprocessing = Preprocessing(input_size=32, resize_size=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                  interpolation="bilinear")
    weights_id = None


def tiny_backbone(*_, **__):
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, stride=2, padding=1), bn1=nn.BatchNorm2d(4), relu=nn.ReLU(),
        layer1=nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU()),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
    ))


PATCH = """
import artlens.train.finetune as ft, artlens.train.finetune_model as ftm
from tests.unit.test_train_finetune import TinySpec, tiny_backbone
ft._create_backbone = ftm._create_backbone = tiny_backbone
ft._get_spec = lambda name: TinySpec()
"""


@pytest.fixture
def tiny_backbone_registry(monkeypatch):
    """The `tiny` backbone: `run_finetune` builds it (artlens.train.finetune), and so does an
    `ArtClassifier` made without a backbone (artlens.train.finetune_model)."""
    import artlens.train.finetune as ft
    import artlens.train.finetune_model as ftm

    monkeypatch.setattr(ft, "_create_backbone", tiny_backbone)
    monkeypatch.setattr(ftm, "_create_backbone", tiny_backbone)
    monkeypatch.setattr(ft, "_get_spec", lambda name: TinySpec())


def make_dataset(root: Path, per_class: int = 12) -> Path:
    """Random 32x32 images (no two near-duplicates); class Baroque is redder, Cubism bluer."""
    from PIL import Image

    for k, c in enumerate(("Baroque", "Cubism")):
        for i in range(per_class):
            rng = np.random.default_rng(1000 * k + i)
            arr = rng.integers(0, 156, size=(32, 32, 3), dtype=np.uint8)
            arr[..., 0 if k == 0 else 2] += 100
            (root / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr, "RGB").save(root / c / f"{c}_{i}.png")
    return root


def recipe_for(data: Path, out: Path, **extra):
    from artlens.train.config import load_recipe

    overrides = {
        "mode": "finetune", "backbone.name": "tiny", "backbone.pretrained": False, "tasks": "style",
        "data.sources": [str(data)], "data.split": {"val": 0.25, "test": 0.0, "seed": 0, "group": None, "resplit": False},
        "finetune.epochs": 2, "finetune.batch_size": 4, "finetune.num_workers": 0, "finetune.image_size": 32,
        "finetune.augment": "flip", "finetune.progress": "none", "finetune.checkpoint_every_n_steps": 2,
        "finetune.optimizer.lr": 0.01, "out": str(out),
    }
    overrides.update(extra)
    return load_recipe(None, overrides)


def test_finetune_writes_checkpoints_logs_and_an_equivalent_model(tmp_path, tiny_backbone_registry, caplog):
    from artlens.models.artmodel import ArtModel
    from artlens.train.data import prepare
    from artlens.train.finetune import run_finetune

    data = make_dataset(tmp_path / "data")
    out = tmp_path / "run"
    recipe = recipe_for(data, out)
    prepared = prepare(recipe, progress=False)
    # a file that breaks after the scan: skipped with its reason, the run goes on
    broken = prepared.df.loc[prepared.df["split"] == "train", "path"].iloc[0]
    Path(broken).write_bytes(b"not an image")
    result = run_finetune(recipe, out, prepared=prepared)
    assert any(broken in r.getMessage() for r in caplog.records)

    assert (out / "checkpoints" / "best.ckpt").is_file() and (out / "checkpoints" / "last.ckpt").is_file()
    csv = (out / "logs" / "csv" / "metrics.csv").read_text()
    assert "val/macro_f1" in csv and "train/loss_epoch" in csv
    assert list((out / "logs" / "tensorboard").glob("events.out.tfevents.*"))
    assert result["metrics"]["val"]["style"]["n"] == int((prepared.df["split"] == "val").sum())

    model = ArtModel.load(out)
    assert model.mode == "finetune" and model.task("style").labels == ["Baroque", "Cubism"]
    assert model.config["preprocessing"]["input_size"] == 32
    assert model.preprocessing == TinySpec.preprocessing  # what predict/explain will feed it
    assert model.config["metrics"]["val"]["style"]["accuracy"] >= 0.0
    # the exported model = the trained network: backbone from backbone.* tensors, heads in numpy
    from artlens.train.finetune import ArtClassifier, load_checkpoint_state

    net = ArtClassifier(recipe, [{"name": "style", "labels": ["Baroque", "Cubism"], "column": "style"}], 8)
    net.load_state_dict(load_checkpoint_state(out / "checkpoints" / "best.ckpt"))
    net.eval()
    bb = tiny_backbone()
    bb.load_state_dict({k: torch.from_numpy(v) for k, v in model.backbone_state().items()})
    bb.eval()
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        feats = torch.nn.functional.normalize(bb(x), dim=1).numpy()
        expect = net(x)["style"].numpy()
    assert np.allclose(model.head_logits(feats)["style"], expect, atol=1e-5)


def test_named_freezing_and_two_phase_in_a_run(tmp_path, tiny_backbone_registry):
    import lightning as L

    from artlens.train.finetune import ArtClassifier, run_finetune

    data = make_dataset(tmp_path / "data", per_class=6)
    tasks = [{"name": "style", "labels": ["Baroque", "Cubism"], "column": "style"}]
    named = recipe_for(data, tmp_path / "a", **{"finetune.freeze.strategy": "named", "finetune.freeze.layers": ["conv1", "bn1"]})
    net = ArtClassifier(named, tasks, 8)
    assert not net.backbone.conv1.weight.requires_grad and net.backbone.layer1[0].weight.requires_grad

    seen = []

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if batch_idx == 0:
                seen.append(any(p.requires_grad for p in pl_module.backbone.parameters()))

    two = recipe_for(data, tmp_path / "b", **{"finetune.freeze.strategy": "two_phase", "finetune.freeze.milestone": 1,
                                             "finetune.loss.name": "focal", "finetune.loss.class_weights": "balanced",
                                             "finetune.loss.l2": 1e-4, "finetune.optimizer.name": "rmsprop",
                                             "finetune.scheduler.name": "step", "finetune.loggers": []})
    run_finetune(two, tmp_path / "b", callbacks=[Probe()])
    assert seen == [False, True]


DRIVER = """
import os, signal, sys, json
sys.path.insert(0, {repo!r})
import torch
torch.set_num_threads(1)
{patch}
import lightning as L
from tests.unit.test_train_finetune import RANDOM, recipe_for
from artlens.train.finetune import ManifestImageDataset, run_finetune

log_path = {log!r}
orig = ManifestImageDataset.__getitem__
def logged(self, i):
    if self.part == "train":
        with open(log_path, "a") as fh:
            fh.write(f"{{i[1] if isinstance(i, tuple) else i}}\\n")
    return orig(self, i)
ManifestImageDataset.__getitem__ = logged

class Kill(L.Callback):
    def on_train_batch_end(self, trainer, *a):
        if trainer.global_step == {kill_at}:
            os.kill(os.getpid(), signal.SIGKILL)  # mid-epoch, no chance to clean up

from pathlib import Path
mode, out = sys.argv[1], Path(sys.argv[2])  # fresh (killed) | resume | plain (never stopped)
recipe = recipe_for(Path({data!r}), out, **RANDOM)
res = run_finetune(recipe, out, resume=mode == "resume", callbacks=[Kill()] if mode == "fresh" else [])
print(json.dumps(res["metrics"]["val"]["style"]["n"]))
"""


# Everything random at once: crops, flips, rotation, colour jitter, and dropout in the head.
RANDOM = {"finetune.augment": "standard", "finetune.augment_options.color_jitter": 0.2,
          "finetune.augment_options.vflip": True, "tasks": [{"name": "style", "hidden": [8], "dropout": 0.5}]}


def _final_state(out: Path) -> dict:
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return {"weights": ckpt["state_dict"], "optimizer": ckpt["optimizer_states"], "step": ckpt["global_step"]}


def _assert_bit_identical(a: dict, b: dict) -> None:
    assert a["step"] == b["step"]
    assert a["weights"].keys() == b["weights"].keys()
    differ = [k for k in a["weights"] if not torch.equal(a["weights"][k], b["weights"][k])]
    assert not differ, f"tensors that differ: {differ}"
    for sa, sb in zip(a["optimizer"], b["optimizer"]):
        for p, st in sa["state"].items():
            assert all(torch.equal(v, sb["state"][p][k]) if torch.is_tensor(v) else v == sb["state"][p][k] for k, v in st.items())


@pytest.mark.slow
@pytest.mark.reliability
def test_resume_after_sigkill_mid_epoch(tmp_path):
    from artlens.train.finetune import EpochSampler

    data = make_dataset(tmp_path / "data")  # 24 images: 18 train -> 5 batches of 4 per epoch
    out = tmp_path / "run"
    log = tmp_path / "seen.txt"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER.format(repo=str(REPO), patch=PATCH, log=str(log), kill_at=3, data=str(data), out=str(out)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    first = subprocess.run([sys.executable, str(script), "fresh", str(out)], cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    last = out / "checkpoints" / "last.ckpt"
    assert last.is_file()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 and ckpt["epoch"] == 0  # the mid-epoch checkpoint (every 2 steps)
    log.write_text("")

    second = subprocess.run([sys.executable, str(script), "resume", str(out)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 10 and ckpt["epoch"] == 1  # 2 epochs x 5 batches, none repeated or lost
    # the resumed run picked up the epoch's order where the checkpoint was taken (after 2 batches)
    seen = [int(x) for x in log.read_text().split()]
    sampler = EpochSampler(18, seed=0)
    assert seen[:10] == sampler.order(0)[8:] and seen[10:] == sampler.order(1)
    # the logs continue in the same CSV: validation rows for both epochs
    import pandas as pd

    assert (out / "logs" / "csv-resume1" / "metrics.csv").is_file()
    metrics = pd.read_csv(out / "logs" / "metrics.csv")
    assert sorted(metrics.dropna(subset=["val/macro_f1"])["epoch"].unique().tolist()) == [0, 1]
    assert (out / "config.json").is_file()
    # ... and the weights are those of a run never stopped, bit for bit
    plain = subprocess.run([sys.executable, str(script), "plain", str(tmp_path / "plain")], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-3000:]
    _assert_bit_identical(_final_state(tmp_path / "plain"), _final_state(out))


class Interrupt(Exception):
    pass


class StopAt(L.Callback):
    """Raises after optimizer step N: the run stops mid-epoch with its last checkpoint behind it."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.step:
            raise Interrupt(f"stopped after step {self.step}")


@pytest.mark.reliability
@pytest.mark.parametrize("augment,workers,every,stop_at,resumed_from", [
    ("standard", 0, 2, 3, 2),  # killed in epoch 0, resumed from the checkpoint of step 2 (mid-epoch)
    ("standard", 2, 0, 7, 5),  # killed in epoch 1, resumed from the end of epoch 0; two loader workers
    ("patch", 1, 2, 9, 8),  # six views per image, one worker; resumed mid-epoch from step 8
], ids=["mid-epoch", "epoch-end-2-workers", "patch-1-worker"])
def test_interrupted_and_resumed_run_ends_bit_identical(tmp_path, tiny_backbone_registry, augment, workers, every,
                                                        stop_at, resumed_from):
    import random

    from artlens.train.finetune import run_finetune

    data = make_dataset(tmp_path / "data", per_class=12 if augment != "patch" else 3)
    extra = {**RANDOM, "finetune.augment": augment, "finetune.num_workers": workers,
             "finetune.checkpoint_every_n_steps": every, "finetune.loggers": []}
    run_finetune(recipe_for(data, tmp_path / "plain", **extra), tmp_path / "plain")

    out = tmp_path / "stopped"
    recipe = recipe_for(data, out, **extra)
    with pytest.raises(Interrupt):
        run_finetune(recipe, out, callbacks=[StopAt(stop_at)])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    loader = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]
    assert ckpt["global_step"] == resumed_from and loader["epoch_finished"] == (every == 0), loader
    assert "RngState" in ckpt["callbacks"]
    # a new process starts with other random state
    torch.manual_seed(123), np.random.seed(123), random.seed(123)
    run_finetune(recipe, out, resume=True)
    _assert_bit_identical(_final_state(tmp_path / "plain"), _final_state(out))
    if workers > 1:  # what a batch holds does not depend on the loader's worker processes
        run_finetune(recipe_for(data, tmp_path / "plain0", **{**extra, "finetune.num_workers": 0}), tmp_path / "plain0")
        _assert_bit_identical(_final_state(tmp_path / "plain"), _final_state(tmp_path / "plain0"))


def test_fresh_run_refuses_an_existing_run_and_resume_needs_one(tmp_path, tiny_backbone_registry):
    from artlens.train.finetune import run_finetune

    data = make_dataset(tmp_path / "data", per_class=4)
    recipe = recipe_for(data, tmp_path / "r")
    with pytest.raises(FileNotFoundError, match="no checkpoint to resume"):
        run_finetune(recipe, tmp_path / "r", resume=True)
    (tmp_path / "r" / "checkpoints").mkdir(parents=True)
    (tmp_path / "r" / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="--resume"):
        run_finetune(recipe, tmp_path / "r")


class Indices(torch.utils.data.Dataset):
    """Hands back the index part of the sampler's `(epoch, index)` pairs."""

    def __len__(self):
        return 10

    def __getitem__(self, pair):
        return pair[1]


def test_loader_state_resumes_mid_epoch_and_after_an_epoch():
    from artlens.train.finetune import EpochSampler, ResumableLoader, collate_skip_bad

    ds = Indices()
    done = {"n": 0}
    loader = ResumableLoader(ds, sampler=EpochSampler(10, seed=3), progress=lambda: (done["n"], False), batch_size=3)
    loader.sampler.set_epoch(1)
    full = [b.tolist() for b in loader]
    done["n"] = 2  # two batches processed when the checkpoint was taken
    state = loader.state_dict()
    assert state == {"epoch": 1, "batches_done": 2, "batch_size": 3, "epoch_finished": False}
    fresh = ResumableLoader(ds, sampler=EpochSampler(10, seed=3), batch_size=3)
    fresh.load_state_dict(state)
    assert [b.tolist() for b in fresh] == full[2:]
    assert [b.tolist() for b in fresh] == full  # only the resumed epoch is shortened
    # a checkpoint from the end of epoch 1 starts epoch 2 from its beginning
    end = ResumableLoader(ds, sampler=EpochSampler(10, seed=3), batch_size=3)
    end.load_state_dict({"epoch": 1, "batches_done": 4, "batch_size": 3})
    assert end.sampler.epoch == 2 and sum(len(b) for b in end) == 10
    # ... also when the epoch was limited to fewer batches (limit_train_batches)
    end.load_state_dict({"epoch": 1, "batches_done": 2, "batch_size": 3, "epoch_finished": True})
    assert end.sampler.epoch == 2 and sum(len(b) for b in end) == 10
    # unreadable samples are dropped from a batch; an all-bad batch is None
    assert collate_skip_bad([None, (torch.ones(1), torch.tensor([0]))])[0].shape == (1, 1)
    assert collate_skip_bad([None, None]) is None


def test_sample_augmentation_is_seeded_and_leaves_the_process_generators_alone():
    import random

    from artlens.train.finetune_data import sample_seed, seeded_rng

    assert sample_seed(0, 1, 5) == sample_seed(0, 1, 5)
    assert len({sample_seed(0, e, i) for e in range(3) for i in range(50)} | {sample_seed(1, 0, 0)}) == 151
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    expect = torch.rand(2), np.random.rand(2), random.random()
    torch.manual_seed(7), np.random.seed(7), random.seed(7)
    with seeded_rng(sample_seed(0, 0, 3)):
        first = torch.rand(3), np.random.rand(3), random.random()
    with pytest.raises(ZeroDivisionError), seeded_rng(sample_seed(0, 0, 3)):
        again = torch.rand(3), np.random.rand(3), random.random()
        1 / 0  # put back on an exception too
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    after = torch.rand(2), np.random.rand(2), random.random()
    assert torch.equal(after[0], expect[0]) and np.array_equal(after[1], expect[1]) and after[2] == expect[2]


@pytest.mark.reliability
def test_rng_state_roundtrips_and_a_crafted_one_is_refused_in_one_line(tmp_path):
    import random

    from artlens.train.finetune_checkpoints import CheckpointError, check_checkpoint, rng_state, set_rng_state

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    np.random.standard_normal()  # numpy's cached gaussian is part of its state
    state = rng_state()
    expect = torch.rand(3), np.random.rand(3), random.random()
    torch.manual_seed(2), np.random.seed(2), random.seed(2)
    set_rng_state(state)
    got = torch.rand(3), np.random.rand(3), random.random()
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2] == expect[2]

    def ckpt(rng) -> Path:
        path = tmp_path / "last.ckpt"
        torch.save({"state_dict": {}, "epoch": 0, "global_step": 1, "callbacks": {"RngState": rng}}, path)
        return path

    assert check_checkpoint(ckpt(state))["global_step"] == 1
    for broken, field in [({**state, "torch": torch.zeros(3, dtype=torch.uint8)}, "torch"),
                          ({**state, "numpy": {**state["numpy"], "keys": torch.full((624,), -1)}}, "numpy.keys"),
                          ({**state, "python": {**state["python"], "state": torch.zeros(2, dtype=torch.int64)}}, "python.state"),
                          ("not a dict", "not a dict")]:
        with pytest.raises(CheckpointError) as err:
            check_checkpoint(ckpt(broken))
        msg = str(err.value)
        assert "\n" not in msg and "last.ckpt" in msg and "callbacks.RngState" in msg and field in msg, msg
