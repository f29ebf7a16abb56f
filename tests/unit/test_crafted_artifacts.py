"""Crafted artifacts (checkpoints, model configs, index and store metadata) are refused with the
artifact's own error type, one message naming the file and the field, never a traceback."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _deep(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


# --------------------------------------------------------------------------- fine-tune checkpoint
def test_garbage_checkpoint_is_refused_in_one_line(tmp_path):
    from artlens.train.finetune import CheckpointError, check_checkpoint

    last = tmp_path / "last.ckpt"
    last.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(last)
    msg = str(info.value)
    assert msg.startswith(f"{last}: not a valid checkpoint (") and "\n" not in msg


def test_checkpoint_with_code_is_refused_without_unsafe_advice(tmp_path):
    import os

    import torch

    from artlens.train.finetune import CheckpointError, check_checkpoint

    last = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "global_step": 0, "hook": os.getcwd}, last)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint(last)
    msg = str(info.value)
    assert str(last) in msg and "weights_only" not in msg and "\n" not in msg


def test_checkpoint_without_state_dict_names_the_field(tmp_path):
    import torch

    from artlens.train.finetune import CheckpointError, check_checkpoint

    last = tmp_path / "last.ckpt"
    torch.save({"epoch": 1, "global_step": 3}, last)
    with pytest.raises(CheckpointError, match="'state_dict'") as info:
        check_checkpoint(last)
    assert str(last) in str(info.value)


# --------------------------------------------------------------------------- model config.json
def _model_dir(tmp_path: Path, config_text: str) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(config_text, encoding="utf-8")
    (d / "model.safetensors").write_bytes(b"\0" * 16)
    return d


def test_deeply_nested_model_config(tmp_path):
    from artlens.models.artmodel import ModelFormatError, ArtModel

    d = _model_dir(tmp_path, '{"tasks": [], "format": ' + _deep() + "}")
    with pytest.raises(ModelFormatError) as info:
        ArtModel.load(d)
    assert str(d / "config.json") in str(info.value)


# --------------------------------------------------------------------------- FAISS index
@pytest.fixture
def index_dir(tmp_path):
    from artlens.retrieval.index import FaissIndex

    vectors = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
    return FaissIndex.build(vectors, backbone="resnet18", backbone_id="resnet18-x").save(tmp_path / "index")


def _edit_meta(directory: Path, **fields) -> None:
    meta = json.loads((directory / "meta.json").read_text())
    meta.update(fields)
    (directory / "meta.json").write_text(json.dumps(meta))


def test_index_meta_count_not_a_number(index_dir):
    from artlens.retrieval.index import FaissIndex, RetrievalError

    _edit_meta(index_dir, count="abc")
    with pytest.raises(RetrievalError, match="'count'") as info:
        FaissIndex.load(index_dir)
    assert str(index_dir / "meta.json") in str(info.value)


def test_index_meta_backbone_path_traversal(index_dir):
    from artlens.retrieval.index import FaissIndex, RetrievalError

    _edit_meta(index_dir, backbone="../../x")
    with pytest.raises(RetrievalError, match="'backbone'") as info:
        FaissIndex.load(index_dir)
    assert str(index_dir / "meta.json") in str(info.value)


def test_index_header_claiming_huge_vectors(index_dir):
    """d and the vector-data size field rewritten, checksum recomputed: refused before faiss
    allocates anything."""
    from artlens.retrieval.index import FaissIndex, RetrievalError

    path = index_dir / "index.faiss"
    data = bytearray(path.read_bytes())
    assert data[:4] == b"IxFI"
    struct.pack_into("<i", data, 4, 1 << 30)  # d
    struct.pack_into("<Q", data, 37, 10**10)  # number of floats of vector data
    path.write_bytes(bytes(data))
    _edit_meta(index_dir, sha256={"index.faiss": hashlib.sha256(data).hexdigest(),
                                  "rows.parquet": hashlib.sha256((index_dir / "rows.parquet").read_bytes()).hexdigest()})
    with pytest.raises(RetrievalError, match="dimension") as info:
        FaissIndex.load(index_dir)
    assert str(path) in str(info.value)

    _edit_meta(index_dir, dim=None)  # the size field alone is checked against the file too
    struct.pack_into("<i", data, 4, 8)
    path.write_bytes(bytes(data))
    _edit_meta(index_dir, sha256={"index.faiss": hashlib.sha256(data).hexdigest(),
                                  "rows.parquet": hashlib.sha256((index_dir / "rows.parquet").read_bytes()).hexdigest()})
    with pytest.raises(RetrievalError, match="vector data") as info:
        FaissIndex.load(index_dir)
    assert str(path) in str(info.value)


def test_index_header_with_stale_checksum(index_dir):
    from artlens.retrieval.index import FaissIndex, RetrievalError

    path = index_dir / "index.faiss"
    data = bytearray(path.read_bytes())
    struct.pack_into("<Q", data, 37, 10**10)
    path.write_bytes(bytes(data))
    with pytest.raises(RetrievalError, match="does not match meta.json") as info:
        FaissIndex.load(index_dir)
    assert str(path) in str(info.value)


def test_hnsw_index_still_loads(tmp_path):
    from artlens.retrieval.index import FaissIndex

    vectors = np.random.default_rng(1).normal(size=(20, 8)).astype(np.float32)
    saved = FaissIndex.build(vectors, kind="hnsw", backbone="resnet18").save(tmp_path / "hnsw")
    idx = FaissIndex.load(saved)
    assert len(idx) == 20 and idx.dim == 8


# --------------------------------------------------------------------------- embedding store
def test_store_info_backbone_path_traversal(tmp_path):
    from artlens.embed.store import StoreError, read_store_info

    (tmp_path / "backbone.json").write_text(json.dumps({"backbone_id": "resnet18-x", "backbone": "../../x", "dim": 8}))
    with pytest.raises(StoreError, match="'backbone'") as info:
        read_store_info(tmp_path)
    assert str(tmp_path / "backbone.json") in str(info.value)


def test_store_info_bad_dim_and_id(tmp_path):
    from artlens.embed.store import StoreError, read_store_info

    info_path = tmp_path / "backbone.json"
    info_path.write_text(json.dumps({"backbone_id": "resnet18-x", "dim": "abc"}))
    with pytest.raises(StoreError, match="'dim'"):
        read_store_info(tmp_path)
    info_path.write_text(json.dumps({"backbone_id": ["x"]}))
    with pytest.raises(StoreError, match="'backbone_id'") as info:
        read_store_info(tmp_path)
    assert str(info_path) in str(info.value)


def test_index_from_store_refuses_crafted_info(tmp_path):
    import pandas as pd

    from artlens.embed.store import StoreError
    from artlens.retrieval import index_from_store

    (tmp_path / "backbone.json").write_text(json.dumps({"backbone_id": "x", "backbone": "../../x"}))
    with pytest.raises(StoreError, match="'backbone'"):
        index_from_store(tmp_path, pd.DataFrame({"sha256": [], "path": []}))


def test_shard_count_not_a_number(tmp_path):
    from safetensors.numpy import save

    from artlens.embed.store import FORMAT, StoreError, read_shard

    keys = np.zeros((2, 32), np.uint8)
    vectors = np.ones((2, 4), np.float32)
    path = tmp_path / "shard-1.safetensors"
    path.write_bytes(save({"keys": keys, "vectors": vectors},
                          metadata={"format": FORMAT, "backbone_id": "b", "count": "abc", "dim": "4", "checksum": ""}))
    with pytest.raises(StoreError, match="'count'"):
        read_shard(path, "b")


# --------------------------------------------------------------------------- the CLI, one line each
def _cli(*args):
    from typer.testing import CliRunner

    from artlens.cli import app

    res = CliRunner(env={"COLUMNS": "300"}).invoke(app, [str(a) for a in args], catch_exceptions=True)
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert "Traceback" not in res.stdout + res.stderr
    return res


def test_cli_similar_with_crafted_index(index_dir, tmp_path):
    _edit_meta(index_dir, count="abc")
    image = tmp_path / "q.png"
    Image.new("RGB", (16, 16), "red").save(image)
    res = _cli("similar", index_dir, image)
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "meta.json" in lines[0] and "'count'" in lines[0], res.stderr


def test_cli_predict_with_deeply_nested_config(tmp_path):
    d = _model_dir(tmp_path, '{"tasks": [], "format": ' + _deep() + "}")
    image = tmp_path / "q.png"
    Image.new("RGB", (16, 16), "red").save(image)
    res = _cli("predict", "--model", d, image)
    assert res.exit_code == 1
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "config.json" in lines[0], res.stderr


def test_cli_train_resume_from_garbage_checkpoint(tmp_path, monkeypatch):
    import artlens.train.finetune as ft
    from tests.unit.test_train_finetune import TinySpec, make_dataset, tiny_backbone

    monkeypatch.setattr(ft, "_create_backbone", tiny_backbone)
    monkeypatch.setattr(ft, "_get_spec", lambda name: TinySpec())
    data = make_dataset(tmp_path / "data", per_class=4)
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    last = out / "checkpoints" / "last.ckpt"
    last.write_bytes(np.random.default_rng(0).bytes(2048))
    res = _cli("train", "--mode", "finetune", "--data", data, "--tasks", "style", "--out", out, "--backbone", "tiny",
               "--set", "backbone.pretrained=false", "--set", "finetune.num_workers=0", "--set", "finetune.progress=none",
               "--resume")
    assert res.exit_code == 1
    hits = [ln for ln in res.stderr.splitlines() if "last.ckpt" in ln]
    assert len(hits) == 1 and "not a valid checkpoint" in hits[0] and "weights_only" not in res.stderr, res.stderr
