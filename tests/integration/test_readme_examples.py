"""The README's "Use" commands run as written.

The commands run in a scratch folder laid out like a checkout with `../shared` beside it, where
`../shared/datasets/wikiart-styles` holds a small WikiArt subset (links to real paintings),
`painting.jpg` is an example painting, `folder/` a few of them, and `configs/` and
`src/artlens/default` are the repository's. Only the server gets a free port instead of 8000; it
is started, asked for /healthz and stopped. `--device cuda` must answer, or say in one line that
there is no CUDA device.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ARTLENS = str(Path(sys.executable).parent / "artlens")
STYLES, PER_STYLE = 3, 14


def use_commands() -> list[str]:
    """The `artlens ...` lines of the README's code block under "## Use", comments dropped."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Use", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = [ln.split("  #", 1)[0].strip() for ln in block.splitlines()]
    return [ln for ln in lines if ln.startswith("artlens ")]


def test_the_readme_has_the_commands_this_test_runs():
    cmds = use_commands()
    verbs = {shlex.split(c)[1] for c in cmds}
    # The whole flow is documented; a README that drops a stage must drop it here on purpose.
    assert {"predict", "explain", "scan", "split", "embed", "train", "evaluate", "index", "similar",
            "attribute", "serve"} <= verbs, verbs


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, shared_datasets):
    root = tmp_path_factory.mktemp("readme")
    work = root / "main"
    (work / "src" / "artlens").mkdir(parents=True)
    os.symlink(REPO / "src" / "artlens" / "default", work / "src" / "artlens" / "default")
    shutil.copytree(REPO / "configs", work / "configs")
    wikiart = root / "shared" / "datasets" / "wikiart-styles"
    config = json.loads((REPO / "src" / "artlens" / "default" / "config.json").read_text())
    known = next(t["labels"] for t in config["tasks"] if t["name"] == "artist")
    slugs = tuple(name.lower().replace(" ", "-") + "_" for name in known)
    for style in sorted(p for p in (shared_datasets / "wikiart-styles").iterdir() if p.is_dir())[:STYLES]:
        (wikiart / style.name).mkdir(parents=True)
        files = sorted(style.glob("*.jpg"))
        # half by the default model's known artists (so `attribute` has a gallery to name), half others
        mine = _one_per_artist([f for f in files if f.name.startswith(slugs)], 2)[: PER_STYLE // 2]
        rest = _one_per_artist([f for f in files if not f.name.startswith(slugs)], 1)[: PER_STYLE - len(mine)]
        for f in mine + rest:
            os.symlink(f, wikiart / style.name / f.name)
    examples = sorted((REPO / "src" / "artlens" / "examples").glob("*.jpg"))
    shutil.copy(examples[0], work / "painting.jpg")
    (work / "folder").mkdir()
    for f in examples[:3]:
        shutil.copy(f, work / "folder" / f.name)
    return work


def _one_per_artist(files: list[Path], most: int) -> list[Path]:
    """At most `most` files per artist (the name before `_`), so a grouped split has groups."""
    seen: dict[str, int] = {}
    out = []
    for f in files:
        artist = f.name.split("_", 1)[0]
        if seen.get(artist, 0) < most:
            seen[artist] = seen.get(artist, 0) + 1
            out.append(f)
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(args: list[str], cwd: Path) -> None:
    port = _free_port()
    proc = subprocess.Popen([ARTLENS, *args, "--port", str(port)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"serve exited {proc.returncode}: {proc.stdout.read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    assert r.status == 200
                    return
            except OSError:
                time.sleep(0.5)
        pytest.fail("serve did not answer /healthz within 120 s")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_every_use_command_runs_as_written(workdir):
    for cmd in use_commands():
        args = shlex.split(cmd)[1:]
        if args[0] == "serve":
            _serve(args, workdir)
            continue
        proc = subprocess.run([ARTLENS, *args], cwd=workdir, capture_output=True, text=True, timeout=900)
        if "cuda" in args and proc.returncode == 1:
            assert "no CUDA device" in proc.stderr, (cmd, proc.stderr[-2000:])
            assert len(proc.stderr.strip().splitlines()) == 1, (cmd, proc.stderr[-2000:])
            continue
        assert proc.returncode == 0, f"{cmd}\n exit {proc.returncode}\n{proc.stderr[-3000:]}"
