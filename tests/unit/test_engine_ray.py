"""`--engine ray` on a local Ray instance: the local engine's answers and store, bad files one line
each, a killed actor's batches retried. Skipped where the ray extra is not installed."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from artlens.engine import RayOptions

EXAMPLES = Path(__file__).resolve().parents[2] / "src" / "artlens" / "examples"
OPTIONS = RayOptions(workers=2, batch_size=3, object_store_mb=256)


@pytest.fixture(scope="module")
def local_ray(clip_weights):
    """One local Ray (2 CPUs, no dashboard, 256 MB object store) for the module's tests."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install -e '.[ray]')")
    pytest.importorskip("ray.data")
    from artlens.engine.cluster import connect

    connect(OPTIONS)
    yield OPTIONS
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """The shipped examples, a few generated images and two files that are not images."""
    root = tmp_path_factory.mktemp("images")
    for f in sorted(EXAMPLES.glob("*.jpg")):
        shutil.copy(f, root / f.name)
    for i in range(7):
        make_image(root / f"gen{i}.png", size=(96, 64), seed=i)
    (root / "broken.jpg").write_bytes(b"this is text, not a jpeg")
    (root / "empty.png").write_bytes(b"")
    return root


BAD = {"broken.jpg", "empty.png"}


def make_image(path: Path, size=(96, 64), seed=0) -> None:
    from PIL import Image

    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8), "RGB").save(path)


def _assert_same_answers(ray_rows: list[dict], local_rows: list[dict]) -> None:
    assert [r["path"] for r in ray_rows] == [r["path"] for r in local_rows]  # same rows, same order
    for a, b in zip(ray_rows, local_rows):
        assert a["error"] == b["error"], a["path"]
        assert set(a["tasks"]) == set(b["tasks"]), a["path"]
        for task, ra in a["tasks"].items():
            rb = b["tasks"][task]
            assert (ra["label"], ra["unsure"]) == (rb["label"], rb["unsure"]), (a["path"], task, ra, rb)
            assert [t["label"] for t in ra["top"]] == [t["label"] for t in rb["top"]], (a["path"], task)
            np.testing.assert_allclose([t["prob"] for t in ra["top"]], [t["prob"] for t in rb["top"]], atol=1e-3)


def _skipped_lines(stderr: str, name: str) -> list[str]:
    return [line for line in stderr.splitlines() if name in line]


