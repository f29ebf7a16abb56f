"""Similar artworks on real WikiArt paintings with the offline CLIP encoder."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artlens.retrieval import FaissIndex, similar

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def shared(shared_datasets):
    # module-scoped so that the expensive fixtures below are built once
    return shared_datasets

STYLES = ("Ukiyo_e", "Pointillism", "Pop_Art", "Baroque")
N_INDEX, N_QUERY = 10, 2


def _files(root, style):
    return sorted((root / "wikiart-styles" / style).glob("*.jpg"))


@pytest.fixture(scope="module")
def built(shared, tmp_path_factory):
    from artlens.data.images import load_image
    from artlens.embed import embed_manifest, file_sha256, get_encoder
    from artlens.retrieval.index import image_phash

    try:
        encoder = get_encoder("clip-vit-b16")
    except Exception as exc:
        pytest.skip(f"CLIP encoder not available ({exc})")
    rows = [{"path": str(p), "style": s} for s in STYLES for p in _files(shared, s)[:N_INDEX]]
    df = pd.DataFrame(rows)
    df["sha256"] = [file_sha256(p) for p in df["path"]]
    df["phash"] = [image_phash(load_image(p)) for p in df["path"]]  # as the manifest has it
    store = tmp_path_factory.mktemp("store")
    vectors, ok = embed_manifest(df, encoder, store_root=store, workers=0, progress=False)[:2]
    assert ok.all()
    out = tmp_path_factory.mktemp("index")
    FaissIndex.build(vectors, df, backbone="clip-vit-b16", backbone_id=encoder.backbone_id).save(out)
    return out, encoder, store


def test_neighbours_share_the_style_of_unseen_paintings(built, shared_datasets):
    out, encoder, _ = built
    idx = FaissIndex.load(out)
    precisions = []
    for style in STYLES:
        for path in _files(shared_datasets, style)[N_INDEX : N_INDEX + N_QUERY]:
            ns = similar(idx, path, k=5, encoder=encoder)
            assert len(ns) == 5 and all(-1 <= n.similarity <= 1 for n in ns)
            assert [n.similarity for n in ns] == sorted((n.similarity for n in ns), reverse=True)
            precisions.append(np.mean([n.labels["style"] == style for n in ns]))
    assert np.mean(precisions) >= 0.7, precisions


def test_an_indexed_painting_finds_itself_marked_duplicate(built, shared_datasets):
    out, encoder, _ = built
    path = _files(shared_datasets, "Pointillism")[3]
    ns = similar(out, path, k=3, encoder=encoder)
    assert ns[0].path == str(path) and ns[0].duplicate and ns[0].similarity > 0.99  # batch-independent encoder
    assert not any(n.duplicate for n in ns[1:])
    # a re-encoded, slightly resized copy is still recognised as the same picture (pHash)
    copy = Image.open(path).convert("RGB").resize((200, 200))
    ns = similar(out, copy, k=2, encoder=encoder)
    assert ns[0].path == str(path) and ns[0].duplicate


def test_similar_cli_table_json_and_sheet(built, shared_datasets, tmp_path):
    from typer.testing import CliRunner

    from artlens.cli import app

    out, _, _ = built
    query = _files(shared_datasets, "Ukiyo_e")[N_INDEX + 5]
    sheet = tmp_path / "sheet.png"
    res = CliRunner().invoke(app, ["similar", str(out), str(query), "-k", "4", "--json", "--sheet", str(sheet)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert len(got["neighbours"]) == 4 and got["neighbours"][0]["labels"]["style"] == "Ukiyo_e"
    im = Image.open(sheet)
    assert im.width >= 5 * 224  # query + 4 neighbours in one row
    res = CliRunner().invoke(app, ["similar", str(out), str(query), "-k", "3"])
    assert res.exit_code == 0 and "Ukiyo_e" in res.stdout


def test_a_collection_folder_indexed_and_searched_by_style(built, shared_datasets, tmp_path):
    """`artlens index DIR` then `artlens similar DIR query.jpg`: the index beside the folder, searched
    by style by default; a painting added later is embedded alone on the next run."""
    from typer.testing import CliRunner

    from artlens.cli import app
    from artlens.retrieval.spaces import shipped_spaces_path

    _, _, store = built
    folder = tmp_path / "museum"
    for style in STYLES:
        (folder / style).mkdir(parents=True)
        for p in _files(shared_datasets, style)[:N_INDEX]:
            (folder / style / p.name).symlink_to(p)
    runner = CliRunner()
    res = runner.invoke(app, ["index", str(folder), "--store", str(store), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout.strip().splitlines()[-1])
    assert summary["count"] == len(STYLES) * N_INDEX and summary["added"] == len(STYLES) * N_INDEX
    assert summary["index"] == str(folder / ".artlens-index")
    shipped = shipped_spaces_path().is_file()
    assert summary["default_mode"] == ("style" if shipped else "visual")

    precision = {}
    for by in ("visual", None):
        hits = []
        for style in STYLES:
            for q in _files(shared_datasets, style)[N_INDEX + 2 : N_INDEX + 4]:
                args = ["similar", str(folder), str(q), "-k", "5", "--json"] + (["--by", by] if by else [])
                res = runner.invoke(app, args)
                assert res.exit_code == 0, res.output
                got = json.loads(res.stdout)
                hits += [n["labels"]["style"] == style for n in got["neighbours"]]
        precision[by or got["by"]] = float(np.mean(hits))
    assert precision[summary["default_mode"]] >= 0.8, precision

    extra = _files(shared_datasets, "Baroque")[N_INDEX + 20]
    (folder / "Baroque" / extra.name).symlink_to(extra)
    res = runner.invoke(app, ["index", str(folder), "--store", str(tmp_path / "empty-store"), "--json"])
    again = json.loads(res.stdout.strip().splitlines()[-1])
    assert res.exit_code == 0 and (again["added"], again["kept"], again["removed"]) == (1, len(STYLES) * N_INDEX, 0)
