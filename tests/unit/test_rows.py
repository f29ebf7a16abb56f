"""`artlens.data.rows.read_rows`: what every command reads when pointed at a manifest, a folder or an image."""

from __future__ import annotations

import pandas as pd
import pytest

from artlens.data.manifest import ManifestError
from artlens.data.rows import read_rows


def test_manifests_resolve_relative_paths_from_their_own_folder(tmp_path, monkeypatch):
    sub = tmp_path / "m"
    sub.mkdir()
    table = pd.DataFrame({"path": ["a.jpg", str(tmp_path / "abs.jpg")], "style": ["x", "y"]})
    table.to_csv(sub / "rows.csv", index=False)
    table.to_parquet(sub / "rows.parquet")
    monkeypatch.chdir(tmp_path)  # not the manifest's folder
    for name in ("rows.csv", "rows.parquet"):
        rows, unreadable = read_rows(sub / name)
        assert rows["path"].tolist() == [str(sub / "a.jpg"), str(tmp_path / "abs.jpg")]
        assert rows["style"].tolist() == ["x", "y"] and unreadable.empty


def test_a_folder_is_scanned_and_its_bad_files_named(tmp_path, image_factory):
    image_factory("gallery/a/ok.png", color=(200, 10, 10))
    (tmp_path / "gallery" / "a" / "broken.jpg").write_bytes(b"not an image")
    rows, unreadable = read_rows(tmp_path / "gallery")
    assert [p.rsplit("/", 1)[-1] for p in rows["path"]] == ["ok.png"]
    assert [p.rsplit("/", 1)[-1] for p in unreadable["path"]] == ["broken.jpg"]


def test_an_image_only_where_asked_and_clear_errors(tmp_path, image_factory):
    img = image_factory("one.png")
    assert read_rows(img, image=True)[0]["path"].tolist() == [str(img.resolve())]
    with pytest.raises(ValueError, match="expected a manifest"):
        read_rows(img)
    with pytest.raises(ValueError, match="no such file or folder"):
        read_rows(tmp_path / "missing.parquet")
    pd.DataFrame({"file": ["a.jpg"]}).to_csv(tmp_path / "nopath.csv", index=False)
    with pytest.raises(ManifestError, match="needs a 'path' column"):
        read_rows(tmp_path / "nopath.csv")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ManifestError, match="bad.parquet: not a readable parquet table"):
        read_rows(tmp_path / "bad.parquet")
