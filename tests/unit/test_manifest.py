"""Scanning into a manifest: hashes, duplicates, unreadable files, Parquet round trip, `artlens scan`."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from typer.testing import CliRunner

import artlens.data.decode as D
import artlens.data.duplicates as DUP
from artlens.cli import app
from artlens.data.manifest import (
    LABEL_COLUMNS,
    MANIFEST_COLUMNS,
    ManifestError,
    apply_name_pattern,
    normalise_labels,
    normalise_manifest,
    read_manifest,
    scan,
    write_manifest,
)
from artlens.data.duplicates import duplicate_groups, near_duplicate_pairs
from tests.conftest import make_image
from tests.unit.test_images import write_png_bomb


def _copy(src, dst):
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())
    return dst


@pytest.fixture
def styles_folder(tmp_path):
    root = tmp_path / "styles"
    for i in range(3):
        make_image(root / "Baroque" / f"rembrandt_portrait-{i}.jpg", seed=i)
        make_image(root / "Cubism" / f"pablo-picasso_guitar-{i}.png", seed=10 + i)
    return root


def test_scan_folder_columns_and_hashes(styles_folder):
    res = scan(styles_folder, workers=1)
    df = res.manifest
    assert list(df.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    assert len(df) == 6 and res.errors.empty and res.duplicates.empty
    assert sorted(df["style"].unique()) == ["Baroque", "Cubism"]
    assert df["path"].map(os.path.isabs).all()
    assert (df["source"] == "folder").all() and df["split"].isna().all()
    assert (df["width"] == 64).all() and (df["height"] == 48).all() and df["width"].dtype == "int64"
    row = df.iloc[0]
    assert row["sha256"] == hashlib.sha256(open(row["path"], "rb").read()).hexdigest()
    assert df["phash"].str.fullmatch(r"[0-9a-f]{16}").all()
    assert df["artist"].isna().all()  # no name pattern asked for


def test_scan_with_name_pattern(styles_folder):
    df = scan(styles_folder, workers=1, name_pattern="wikiart").manifest
    assert set(df["artist"]) == {"Rembrandt", "Pablo Picasso"}
    assert "portrait-0" in set(df["title"])


def test_exact_duplicate_under_two_labels_is_flagged(tmp_path):
    root = tmp_path / "d"
    a = make_image(root / "Baroque" / "same.jpg", seed=1)
    _copy(a, root / "Rococo" / "same.jpg")
    _copy(a, root / "Baroque" / "same-again.jpg")  # same label: a duplicate, not a conflict by itself
    make_image(root / "Rococo" / "other.jpg", seed=2)
    res = scan(root, workers=1)
    dup = res.duplicates
    assert dup["group"].nunique() == 1 and len(dup) == 3
    assert (dup["kind"] == "exact").all() and dup["conflict"].all()
    assert set(dup["conflict_columns"]) == {"style"}
    m = res.manifest.set_index(res.manifest["path"].map(os.path.basename))
    assert m.loc["other.jpg", "conflict"] == False  # noqa: E712
    assert pd.isna(m.loc["other.jpg", "dup_group"])
    summary = res.summary()
    assert summary["duplicates"]["conflicting_groups"] == 1 and summary["duplicates"]["exact_groups"] == 1


def painting(path, seed, size=256):
    """A smooth picture (random 6x6 colours blown up): pHash needs structure, not noise."""
    small = np.random.default_rng(seed).integers(0, 256, (6, 6, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((size, size), Image.BICUBIC).save(path)
    return path


def test_near_duplicate_reencoded_copy(tmp_path):
    root = tmp_path / "n"
    src = painting(root / "Impressionism" / "a.png", seed=3)
    Image.open(src).convert("RGB").resize((180, 180)).save(root / "Impressionism" / "a-small.jpg", quality=70)
    painting(root / "Impressionism" / "b.png", seed=4)
    res = scan(root, workers=1)
    dup = res.duplicates
    assert set(dup["path"].map(os.path.basename)) == {"a.png", "a-small.jpg"}
    assert (dup["kind"] == "near").all() and not dup["conflict"].any()
    # exact-only mode does not group them
    assert scan(root, workers=1, near_distance=None).duplicates.empty


def test_bad_files_never_stop_the_scan(tmp_path):
    """The issue's list: zero-byte, truncated JPEG, text named .jpg, 16-bit PNG, CMYK JPEG,
    RGBA PNG and a 30,000 x 30,000 PNG: good ones in the manifest, bad ones in errors."""
    root = tmp_path / "mixed"
    root.mkdir()
    (root / "zero.jpg").write_bytes(b"")
    full = make_image(tmp_path / "full.jpg", size=(300, 300))
    (root / "truncated.jpg").write_bytes(full.read_bytes()[:2000])
    (root / "notes.jpg").write_text("shopping list: bread, paint\n")
    Image.fromarray(np.full((20, 30), 40000, np.uint16)).save(root / "deep16.png")
    Image.new("RGB", (30, 20), (10, 200, 10)).convert("CMYK").save(root / "cmyk.jpg")
    Image.new("RGBA", (30, 20), (10, 10, 200, 128)).save(root / "alpha.png")
    write_png_bomb(root / "bomb.png")
    make_image(root / "good.jpg")
    res = scan(root, workers=1)
    good = set(res.manifest["path"].map(os.path.basename))
    assert good == {"deep16.png", "cmyk.jpg", "alpha.png", "good.jpg"}
    reasons = dict(zip(res.errors["path"].map(os.path.basename), res.errors["reason"]))
    assert set(reasons) == {"zero.jpg", "truncated.jpg", "notes.jpg", "bomb.png"}
    assert "empty file" in reasons["zero.jpg"]
    assert "truncated" in reasons["truncated.jpg"]
    assert "text file" in reasons["notes.jpg"]
    assert "too large" in reasons["bomb.png"]
    row = res.manifest.set_index(res.manifest["path"].map(os.path.basename)).loc["cmyk.jpg"]
    assert (row["width"], row["height"]) == (30, 20)


def test_non_utf8_file_name_is_reported(tmp_path):
    root = tmp_path / "names"
    make_image(root / "ok.jpg")
    bad = os.path.join(os.fsencode(root), b"caf\xe9.jpg")
    with open(bad, "wb") as fh:
        fh.write((root / "ok.jpg").read_bytes())
    res = scan(root, workers=1)
    assert len(res.manifest) == 1
    assert res.errors["reason"].str.contains("not valid UTF-8").sum() == 1
    write_manifest(res.manifest, tmp_path / "m.parquet")  # what is left is writable


def test_unicode_and_spaces_in_names(tmp_path):
    root = tmp_path / "uni"
    make_image(root / "Ukiyo_e" / "katsushika hokusai_the great wave ñ 波.jpg")
    make_image(root / "Ukiyo_e" / "line\nbreak.jpg", seed=2)
    res = scan(root, workers=1)
    assert len(res.manifest) == 2 and res.errors.empty
    out = write_manifest(res.manifest, tmp_path / "m.parquet")
    assert sorted(read_manifest(out)["path"]) == sorted(res.manifest["path"])


def test_parallel_scan_matches_serial(tmp_path):
    root = tmp_path / "many"
    for i in range(D._PARALLEL_MIN + 4):
        make_image(root / f"c{i % 3}" / f"{i}.png", size=(16, 16), seed=i)
    (root / "c0" / "broken.jpg").write_bytes(b"\xff\xd8\xff broken")
    serial = scan(root, workers=1)
    parallel = scan(root, workers=2)
    pd.testing.assert_frame_equal(serial.manifest, parallel.manifest)
    pd.testing.assert_frame_equal(serial.errors, parallel.errors)


_REAL_PROBE = D.probe_file


def _crashing_probe(path, max_pixels=D.MAX_PIXELS):
    # module level so the pool can pickle it by name; the forked workers inherit the env var
    if path == os.environ.get("ARTLENS_TEST_CRASH_ON"):
        os._exit(3)  # what a segfaulting decoder looks like from outside
    return _REAL_PROBE(path, max_pixels)


def test_worker_crash_names_the_file(tmp_path, monkeypatch):
    import multiprocessing as mp

    paths = [str(make_image(tmp_path / f"{i}.png", size=(8, 8), seed=i)) for i in range(D._PARALLEL_MIN + 10)]
    culprit = paths[20]
    monkeypatch.setenv("ARTLENS_TEST_CRASH_ON", culprit)
    monkeypatch.setattr(D, "probe_file", _crashing_probe)
    # The workers must inherit the patched probe: fork, even when an earlier test left idle
    # threads behind (a cached encoder's thread pool), which makes the scan pick forkserver.
    monkeypatch.setattr(D, "_pool_context", lambda: mp.get_context("fork"))
    results = list(D.decode_files(paths, workers=2, chunksize=4))
    assert [r[0] for r in results] == paths  # every file once, in order
    by_path = {r[0]: r for r in results}
    assert "crashed" in by_path[culprit][1]
    assert all(by_path[p][1] is None for p in paths if p != culprit)


def test_empty_and_all_bad_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    res = scan(tmp_path / "empty", workers=1)
    assert res.manifest.empty and res.errors.empty and list(res.manifest.columns[: len(MANIFEST_COLUMNS)]) == list(MANIFEST_COLUMNS)
    write_manifest(res.manifest, tmp_path / "e.parquet")
    assert read_manifest(tmp_path / "e.parquet").empty
    cli = CliRunner().invoke(app, ["scan", str(tmp_path / "empty")])
    assert cli.exit_code == 1 and "no image files" in cli.stderr
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    res = scan(tmp_path / "bad", workers=1)
    assert res.manifest.empty and len(res.errors) == 1
    assert CliRunner().invoke(app, ["scan", str(tmp_path / "bad")]).exit_code == 2


def test_progress_callback(styles_folder):
    seen = []
    scan(styles_folder, workers=1, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (6, 6)


def test_taxonomy_at_scan_time(tmp_path):
    make_image(tmp_path / "w" / "Synthetic_Cubism" / "a.jpg")
    make_image(tmp_path / "w" / "Baroque" / "b.jpg", seed=1)
    df = scan(tmp_path / "w", workers=1, taxonomies=["wikiart-movements"]).manifest
    movement = dict(zip(df["style"], df["movement"]))
    assert movement["Synthetic_Cubism"] == "Cubism" and pd.isna(movement["Baroque"])


# ---------------------------------------------------------------------------------------------
# Reading and writing
# ---------------------------------------------------------------------------------------------


def test_write_read_round_trip(styles_folder, tmp_path):
    df = scan(styles_folder, workers=1, name_pattern="wikiart").manifest
    out = write_manifest(df, tmp_path / "sub" / "m.parquet")
    back = read_manifest(out)
    pd.testing.assert_frame_equal(back, normalise_manifest(df))
    assert [p.name for p in out.parent.iterdir()] == ["m.parquet"]  # no temp file left


def test_read_manifest_errors(tmp_path):
    with pytest.raises(ManifestError, match="no such manifest"):
        read_manifest(tmp_path / "missing.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    with pytest.raises(ManifestError, match="not a readable Parquet"):
        read_manifest(tmp_path / "junk.parquet")
    pd.DataFrame({"x": [1]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(ManifestError, match="missing column"):
        read_manifest(tmp_path / "other.parquet")
    bad = pd.DataFrame([{**{c: None for c in MANIFEST_COLUMNS}, "path": "/a.jpg", "sha256": "0" * 64, "width": 1, "height": 1, "split": "holdout"}])
    with pytest.raises(ManifestError, match="unknown split"):
        write_manifest(bad, tmp_path / "bad.parquet")


def test_normalise_labels():
    df = pd.DataFrame(
        {
            "path": ["a", "b", "c", "d"],
            "artist": ["Monet, Claude", "claude-monet", "  ", None],
            "origin": ["AI", "Real", "generated", "human"],
        }
    )
    out = normalise_labels(df)
    assert out["artist"].tolist()[:2] == ["Claude Monet", "Claude Monet"]
    assert out["artist"].isna().tolist()[2:] == [True, True]
    assert out["origin"].tolist() == ["ai", "human", "ai", "human"]


def test_name_pattern_fills_only_missing():
    df = pd.DataFrame({"path": ["/x/claude-monet_water-lilies.jpg", "/x/edgar-degas_dancers.jpg", "/x/nounderscore.jpg"], "artist": [None, "Somebody Else", None]})
    out = apply_name_pattern(df, "{artist}_{title}")
    assert out["artist"].tolist()[:2] == ["claude-monet", "Somebody Else"]
    assert pd.isna(out["artist"].iloc[2]) and pd.isna(out["title"].iloc[2])
    assert out["title"].tolist()[:2] == ["water-lilies", "dancers"]


# ---------------------------------------------------------------------------------------------
# Near-duplicate search: pigeonhole search == brute force
# ---------------------------------------------------------------------------------------------


def _brute(h, t):
    pairs = set()
    for i in range(len(h)):
        d = DUP._popcount(h[i] ^ h)
        for j in np.flatnonzero(d <= t):
            if j > i:
                pairs.add((i, int(j)))
    return pairs


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2, 300), st.integers(0, 8))
def test_near_pairs_equal_brute_force(seed, n, t):
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
    # plant near copies: flip up to t+1 random bits of some hashes
    for i in rng.choice(n, size=min(n, 20), replace=False):
        j = rng.integers(0, n)
        flips = rng.choice(64, size=rng.integers(0, t + 2), replace=False)
        h[j] = h[i] ^ np.uint64(sum(1 << int(b) for b in flips))
    h = np.unique(h)
    got = {tuple(p) for p in near_duplicate_pairs(h, t).tolist()}
    assert got == _brute(h, t)


def test_duplicate_groups_are_transitive_and_ordered():
    df = pd.DataFrame(
        {
            "path": list("abcde"),
            "sha256": ["s1", "s2", "s1", "s3", "s4"],
            "phash": ["0000000000000000", "ffffffffffffffff", "0000000000000000", "0000000000000003", "00000000000000ff"],
        }
    )
    groups = duplicate_groups(df, near_distance=2)
    assert groups.tolist() == [0, 1, 0, 0, 2]  # a=c exact, d within 2 bits of a; e is 8 bits away
    assert duplicate_groups(df, near_distance=None).tolist() == [0, 1, 0, 2, 3]
    # no hashes at all: every row its own group
    assert duplicate_groups(pd.DataFrame({"path": ["x", "y"]})).tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------
# `artlens scan`
# ---------------------------------------------------------------------------------------------


def test_cli_scan_json_and_outputs(styles_folder, tmp_path):
    (styles_folder / "Cubism" / "bad.jpg").write_bytes(b"")
    out = tmp_path / "m.parquet"
    res = CliRunner().invoke(app, ["scan", str(styles_folder), "--json", "--out", str(out), "--name-pattern", "wikiart", "--workers", "1"])
    assert res.exit_code == 2, res.output  # finished, one file unreadable
    summary = json.loads(res.stdout)
    assert summary["images"] == 6 and summary["unreadable"] == 1
    assert summary["labels"]["style"]["Baroque"]["total"] == 3
    assert summary["labels"]["artist"]["Pablo Picasso"]["total"] == 3
    assert "bad.jpg: empty file" in res.stderr
    assert len(read_manifest(out)) == 6
    assert json.loads((tmp_path / "m.summary.json").read_text())["images"] == 6
    assert pd.read_csv(tmp_path / "m.errors.csv")["reason"].str.contains("empty").all()


def test_cli_scan_table_and_errors(styles_folder, tmp_path):
    runner = CliRunner()
    ok = runner.invoke(app, ["scan", str(styles_folder), "--workers", "1", "-t", "wikiart-movements"])
    assert ok.exit_code == 0, ok.output
    assert "Baroque" in ok.stdout and "duplicate groups" in ok.stdout and "movement" in ok.stdout
    missing = runner.invoke(app, ["scan", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and "no such file" in missing.stderr
    bad_layout = runner.invoke(app, ["scan", str(styles_folder), "--layout", "nonsense"])
    assert bad_layout.exit_code == 1 and "unknown layout" in bad_layout.stderr
    listing = runner.invoke(app, ["scan", ".", "--list-layouts"])
    assert listing.exit_code == 0 and "wikiart_csv" in listing.stdout


def test_label_columns_contract():
    assert LABEL_COLUMNS == ("style", "artist", "genre", "origin", "generator")
