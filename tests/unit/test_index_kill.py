"""`artlens index` killed with SIGKILL at random moments: a damaged or mixed index is never read
back as valid, and a rerun writes a good one.

Two drivers, both in subprocesses killed with `kill -9` at seeded random moments:
- the real `artlens index` command (a tiny stand-in encoder instead of CLIP, so a run takes about
  a second), rebuilding one index folder from two manifests of the same size in turn;
- a loop that saves two different indexes of the same size into one folder as fast as it can, so
  that kills land inside `FaissIndex.save` (between its files) most of the time.
After every kill the folder either fails to load with `RetrievalError` or loads as exactly one of
the complete indexes: every vector is the one of its row's image.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from artlens.retrieval import FaissIndex, RetrievalError

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]

INDEX_DRIVER = """
import sys
import artlens.embed, artlens.embed.extract
from tests.unit.test_retrieval import PixelEncoder
enc = PixelEncoder()
fake = lambda name, backbone_state=None, device="cpu", preprocessing=None: enc
artlens.embed.get_encoder = fake
artlens.embed.extract.get_encoder = fake
from artlens.cli import app
app(sys.argv[1:], prog_name="artlens")
"""

SAVE_DRIVER = """
import sys, numpy as np, pandas as pd
from artlens.retrieval import FaissIndex
out, n, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
indexes = []
for version in (0, 1):
    x = np.random.default_rng(version).normal(size=(n, dim)).astype(np.float32)
    rows = pd.DataFrame({"path": [f"v{version}/{i}" for i in range(n)], "version": version})
    indexes.append(FaissIndex.build(x, rows, backbone="toy", backbone_id="toy-1"))
print("ready", flush=True)
i = 0
while True:
    indexes[i % 2].save(out)
    i += 1
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _check(out: Path, expected) -> str:
    """'invalid' when the folder does not load, else the name of the complete index it holds."""
    try:
        idx = FaissIndex.load(out)
    except RetrievalError:
        return "invalid"
    return expected(idx)


def _gallery(root: Path, n: int) -> list[str]:
    from tests.conftest import make_image

    return [str(make_image(root / f"{i:03d}.png", size=(24, 20), seed=i)) for i in range(n)]


def test_index_command_killed_at_random_moments(tmp_path):
    from tests.unit.test_retrieval import PixelEncoder, _pixels
    from artlens.data.images import load_image

    n = 40
    paths = _gallery(tmp_path / "img", 2 * n)
    manifests = []
    for k in (0, 1):  # same size, different pictures: a mix of the two has the right counts
        m = tmp_path / f"m{k}.csv"
        pd.DataFrame({"path": paths[k * n : (k + 1) * n], "style": f"s{k}"}).to_csv(m, index=False)
        manifests.append(m)
    vec = {p: PixelEncoder().embed_batch(_pixels(load_image(p))[None])[0] for p in paths}
    script = tmp_path / "driver.py"
    script.write_text(INDEX_DRIVER)
    out, store = tmp_path / "index", tmp_path / "store"

    def command(k):
        return [sys.executable, str(script), "index", str(manifests[k]), "--backbone", "pixels", "--store", str(store),
                "--out", str(out), "--json"]

    def which(idx: FaissIndex) -> str:
        got = list(idx.rows["path"])
        k = 0 if got == paths[:n] else 1 if got == paths[n:] else None
        assert k is not None, f"rows of no complete build: {got[:3]}..."
        x = np.stack([idx.index.reconstruct(i) for i in range(len(idx))])
        np.testing.assert_allclose(x, np.stack([vec[p] for p in got]), atol=1e-5)  # vectors fit their rows
        return f"m{k}"

    for k in (1, 0):  # both manifests embedded once (the store is shared), the index left at m0
        first = subprocess.run(command(k), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
        assert first.returncode == 0, first.stderr[-2000:]
    assert _check(out, which) == "m0"
    t0 = time.monotonic()
    subprocess.run(command(0), cwd=REPO, env=_env(), capture_output=True, timeout=120)
    duration = time.monotonic() - t0  # of a run with every vector cached

    rng = random.Random(9)
    seen = []
    for attempt in range(5):
        proc = subprocess.Popen(command(1 - attempt % 2), cwd=REPO, env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, 1.0) * duration)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        seen.append(_check(out, which))  # invalid, m0 or m1: never a torn index
    # A clean rerun replaces whatever the kills left.
    last = subprocess.run(command(1), cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120)
    assert last.returncode == 0, last.stderr[-2000:]
    assert _check(out, which) == "m1", seen


def test_save_killed_between_its_files_never_reads_back_mixed(tmp_path):
    n, dim = 3000, 64
    script = tmp_path / "saver.py"
    script.write_text(SAVE_DRIVER)
    out = tmp_path / "idx"
    ref = {v: np.random.default_rng(v).normal(size=(n, dim)).astype(np.float32) for v in (0, 1)}
    for v in ref:
        ref[v] /= np.linalg.norm(ref[v], axis=1, keepdims=True)

    def which(idx: FaissIndex) -> str:
        versions = set(idx.rows["version"])
        assert len(versions) == 1, versions
        v = versions.pop()
        x = np.stack([idx.index.reconstruct(i) for i in (0, n // 2, n - 1)])
        np.testing.assert_allclose(x, ref[v][[0, n // 2, n - 1]], atol=1e-5)  # the index fits its rows
        return f"v{v}"

    rng = random.Random(4)
    outcomes = []
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(script), str(out), str(n), str(dim)], cwd=REPO, env=_env(),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        outcomes.append(_check(out, which))
    assert set(outcomes) <= {"invalid", "v0", "v1"}  # a kill mid-save: refused on load, never mixed
    # Whatever was left, a save over it gives a good index.
    FaissIndex.build(ref[0] * 2, pd.DataFrame({"path": [f"v0/{i}" for i in range(n)], "version": 0})).save(out)
    assert _check(out, which) == "v0"


def test_files_of_two_builds_with_the_same_count_are_refused(tmp_path):
    """What a kill between the files of `save` leaves: a new index.faiss beside the old rows and
    meta.json. The counts agree, so only the checksums in meta.json can tell."""
    rng = np.random.default_rng(0)
    rows = pd.DataFrame({"path": [f"{i}.jpg" for i in range(50)]})
    a = FaissIndex.build(rng.normal(size=(50, 16)), rows, backbone="toy", backbone_id="toy-1")
    b = FaissIndex.build(rng.normal(size=(50, 16)), rows.iloc[::-1], backbone="toy", backbone_id="toy-1")
    a.save(tmp_path / "a")
    b.save(tmp_path / "b")
    for name in ("index.faiss", "rows.parquet"):
        mixed = tmp_path / f"mixed-{name}"
        a.save(mixed)
        (mixed / name).write_bytes((tmp_path / "b" / name).read_bytes())
        with pytest.raises(RetrievalError, match=rf"{name}: does not match meta.json.*rebuild the index"):
            FaissIndex.load(mixed)
    assert len(FaissIndex.load(tmp_path / "a")) == 50