def test_predict_cli_ray_matches_local_and_reports_bad_files_once(local_ray, folder, tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import EXIT_PARTIAL, app
    from artlens.predict import Predictor, expand_inputs

    run = CliRunner().invoke(app, ["predict", str(folder), "--engine", "ray", "--workers", "2", "--batch-size", "3",
                                   "--json", "--csv", str(tmp_path / "ray.csv")])
    assert run.exit_code == EXIT_PARTIAL, run.output  # finished, two inputs unreadable
    ray_rows = [json.loads(line) for line in run.stdout.splitlines()]
    local_rows = Predictor().predict_paths(expand_inputs([folder]), batch_size=3)
    assert len(ray_rows) == 14
    _assert_same_answers(ray_rows, local_rows)
    for name in BAD:
        lines = _skipped_lines(run.stderr, name)
        assert len(lines) == 1 and lines[0].startswith("skipped"), (name, run.stderr)
    # the CSV has the local engine's columns
    local_csv = CliRunner().invoke(app, ["predict", str(folder), "--json", "--csv", str(tmp_path / "local.csv")])
    with open(tmp_path / "ray.csv", encoding="utf-8") as a, open(tmp_path / "local.csv", encoding="utf-8") as b:
        ray_csv, loc_csv = list(csv.DictReader(a)), list(csv.DictReader(b))
    assert local_csv.exit_code == EXIT_PARTIAL
    assert list(ray_csv[0]) == list(loc_csv[0])
    assert [(r["path"], r["style"], r["origin"]) for r in ray_csv] == [(r["path"], r["style"], r["origin"]) for r in loc_csv]


def test_predict_ray_model_that_cannot_load_is_one_error(local_ray, tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import EXIT_ERROR, app
    from artlens.models.artmodel import ArtModel

    cfg = {"format": "artlens-model", "version": 1, "mode": "probe", "backbone": {"name": "mean-colour", "feature_dim": 3},
           "tasks": [{"name": "colour", "labels": ["red", "green", "blue"], "threshold": 0.0}]}
    ArtModel(cfg, {"heads.colour.0.weight": np.eye(3, dtype=np.float32), "heads.colour.0.bias": np.zeros(3, np.float32)}
             ).save(tmp_path / "model")
    shutil.copy(next(EXAMPLES.glob("*.jpg")), tmp_path / "a.jpg")
    run = CliRunner().invoke(app, ["predict", str(tmp_path / "a.jpg"), "--engine", "ray", "--model", str(tmp_path / "model")])
    assert run.exit_code == EXIT_ERROR, run.output
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cannot load the model on the Ray workers" in errors[0], run.stderr


def test_predict_ray_cuda_on_a_cluster_without_gpus_is_one_error(local_ray, tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import EXIT_ERROR, app

    shutil.copy(next(EXAMPLES.glob("*.jpg")), tmp_path / "a.jpg")
    run = CliRunner().invoke(app, ["predict", str(tmp_path / "a.jpg"), "--engine", "ray", "--device", "cuda"])
    assert run.exit_code == EXIT_ERROR, run.output
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "the Ray cluster has no GPU" in errors[0], run.stderr


def test_engine_options_are_usage_errors_without_ray():
    from typer.testing import CliRunner

    from artlens.cli import EXIT_USAGE, app

    for args in (["predict", "x.jpg", "--engine", "spark"], ["predict", "x.jpg", "--address", "auto"],
                 ["predict", "x.jpg", "--workers", "3"], ["index", "x", "--workers", "3"], ["index", "x", "--address", "auto"],
                 ["index", "x", "--engine", "spark"]):
        run = CliRunner().invoke(app, args)
        assert run.exit_code == EXIT_USAGE, (args, run.output)


def test_engine_ray_without_ray_installed_is_one_error(tmp_path, monkeypatch):
    import sys

    from typer.testing import CliRunner

    from artlens.cli import EXIT_ERROR, app

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    shutil.copy(next(EXAMPLES.glob("*.jpg")), tmp_path / "a.jpg")
    for cmd in (["predict", str(tmp_path / "a.jpg")], ["embed", str(tmp_path / "a.jpg"), "--store", str(tmp_path / "s")],
                ["index", str(tmp_path), "--out", str(tmp_path / "i"), "--store", str(tmp_path / "s")]):
        run = CliRunner().invoke(app, [*cmd, "--engine", "ray"])
        assert run.exit_code == EXIT_ERROR, run.output
        errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and "pip install 'artlens[ray]'" in errors[0], run.stderr


def test_embed_cli_ray_fills_the_same_store_and_a_rerun_computes_nothing(local_ray, folder, tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import EXIT_PARTIAL, app
    from artlens.embed import embed_manifest

    files = sorted(str(p) for p in folder.iterdir())
    manifest = tmp_path / "rows.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as fh:  # no sha256 column: hashed on Ray
        csv.writer(fh).writerows([["path"], *([f] for f in files), [str(folder / "missing.jpg")]])
    store, out = tmp_path / "store", tmp_path / "out"
    args = ["embed", str(manifest), "--engine", "ray", "--workers", "2", "--batch-size", "3", "--store", str(store),
            "--out", str(out), "--json"]
    run = CliRunner().invoke(app, args)
    assert run.exit_code == EXIT_PARTIAL, run.output
    summary = json.loads(run.stdout)
    assert (summary["rows"], summary["embedded_rows"], summary["failed"]) == (15, 12, 3)
    assert summary["computed"] == 12 and summary["reused"] == 0
    for name in (*BAD, "missing.jpg"):
        assert len(_skipped_lines(run.stderr, name)) == 1, (name, run.stderr)

    # the local engine's vectors, from a store of its own
    local = embed_manifest(files, "clip-vit-b16", store_root=tmp_path / "local-store", batch_size=3, workers=0, progress=False)
    import pandas as pd

    vectors = np.load(out / "vectors.npy")
    ok = local.ok_mask
    assert ok.sum() == 12 and len(vectors) == 12
    assert list(pd.read_parquet(out / "rows.parquet")["path"]) == [f for f, good in zip(files, ok) if good]
    cos = np.sum(vectors * local.vectors[ok], axis=1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(local.vectors[ok], axis=1))
    assert cos.min() >= 0.9999, cos

    run = CliRunner().invoke(app, args)  # a rerun: everything is in the store
    again = json.loads(run.stdout)
    assert (again["computed"], again["reused"], again["embedded_rows"]) == (0, 12, 12), again


def test_index_cli_ray_writes_the_local_index_and_a_rerun_embeds_only_new_files(local_ray, folder, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    import artlens.embed
    from artlens.cli import EXIT_PARTIAL, app
    from artlens.retrieval import FaissIndex

    def no_local_engine(*args, **kwargs):
        raise AssertionError("--engine ray embedded in this process")

    source = tmp_path / "collection"
    shutil.copytree(folder, source)
    ray_out, local_out = tmp_path / "ray-index", tmp_path / "local-index"
    args = ["index", str(source), "--engine", "ray", "--workers", "2", "--batch-size", "3", "--out", str(ray_out),
            "--store", str(tmp_path / "ray-store"), "--json"]
    monkeypatch.setattr(artlens.embed, "embed_manifest", no_local_engine)
    run = CliRunner().invoke(app, args)
    assert run.exit_code == EXIT_PARTIAL, run.output  # finished, two files unreadable
    summary = json.loads(run.stdout)
    assert (summary["count"], summary["added"], summary["kept"], summary["failed"]) == (12, 12, 0, 2), summary
    for name in BAD:  # one line each, never fatal
        lines = _skipped_lines(run.stderr, name)
        assert len(lines) == 1 and lines[0].startswith("left out"), (name, run.stderr)

    monkeypatch.undo()
    local = CliRunner().invoke(app, ["index", str(source), "--out", str(local_out), "--store", str(tmp_path / "local-store"),
                                     "--batch-size", "3", "--json"])
    assert local.exit_code == EXIT_PARTIAL, local.output
    a, b = FaissIndex.load(ray_out), FaissIndex.load(local_out)
    assert (a.backbone_id, a.default_mode, a.modes, a.kind) == (b.backbone_id, b.default_mode, b.modes, b.kind)
    assert list(a.rows["path"]) == list(b.rows["path"]) and list(a.rows["sha256"]) == list(b.rows["sha256"])
    fa, fb = a.features(list(range(len(a)))), b.features(list(range(len(b))))
    cos = np.sum(fa * fb, axis=1) / (np.linalg.norm(fa, axis=1) * np.linalg.norm(fb, axis=1))
    assert cos.min() >= 0.9999, cos
    for i in range(len(a)):  # the same neighbours in the default mode
        assert [n.id for n in a.neighbours(fa[i], 4)] == [n.id for n in b.neighbours(fb[i], 4)], i

    monkeypatch.setattr(artlens.embed, "embed_manifest", no_local_engine)
    run = CliRunner().invoke(app, args)  # a rerun: nothing to embed, nothing to write
    again = json.loads(run.stdout)
    assert (again["added"], again["kept"], again["removed"], again["written"]) == (0, 12, 0, False), again
    make_image(source / "new.png", size=(80, 72), seed=99)
    (source / "gen0.png").unlink()
    run = CliRunner().invoke(app, args)  # one new file embedded on Ray, one removed
    again = json.loads(run.stdout)
    assert (again["count"], again["added"], again["kept"], again["removed"]) == (12, 1, 11, 1), again


def _descends_from(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                pid = int(fh.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
    return False


def _model_actor_pids() -> list[int]:
    """Processes of this test's own Ray instance that hold a predict actor (found by their title)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                title = fh.read().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if title.startswith("ray::") and "PredictWorker" in title and _descends_from(int(entry), os.getpid()):
            pids.append(int(entry))
    return pids


@pytest.mark.reliability
def test_killed_actor_mid_run_still_answers_every_image(local_ray, folder, tmp_path):
    from artlens.engine import ray_iter_predict
    from artlens.predict import Predictor, expand_inputs

    for i in range(7, 25):
        make_image(tmp_path / f"more{i}.png", size=(96, 64), seed=i)
    files = expand_inputs([folder, tmp_path])
    killed: list[int] = []

    def kill_one_when_busy() -> None:  # as soon as an actor is up, kill -9 it (batches remain)
        deadline = time.monotonic() + 60
        while not killed and time.monotonic() < deadline:
            pids = _model_actor_pids()
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                killed.append(pids[0])
            time.sleep(0.2)

    options = RayOptions(workers=2, batch_size=2, object_store_mb=256)
    rows = []
    for row in ray_iter_predict(files, options=options):
        rows.append(row)
        if len(rows) == 1:  # the first answers are in: the actors are working through the rest
            killer = threading.Thread(target=kill_one_when_busy)
            killer.start()
            killer.join()
    assert killed, "no model actor was found to kill"
    assert killed[0] not in _model_actor_pids()  # it did die (and was restarted in another process)
    assert len(rows) == len(files) == 32
    local_rows = Predictor().predict_paths(files, batch_size=2)
    _assert_same_answers(rows, local_rows)
