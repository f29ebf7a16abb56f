"""Folder walks follow directory symlinks, once each: loops end and are named, no file twice."""

from __future__ import annotations

import logging
import os

from artlens.data.manifest import scan
from artlens.data.sources import read_source, walk_images
from artlens.data.walk import walk_files
from artlens.predict import Predictor, expand_inputs
from tests.conftest import make_image
from tests.unit.test_predict import MeanColourEncoder, _colour_model


def test_symlinked_class_folder_is_scanned(tmp_path):
    root = tmp_path / "data"
    for i in range(3):
        make_image(root / "Baroque" / f"b{i}.png", seed=i)
    for i in range(2):
        make_image(tmp_path / "elsewhere" / "cubism" / f"c{i}.png", seed=10 + i)
    os.symlink(tmp_path / "elsewhere" / "cubism", root / "Cubism")
    res = scan(root, workers=1)
    assert len(res.manifest) == 5 and len(res.errors) == 0
    assert res.manifest["style"].value_counts().to_dict() == {"Baroque": 3, "Cubism": 2}
    cubism = res.manifest[res.manifest["style"] == "Cubism"]["path"]
    assert all(os.sep + "Cubism" + os.sep in p for p in cubism)  # the link's path, so its label


def test_predict_answers_every_image_under_a_linked_subfolder(tmp_path):
    red = make_image(tmp_path / "in" / "red.png", color=(250, 5, 5))
    make_image(tmp_path / "shared" / "blue.png", color=(5, 5, 250))
    os.symlink(tmp_path / "shared", tmp_path / "in" / "linked")
    files = expand_inputs([tmp_path / "in"])
    assert files == [str(red), str(tmp_path / "in" / "linked" / "blue.png")]  # a folder's files first
    rows = Predictor(_colour_model(), encoder=MeanColourEncoder()).predict_paths(files)
    assert [r["error"] for r in rows] == [None, None]
    assert [r["tasks"]["colour"]["label"] for r in rows] == ["red", "blue"]


def test_symlink_loop_ends_and_is_named(tmp_path, caplog):
    root = tmp_path / "data"
    make_image(root / "A" / "x.png")
    os.symlink(root, root / "A" / "back")  # to an ancestor
    os.symlink(".", root / "A" / "self")  # to itself
    frame, _ = read_source(root, "folder")
    assert frame["path"].tolist() == [str(root / "A" / "x.png")]
    notes = frame.attrs["notes"]
    assert any(n.startswith(f"skipped symlink loop: {root / 'A' / 'back'}") for n in notes)
    assert any(n.startswith(f"skipped symlink loop: {root / 'A' / 'self'}") for n in notes)
    # Outside a scan (predict), the same message is one warning line.
    with caplog.at_level(logging.WARNING, logger="artlens.data.walk"):
        assert expand_inputs([root]) == [str(root / "A" / "x.png")]
    assert sum("skipped symlink loop" in r.getMessage() for r in caplog.records) == 2


def test_scan_cli_names_the_loop_in_a_note(tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import app

    make_image(tmp_path / "A" / "x.png")
    os.symlink(tmp_path, tmp_path / "A" / "up")
    res = CliRunner().invoke(app, ["scan", str(tmp_path), "--workers", "1", "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "skipped symlink loop:" in res.output.replace("\n", "")


def test_file_reachable_twice_is_listed_once(tmp_path):
    x = make_image(tmp_path / "A" / "x.png")
    os.symlink(x, tmp_path / "A" / "y.png")  # the same file under a second name
    os.symlink(tmp_path / "A", tmp_path / "B")  # the same folder under a second name
    os.symlink(tmp_path / "missing.png", tmp_path / "A" / "z.png")  # broken: kept, so it is reported
    assert walk_images(tmp_path) == [x, tmp_path / "A" / "z.png"]
    frame, _ = read_source(tmp_path, "folder")
    notes = " | ".join(frame.attrs["notes"])
    assert f"skipped folder reached twice: {tmp_path / 'B'}" in notes
    assert "1 file(s)" in notes and "listed once" in notes
    assert walk_files(tmp_path, keep=lambda n: n == "x.png") == [x]
