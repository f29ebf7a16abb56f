"""The embedding store and embed_manifest: reuse, corruption, bad files, kill -9 and Ctrl-C, timed flushes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artlens.embed import EmbeddingStore, Encoder, embed_manifest, file_sha256, l2_normalize
from artlens.embed.export import load_embeddings, save_embeddings
from artlens.embed.store import StoreError, read_shard

DIM = 8
_W = np.random.default_rng(0).standard_normal((3 * 4 * 4, DIM)).astype(np.float32)


def make_image(path: Path, size=(16, 16), seed=0) -> Path:
    arr = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def tiny_preprocess(img) -> np.ndarray:
    return (np.asarray(img.convert("RGB").resize((4, 4)), dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()


class FakeEncoder(Encoder):
    """A deterministic 8-d encoder that records what it embeds."""

    name = "fake"
    dim = DIM

    def __init__(self, backbone_id: str = "fake-v1"):
        self.backbone_id = backbone_id
        self.preprocess = tiny_preprocess
        self.embedded = 0
        self.calls = 0

    def embed_batch(self, batch):
        self.calls += 1
        self.embedded += len(batch)
        return l2_normalize(batch.reshape(len(batch), -1) @ _W)


@pytest.fixture
def images(tmp_path):
    return [make_image(tmp_path / "img" / f"{i:02d}.png", size=(20 + i, 16), seed=i) for i in range(12)]


def manifest(paths) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(p) for p in paths], "sha256": [file_sha256(str(p)) for p in paths]})


# --------------------------------------------------------------------------- store
def test_store_roundtrip_and_missing_rows_are_nan(tmp_path):
    hashes = [f"{i:064x}" for i in range(5)]
    vecs = l2_normalize(np.random.default_rng(1).standard_normal((5, DIM)))
    with EmbeddingStore(tmp_path, "b1", shard_size=2) as store:
        for i in range(5):
            store.add(hashes[i : i + 1], vecs[i : i + 1])
    assert len(store.shards) == 3  # 2 + 2 written by add, 1 by the flush on exit
    again = EmbeddingStore(tmp_path, "b1")
    got, found = again.get(hashes[::-1] + ["f" * 64])
    assert found.tolist() == [True] * 5 + [False]
    np.testing.assert_array_equal(got[:5], vecs[::-1])
    assert np.isnan(got[5]).all()
    assert len(again) == 5 and hashes[0] in again and "e" * 64 not in again
    # another backbone id sees nothing
    assert not EmbeddingStore(tmp_path, "b2").get(hashes)[1].any()


def test_store_rejects_bad_input(tmp_path):
    store = EmbeddingStore(tmp_path, "b1", dim=DIM)
    with pytest.raises(StoreError, match="not a hex SHA-256"):
        store.add(["xyz"], np.zeros((1, DIM)))
    with pytest.raises(StoreError, match="dimension"):
        store.add(["a" * 64], np.zeros((1, DIM + 1)))


def test_truncated_or_altered_shards_are_ignored(tmp_path):
    store = EmbeddingStore(tmp_path, "b1", shard_size=3)
    hashes = [f"{i:064x}" for i in range(9)]
    for i in range(0, 9, 3):
        store.add(hashes[i : i + 3], l2_normalize(np.ones((3, DIM))))
    s1, s2, s3 = store.shards
    data = s1.read_bytes()
    s1.write_bytes(data[: len(data) // 2])  # truncated (torn write)
    raw = bytearray(s2.read_bytes())
    raw[-5] ^= 0xFF  # one flipped bit pattern inside the vectors
    s2.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="checksum"):
        read_shard(s2, "b1")

    again = EmbeddingStore(tmp_path, "b1")
    _, found = again.get(hashes)
    assert found.tolist() == [False] * 6 + [True] * 3
    assert len(again.invalid) == 2
    assert sorted(p.name for p in again.dir.glob("*.corrupt")) == sorted([s1.name + ".corrupt", s2.name + ".corrupt"])


def test_shard_of_another_backbone_is_not_read(tmp_path):
    a = EmbeddingStore(tmp_path, "a")
    a.add(["1" * 64], np.ones((1, DIM)))
    path = a.flush()
    b = EmbeddingStore(tmp_path, "b")
    b.dir.mkdir(parents=True)
    os.replace(path, b.dir / path.name)  # a shard filed under the wrong backbone
    b.refresh()
    assert not b.get(["1" * 64])[1].any()
    assert "belongs to backbone 'a'" in b.invalid[0][1]


def test_two_writers_share_one_store(tmp_path):
    a, b = EmbeddingStore(tmp_path, "b1"), EmbeddingStore(tmp_path, "b1")
    a.add(["a" * 64], np.ones((1, DIM)))
    b.add(["b" * 64], np.full((1, DIM), 2.0))
    a.flush(), b.flush()
    assert len(a.shards) == 2
    assert not a.get(["b" * 64])[1].any()  # not seen until it looks again
    a.refresh()
    got, found = a.get(["a" * 64, "b" * 64])
    assert found.all() and got[1, 0] == 2.0
    with pytest.raises(StoreError, match="dimension"):
        EmbeddingStore(tmp_path, "b1", dim=DIM + 1)


@pytest.mark.reliability
def test_autoflush_writes_queued_vectors_on_a_timer(tmp_path):
    store = EmbeddingStore(tmp_path, "b1")  # shard_size 256: three vectors never fill a shard
    hashes = [f"{i:064x}" for i in range(3)]
    store.add(hashes, np.ones((3, DIM)))
    time.sleep(0.3)
    assert not store.shards  # without the timer they wait in memory
    with store.autoflush(0.05):
        assert _wait_for(lambda: len(store.shards) == 1, timeout=10)
        assert EmbeddingStore(tmp_path, "b1").contains(hashes).all()  # readable by another process
        store.add([f"{9:064x}"], np.ones((1, DIM)))
        assert _wait_for(lambda: len(store.shards) == 2, timeout=10)
    # adding from one thread while the timer flushes from another loses nothing
    many = [f"{i + 100:064x}" for i in range(2000)]
    with store.autoflush(0.001):
        for h in many:
            store.add([h], np.full((1, DIM), 3.0))
    assert not store._pending
    got, found = EmbeddingStore(tmp_path, "b1").get(many)
    assert found.all() and (got == 3.0).all()


def test_compact_merges_shards_and_keeps_every_vector(tmp_path):
    store = EmbeddingStore(tmp_path, "b1", shard_size=1)
    hashes = [f"{i:064x}" for i in range(6)]
    vecs = l2_normalize(np.random.default_rng(2).standard_normal((6, DIM)))
    for i in range(6):
        store.add(hashes[i : i + 1], vecs[i : i + 1])
    store.add(hashes[:2], vecs[:2])  # duplicates are fine
    assert len(store.shards) == 7
    store.compact()
    assert len(store.shards) == 1
    got, found = EmbeddingStore(tmp_path, "b1").get(hashes)
    assert found.all()
    np.testing.assert_array_equal(got, vecs)


# --------------------------------------------------------------------------- embed_manifest
@pytest.mark.parametrize("workers", [0, 2])
def test_second_run_computes_nothing(tmp_path, images, workers):
    df = manifest(images)
    enc = FakeEncoder()
    vecs, ok, errors = embed_manifest(df, enc, store_root=tmp_path / "store", batch_size=5, workers=workers, progress=False)
    assert ok.all() and errors.empty and enc.embedded == 12
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-5)

    enc2 = FakeEncoder()
    res = embed_manifest(df, enc2, store_root=tmp_path / "store", batch_size=5, workers=workers, progress=False)
    assert enc2.embedded == 0 and res.stats.computed == 0 and res.stats.reused == 12
    np.testing.assert_array_equal(res.vectors, vecs)
    # the vectors are the encoder's, in row order
    expected = enc.embed_images([Image.open(p) for p in images])
    np.testing.assert_allclose(vecs, expected, atol=1e-6)


def test_corrupt_shard_is_recomputed(tmp_path, images):
    df = manifest(images)
    first, _, _ = embed_manifest(df, FakeEncoder(), store_root=tmp_path, batch_size=4, workers=0, progress=False, shard_size=4)
    store = EmbeddingStore(tmp_path, "fake-v1")
    victim = store.shards[0]
    victim.write_bytes(victim.read_bytes()[:-10])
    enc = FakeEncoder()
    res = embed_manifest(df, enc, store_root=tmp_path, batch_size=4, workers=0, progress=False, shard_size=4)
    assert enc.embedded == 4 and res.stats.computed == 4 and res.stats.reused == 8
    assert len(res.stats.shards_ignored) == 1
    np.testing.assert_allclose(res.vectors, first, atol=1e-6)


def test_bad_files_are_reported_and_the_rest_goes_on(tmp_path, images):
    junk = tmp_path / "img" / "junk.jpg"
    junk.write_text("<html>not an image</html>")
    empty = tmp_path / "img" / "empty.png"
    empty.write_bytes(b"")
    paths = [images[0], junk, tmp_path / "nope.jpg", images[1], empty]
    enc = FakeEncoder()
    vecs, ok, errors = embed_manifest([str(p) for p in paths], enc, store_root=tmp_path / "s", workers=2, progress=False)
    assert ok.tolist() == [True, False, False, True, False]
    assert np.isnan(vecs[~ok]).all() and np.isfinite(vecs[ok]).all()
    reasons = dict(zip(errors.path, errors.reason))
    assert set(reasons) == {str(junk), str(tmp_path / "nope.jpg"), str(empty)}
    assert reasons[str(tmp_path / "nope.jpg")] == "file not found"
    assert all(reasons.values())


def test_paths_without_hashes_and_duplicate_content(tmp_path, images):
    dup = tmp_path / "copy.png"
    dup.write_bytes(images[3].read_bytes())
    enc = FakeEncoder()
    res = embed_manifest([str(p) for p in images] + [str(dup)], enc, store_root=tmp_path / "s", workers=0, progress=False)
    assert res.ok_mask.all()
    assert enc.embedded == 12  # the copy is the same content: computed once
    np.testing.assert_array_equal(res.vectors[-1], res.vectors[3])
    assert res.hashes[-1] == res.hashes[3] == file_sha256(str(dup))


def test_work_saved_by_another_process_meanwhile_is_not_repeated(tmp_path, images):
    df = manifest(images)
    other = EmbeddingStore(tmp_path, "fake-v1")
    reference = FakeEncoder().embed_images([Image.open(p) for p in images])

    class Racing(FakeEncoder):
        def embed_batch(self, batch):
            if self.calls == 0:  # meanwhile, another process stores every image
                other.add(list(df.sha256), reference)
                other.flush()
            return super().embed_batch(batch)

    enc = Racing()
    res = embed_manifest(df, enc, store_root=tmp_path, batch_size=2, prefetch=1, workers=0, progress=False, refresh_s=0.0)
    # the batch being embedded and the two already handed to the decoders are finished; the
    # other 6 images are taken from the store
    assert enc.embedded == 6
    assert res.stats.computed == 6 and res.stats.reused == 6 and res.ok_mask.all()
    np.testing.assert_allclose(res.vectors, reference, atol=1e-6)


def test_new_backbone_id_recomputes(tmp_path, images):
    df = manifest(images[:3])
    embed_manifest(df, FakeEncoder("fake-v1"), store_root=tmp_path, workers=0, progress=False)
    enc = FakeEncoder("fake-v2")
    embed_manifest(df, enc, store_root=tmp_path, workers=0, progress=False)
    assert enc.embedded == 3


def test_export_formats_roundtrip(tmp_path):
    rows = pd.DataFrame({"path": ["a", "b"], "style": ["x", None]})
    vecs = np.arange(2 * DIM, dtype=np.float32).reshape(2, DIM)
    for target in (tmp_path / "v.npy", tmp_path / "v.parquet", tmp_path / "dir"):
        save_embeddings(target, rows, vecs, {"backbone_id": "b"})
        r, v, info = load_embeddings(target)
        np.testing.assert_array_equal(v, vecs)
        assert r["path"].tolist() == ["a", "b"] and info["backbone_id"] == "b" and info["dim"] == DIM


# --------------------------------------------------------------------------- interruption
DRIVER = textwrap.dedent(
    """
    import signal, sys, time
    import numpy as np
    import pandas as pd
    from artlens.embed import Encoder, embed_manifest, l2_normalize

    # Ctrl-C as in a terminal: a test run started in the background (`cmd &` in a script) hands its
    # children SIGINT ignored, and Python then never raises KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.default_int_handler)

    store, listing, log, block_at = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    flush_s = None if sys.argv[5] == "none" else float(sys.argv[5])
    shard_size = int(sys.argv[6])
    W = np.random.default_rng(0).standard_normal((48, 8)).astype(np.float32)

    def pre(img):
        return (np.asarray(img.convert("RGB").resize((4, 4)), dtype=np.float32) / 255.0).transpose(2, 0, 1).copy()

    class Blocking(Encoder):
        name, dim, backbone_id = "fake", 8, "fake-v1"
        preprocess = staticmethod(pre)
        done = 0
        def embed_batch(self, batch):
            if block_at and self.done >= block_at:  # park here until the test interrupts us
                open(log + ".blocked", "w").close()
                time.sleep(600)
            self.done += len(batch)
            with open(log, "a") as fh:  # one line per embedded image
                fh.write("x\\n" * len(batch))
            return l2_normalize(batch.reshape(len(batch), -1) @ W)

    df = pd.read_csv(listing)
    embed_manifest(df, Blocking(), store_root=store, batch_size=2, workers=1, progress=False, shard_size=shard_size,
                   flush_s=flush_s)
    """
)


def _run_driver(tmp_path, store, listing, log, block_at, flush_s="none", shard_size=4):
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    return subprocess.Popen([sys.executable, str(script), str(store), str(listing), str(log), str(block_at),
                             str(flush_s), str(shard_size)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, timeout=120.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["kill-9", "ctrl-c"])
def test_interrupted_run_resumes_without_recomputing(tmp_path, sig):
    paths = [make_image(tmp_path / "img" / f"{i:02d}.png", size=(12, 10), seed=i) for i in range(24)]
    listing = tmp_path / "m.csv"
    manifest(paths).to_csv(listing, index=False)
    store_root = tmp_path / "store"
    log1, log2 = tmp_path / "run1.log", tmp_path / "run2.log"

    # Batches of 2, a shard every 4 vectors: after 10 images two shards are on disk and 2 vectors
    # wait in memory; the driver then parks inside the encoder and gets the signal there.
    proc = _run_driver(tmp_path, store_root, listing, log1, block_at=10)
    assert _wait_for(lambda: Path(str(log1) + ".blocked").exists() or proc.poll() is not None), "driver never blocked"
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(sig)
    proc.wait(timeout=60)
    assert proc.returncode != 0  # it really was interrupted mid-run
    assert len(log1.read_text().splitlines()) == 10
    done = set(EmbeddingStore(store_root, "fake-v1").hashes())
    # kill -9 loses the 2 unsaved vectors; Ctrl-C saves them on the way out
    assert len(done) == (8 if sig == signal.SIGKILL else 10)
    assert not list(store_root.glob("*/.*.tmp")) and not list(store_root.glob("*/*.corrupt"))

    proc = _run_driver(tmp_path, store_root, listing, log2, block_at=0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert len(log2.read_text().splitlines()) == 24 - len(done)  # only the rest was computed

    clean = FakeEncoder()
    reference, _, _ = embed_manifest(manifest(paths), clean, store_root=tmp_path / "clean", workers=0, progress=False)
    resumed, found = EmbeddingStore(store_root, "fake-v1").get(manifest(paths).sha256)
    assert found.all()
    np.testing.assert_allclose(resumed, reference, atol=1e-6)


# --------------------------------------------------------------------------- CLI
def test_cli_embed_folder_writes_vectors_and_rows(tmp_path, images, monkeypatch):
    from typer.testing import CliRunner

    import artlens.embed.extract as extract
    from artlens.cli import app

    (tmp_path / "img" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    enc = FakeEncoder()
    monkeypatch.setattr(extract, "get_encoder", lambda *a, **k: enc)
    out = tmp_path / "out.npy"
    args = ["embed", str(tmp_path / "img"), "--backbone", "fake", "--store", str(tmp_path / "s"), "--out", str(out), "--json", "--workers", "0",
            "--batch-size", "8"]  # an unregistered backbone has no device default
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 2, res.output  # finished, one input failed
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["computed"] == 12 and summary["failed"] == 1
    assert summary["errors"][0]["path"].endswith("broken.jpg")
    rows, vecs, info = load_embeddings(out)
    assert len(rows) == len(vecs) == 12 and info["backbone_id"] == "fake-v1"
    np.testing.assert_allclose(vecs, enc.embed_images([Image.open(p) for p in rows.path]), atol=1e-6)

    res = CliRunner().invoke(app, args)
    assert json.loads(res.stdout.strip().splitlines()[-1])["computed"] == 0


@pytest.mark.parametrize("given, expected", [([], 30.0), (["--flush-every", "5"], 5.0), (["--flush-every", "0"], None)])
def test_cli_embed_passes_the_flush_interval(tmp_path, images, monkeypatch, given, expected):
    from typer.testing import CliRunner

    import artlens.embed as embed_pkg
    from artlens.cli import app

    seen = {}

    def fake(df, backbone, **kw):
        seen.update(kw)
        raise KeyboardInterrupt  # stop before any work; the CLI reports it and exits 1

    monkeypatch.setattr(embed_pkg, "embed_manifest", fake)
    res = CliRunner().invoke(app, ["embed", str(tmp_path / "img"), "--backbone", "mobilenet-v2", "--workers", "0", *given])
    assert res.exit_code == 1, res.output
    assert seen["flush_s"] == expected


@pytest.mark.reliability
@pytest.mark.parametrize("flush_s", ["0.2", "none"])
def test_kill_9_before_a_full_shard_keeps_what_the_timer_flushed(tmp_path, flush_s):
    """Fewer vectors than a shard, then kill -9 while the encoder works: with the timer every
    finished vector is on disk; without it (the control) none is."""
    paths = [make_image(tmp_path / "img" / f"{i:02d}.png", size=(12, 10), seed=i) for i in range(12)]
    listing = tmp_path / "m.csv"
    manifest(paths).to_csv(listing, index=False)
    store_root, log = tmp_path / "store", tmp_path / "run.log"
    proc = _run_driver(tmp_path, store_root, listing, log, block_at=6, flush_s=flush_s, shard_size=256)
    try:
        assert _wait_for(lambda: Path(str(log) + ".blocked").exists() or proc.poll() is not None), "driver never blocked"
        assert proc.poll() is None, proc.communicate()
        saved = lambda: len(EmbeddingStore(store_root, "fake-v1").hashes())  # noqa: E731
        if flush_s == "none":
            time.sleep(1.0)  # five timer periods
        else:
            assert _wait_for(lambda: saved() == 6, timeout=30)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert len(log.read_text().splitlines()) == 6  # six vectors finished before the kill
    assert saved() == (0 if flush_s == "none" else 6)
    assert not list(store_root.glob("*/.*.tmp"))
