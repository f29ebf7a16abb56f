"""FAISS retrieval on synthetic vectors; the CLI with a small stand-in encoder over generated images."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from artlens.embed import Encoder, l2_normalize
from artlens.retrieval import FaissIndex, RetrievalError, check_encoder, contact_sheet, similar

DIM = 32


def clusters(n=600, k=6, dim=DIM, noise=0.6, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, dim))
    labels = rng.integers(0, k, n)
    x = (centres[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32)
    rows = pd.DataFrame(
        {
            "path": [f"/art/{i}.jpg" for i in range(n)],
            "style": [f"style{l}" for l in labels],
            "artist": [None if i % 3 else f"artist{i % 7}" for i in range(n)],
            "sha256": [f"{i:064x}" for i in range(n)],
        }
    )
    return x, rows, labels


@pytest.fixture(scope="module")
def data():
    return clusters()


@pytest.fixture(scope="module")
def flat(data):
    x, rows, _ = data
    return FaissIndex.build(x, rows, backbone="toy", backbone_id="toy-1")


def test_exact_cosine_and_order(flat, data):
    x, rows, _ = data
    q = x[10] + 0.3
    got = flat.neighbours(q, 8)
    xn = l2_normalize(x)
    cos = xn @ (q / np.linalg.norm(q))
    best = np.argsort(-cos)[:8]
    assert [n.id for n in got] == best.tolist()
    np.testing.assert_allclose([n.similarity for n in got], cos[best], atol=1e-5)
    assert [n.rank for n in got] == list(range(1, 9))


def test_neighbours_share_the_cluster_and_carry_rows(flat, data):
    x, rows, labels = data
    hits = 0
    for i in range(0, 600, 20):
        ns = flat.neighbours(x[i], 5, exclude={i})
        assert i not in [n.id for n in ns] and len(ns) == 5
        hits += sum(n.labels["style"] == f"style{labels[i]}" for n in ns)
    assert hits / (30 * 5) > 0.9
    n = flat.neighbours(x[3], 1)[0]
    assert n.path == "/art/3.jpg" and n.sha256 == rows.sha256[3] and n.labels["artist"] == "artist3"
    assert "artist" not in flat.neighbours(x[1], 1)[0].labels  # missing labels are left out


def test_duplicates_marked_or_excluded(flat, data):
    x, rows, _ = data
    ns = flat.neighbours(x[5] * 3.0, 3)  # same direction: cosine 1
    assert ns[0].id == 5 and ns[0].duplicate and ns[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert not ns[1].duplicate
    # same bytes (sha256) count as duplicates even when the vectors differ (another encoder run)
    ns = flat.neighbours(x[5] + 0.2, 3, query_sha256=rows.sha256[7])
    assert {n.id for n in ns if n.duplicate} <= {5, 7}
    marked = [n for n in flat.neighbours(x[7], 600, query_sha256=rows.sha256[7]) if n.duplicate]
    assert 7 in [n.id for n in marked]
    ns = flat.neighbours(x[5], 4, exclude_duplicates=True)
    assert len(ns) == 4 and 5 not in [n.id for n in ns] and not any(n.duplicate for n in ns)


def test_save_load_round_trip(flat, data, tmp_path):
    x, rows, _ = data
    flat.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["backbone_id"] == "toy-1" and meta["count"] == 600 and meta["kind"] == "flat"
    again = FaissIndex.load(tmp_path / "idx")
    assert len(again) == 600 and again.backbone == "toy" and again.dim == DIM
    assert again.rows["path"].tolist() == rows["path"].tolist()
    a = [(n.id, round(n.similarity, 5)) for n in flat.neighbours(x[42], 6)]
    b = [(n.id, round(n.similarity, 5)) for n in again.neighbours(x[42], 6)]
    assert a == b
    assert not list((tmp_path / "idx").glob("*.tmp"))


def test_hnsw_above_threshold_agrees_with_exact(data, tmp_path):
    x, rows, _ = data
    h = FaissIndex.build(x, rows, kind="auto", hnsw_threshold=100)
    assert h.kind == "hnsw"
    h.save(tmp_path / "h")
    h = FaissIndex.load(tmp_path / "h")
    assert h.index.hnsw.efSearch >= 64
    exact = FaissIndex.build(x, rows)
    assert exact.kind == "flat"
    recall = np.mean(
        [len({n.id for n in h.neighbours(x[i], 10)} & {n.id for n in exact.neighbours(x[i], 10)}) / 10 for i in range(0, 600, 15)]
    )
    assert recall > 0.9


def test_bad_inputs_and_damaged_dirs(flat, data, tmp_path):
    x, rows, _ = data
    with pytest.raises(RetrievalError, match="dimension"):
        flat.neighbours(np.ones(DIM + 1), 3)
    bad = x.copy()
    bad[4] = np.nan
    with pytest.raises(ValueError, match="not finite"):
        FaissIndex.build(bad, rows)
    with pytest.raises(ValueError, match="rows"):
        FaissIndex.build(x, rows.iloc[:10])
    with pytest.raises(ValueError, match="kind"):
        FaissIndex.build(x, rows, kind="ivf-magic")
    with pytest.raises(RetrievalError, match="not an index"):
        FaissIndex.load(tmp_path)
    flat.save(tmp_path / "a")
    rows.iloc[:10].to_parquet(tmp_path / "a" / "rows.parquet")  # rows from another run
    with pytest.raises(RetrievalError, match="600 vectors"):
        FaissIndex.load(tmp_path / "a")
    flat.save(tmp_path / "b")
    (tmp_path / "b" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(RetrievalError, match="index.faiss"):
        FaissIndex.load(tmp_path / "b")


def test_k_larger_than_index_and_mixed_type_rows(tmp_path):
    x, rows, _ = clusters(n=4)
    rows["year"] = [1900, "c. 1910", None, 1920]  # mixed object column must still save
    idx = FaissIndex.build(x, rows)
    assert len(idx.neighbours(x[0], 50)) == 4
    idx.save(tmp_path / "i")
    assert FaissIndex.load(tmp_path / "i").rows["year"].tolist()[1] == "c. 1910"


class PixelEncoder(Encoder):
    """Stand-in encoder: a 4x4 thumbnail as the vector (similar pictures -> similar vectors)."""

    name = "pixels"
    dim = 48

    def __init__(self, backbone_id="pixels-test-1"):
        self.backbone_id = backbone_id
        self.preprocess = _pixels

    def embed_batch(self, batch):
        return l2_normalize(np.asarray(batch, np.float32).reshape(len(batch), -1))


def _pixels(img):
    small = img.convert("RGB").resize((4, 4), Image.Resampling.BILINEAR)
    return (np.asarray(small, np.float32) / 255.0 - 0.5).transpose(2, 0, 1).copy()


def _gallery(tmp_path, image_factory):
    colours = {"red": (220, 30, 30), "blue": (30, 30, 220), "green": (30, 200, 30)}
    rows = []
    for style, colour in colours.items():
        for j in range(4):
            p = image_factory(f"gallery/{style}/{j}.png", size=(40, 32), color=colour, seed=10 * j + len(style))
            rows.append({"path": str(p), "style": style})
    return pd.DataFrame(rows)


def test_similar_with_image_queries_and_sheet(tmp_path, image_factory):
    from artlens.embed import embed_manifest

    df = _gallery(tmp_path, image_factory)
    enc = PixelEncoder()
    vectors, ok = embed_manifest(df, enc, store_root=tmp_path / "store", workers=0, progress=False)[:2]
    idx = FaissIndex.build(vectors[ok], df[ok], backbone="pixels", backbone_id=enc.backbone_id)
    query = df.path[5]  # a blue one: same file -> duplicate by sha256, other blues next
    ns = similar(idx, query, k=4, encoder=enc)
    assert ns[0].path == query and ns[0].duplicate
    assert [n.labels["style"] for n in ns[1:]] == ["blue"] * 3
    ns = similar(idx, Image.open(query), k=3, encoder=enc, exclude_duplicates=True)
    assert query not in [n.path for n in ns]
    with pytest.raises(RetrievalError, match="pixels-test-1"):
        check_encoder(idx, PixelEncoder("another-backbone"))

    missing = ns[:2] + [ns[2].__class__(3, 0, 0.5, str(tmp_path / "gone.png"), None, {"style": "red"}, False)]
    sheet = contact_sheet(Image.open(query), missing, query_caption="q.png", thumb=64)
    assert sheet.width > 4 * 64 and sheet.height > 64
    arr = np.asarray(sheet)
    # the query tile comes first (top-left), showing the query's blue
    tile = arr[14:60, 14:60].reshape(-1, 3)
    assert (tile[:, 2].astype(int) - tile[:, 0]).mean() > 60


def test_cli_index_and_similar(tmp_path, image_factory, monkeypatch):
    from typer.testing import CliRunner

    import artlens.embed
    import artlens.embed.extract
    from artlens.cli import app

    from artlens.data.manifest import scan, write_manifest

    df = _gallery(tmp_path, image_factory)
    write_manifest(scan(tmp_path / "gallery", workers=0).manifest, tmp_path / "manifest.parquet")
    enc = PixelEncoder()
    fake = lambda name, backbone_state=None, device="cpu", preprocessing=None: enc  # noqa: E731
    monkeypatch.setattr(artlens.embed, "get_encoder", fake)
    monkeypatch.setattr(artlens.embed.extract, "get_encoder", fake)
    runner = CliRunner()
    out = tmp_path / "idx"
    res = runner.invoke(app, ["index", str(tmp_path / "manifest.parquet"), "--backbone", "pixels", "--store", str(tmp_path / "s"), "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["count"] == 12
    sheet = tmp_path / "sheet.png"
    res = runner.invoke(app, ["similar", str(out), df.path[9], "-k", "3", "--json", "--sheet", str(sheet)])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)
    assert got["neighbours"][0]["path"] == df.path[9] and got["neighbours"][0]["duplicate"]
    assert [n["labels"]["style"] for n in got["neighbours"]] == ["green"] * 3
    assert Image.open(sheet).width > 3 * 100
    assert json.loads(sheet.with_suffix(".json").read_text())["query"] == df.path[9]
    # a broken query file: error naming it, exit code 1
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    res = runner.invoke(app, ["similar", str(out), str(bad)])
    assert res.exit_code == 1 and "bad.jpg" in res.output
    # an index from another backbone is refused
    monkeypatch.setattr(artlens.embed, "get_encoder", lambda *a, **k: PixelEncoder("other"))
    res = runner.invoke(app, ["similar", str(out), df.path[0]])
    assert res.exit_code == 1 and "rebuild the index" in res.output
    # an image folder is scanned into a manifest (labels from the folder names)
    monkeypatch.setattr(artlens.embed, "get_encoder", fake)
    res = runner.invoke(app, ["index", str(tmp_path / "gallery"), "--store", str(tmp_path / "s"), "--out", str(tmp_path / "idx2")])
    assert res.exit_code == 0, res.output
    assert sorted(FaissIndex.load(tmp_path / "idx2").rows["style"].unique()) == ["blue", "green", "red"]


def test_near_duplicates_by_phash(data):
    x, rows, _ = data
    rows = rows.assign(phash=[f"{(i * 0x9E3779B97F4A7C15) & (2**64 - 1):016x}" for i in range(len(rows))])
    idx = FaissIndex.build(x, rows)
    rng = np.random.default_rng(5)
    q = x[9] + 0.25 * np.linalg.norm(x[9]) / np.sqrt(DIM) * rng.normal(size=DIM).astype(np.float32)
    top = idx.neighbours(q, 1)[0]
    assert top.id == 9 and 0.9 < top.similarity < 0.99 and not top.duplicate
    close = f"{int(rows.phash[9], 16) ^ 0b1011:016x}"  # 3 bits off: a re-encoded copy
    assert idx.neighbours(q, 1, query_phash=close)[0].duplicate
    far = f"{int(rows.phash[9], 16) ^ 0xFFFF:016x}"
    assert not idx.neighbours(q, 1, query_phash=far)[0].duplicate


def test_cli_index_from_a_store_and_similar_beside_a_model(tmp_path, image_factory, monkeypatch):
    from typer.testing import CliRunner

    import artlens.embed
    from artlens.cli import app
    from artlens.data.manifest import scan, write_manifest
    from artlens.embed import EmbeddingStore, embed_manifest
    from artlens.models.artmodel import ArtModel, new_config

    df = _gallery(tmp_path, image_factory)
    manifest = scan(tmp_path / "gallery", workers=0).manifest
    write_manifest(manifest, tmp_path / "m.parquet")
    enc = PixelEncoder()
    embed_manifest(manifest.iloc[:-2], enc, store_root=tmp_path / "store", workers=0, progress=False)  # 2 rows not embedded
    store_dir = EmbeddingStore(tmp_path / "store", enc.backbone_id).dir
    monkeypatch.setattr(artlens.embed, "get_encoder", lambda *a, **k: enc)
    monkeypatch.setattr(artlens.embed.encoders, "get_encoder", lambda *a, **k: enc)  # model_encoder's

    model = tmp_path / "model"
    config = {"mode": "probe", "backbone": {"name": "pixels", "feature_dim": 48}, "tasks": [{"name": "style", "labels": ["red", "blue", "green"]}]}
    heads = {"heads.style.0.weight": np.zeros((3, 48), np.float32), "heads.style.0.bias": np.zeros(3, np.float32)}
    ArtModel(new_config(config), heads).save(model)
    runner = CliRunner()
    res = runner.invoke(app, ["similar", str(model), df.path[0]])
    assert res.exit_code == 1 and "no index" in res.output  # says how to build one

    res = runner.invoke(app, ["index", str(store_dir), "--manifest", str(tmp_path / "m.parquet"), "--backbone", "pixels", "--out", str(model / "index")])
    assert res.exit_code == 2, res.output  # built, but two rows had no vector in the store
    assert "not in the embedding store" in res.output
    assert len(FaissIndex.load(model / "index")) == len(manifest) - 2
    res = runner.invoke(app, ["similar", str(model), df.path[1], "-k", "2", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["neighbours"][0]["labels"]["style"] == "red"
    res = runner.invoke(app, ["index", str(store_dir), "--out", str(tmp_path / "x")])
    assert res.exit_code == 1 and "--manifest" in res.output


# --------------------------------------------------------------------------- search modes (spaces)
def _label_precision(idx, x, labels, by, k=5):
    hits = []
    for i in range(0, len(x), 7):
        ns = idx.neighbours(x[i], k, by=by, exclude={i})
        hits += [labels[n.id] == labels[i] for n in ns]
    return float(np.mean(hits))


def nuisance_data(n=500, dim=24, seed=1):
    """Labels carried by a weak direction; a strong nuisance (pose, colour) clusters the pictures otherwise."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, n)
    nuisance = rng.integers(0, 5, n)
    x = 3.0 * rng.normal(size=(5, dim))[nuisance] + 0.8 * rng.normal(size=(n, dim))
    x[:, :4] += 2.0 * np.eye(4)[labels]
    return x.astype(np.float32), np.array([f"s{v}" for v in labels], dtype=object)


def test_a_label_space_finds_the_label_plain_cosine_misses(tmp_path):
    from artlens.retrieval import fit_label_space
    from artlens.retrieval.spaces import read_spaces, spaces_bytes

    x, labels = nuisance_data()
    space = fit_label_space("style", x[:400], labels[:400])
    assert space.learned and space.dim == 24 + 3  # the features beside a 3-d LDA (4 labels)
    rows = pd.DataFrame({"path": [f"/a/{i}.jpg" for i in range(500)], "style": labels})
    idx = FaissIndex.build(x, rows, spaces={"style": space}, default_mode="style")
    assert idx.modes == ["style", "features"] and idx.default_mode == "style"
    held_out = np.arange(400, 500)
    plain = np.mean([[labels[n.id] == labels[i] for n in idx.neighbours(x[i], 5, by="features", exclude={i})] for i in held_out])
    learned = np.mean([[labels[n.id] == labels[i] for n in idx.neighbours(x[i], 5, exclude={i})] for i in held_out])
    assert learned > plain + 0.1, (plain, learned)  # 0.63 -> 0.78

    # the spaces travel with the index, byte for byte
    idx.save(tmp_path / "i")
    again = FaissIndex.load(tmp_path / "i")
    assert again.default_mode == "style" and again.spaces["style"].digest() == space.digest()
    q = x[450] + 0.1
    assert [n.id for n in again.neighbours(q, 6)] == [n.id for n in idx.neighbours(q, 6)]
    meta, back = read_spaces(spaces_bytes({"style": space}, backbone="toy"), "mem")
    assert meta["backbone"] == "toy"
    np.testing.assert_allclose(back["style"].project(x[:5]), space.project(x[:5]), atol=1e-6)
    with pytest.raises(RetrievalError, match="cannot search by 'artist'.*style, features"):
        idx.neighbours(q, 3, by="artist")
    with pytest.raises(RetrievalError, match="fewer|2 or more"):
        fit_label_space("style", x[:10], ["a"] * 10)


def test_duplicates_are_judged_on_the_features_not_the_mode(data):
    x, rows, labels = data
    from artlens.retrieval import fit_label_space

    space = fit_label_space("style", x, rows["style"], weight=20.0)  # the label block all but decides
    idx = FaissIndex.build(x, rows, spaces={"style": space}, default_mode="style")
    ns = idx.neighbours(x[3], 10)
    # in the style space many paintings of x[3]'s cluster sit near cosine 1; only x[3] is a copy
    assert [n.id for n in ns if n.duplicate] == [3]
    assert sum(n.similarity > 0.99 for n in ns) > 1


def test_spaces_stored_as_float16_read_back_as_float32_with_the_same_neighbours():
    from artlens.retrieval import fit_label_space
    from artlens.retrieval.spaces import SpaceError, read_spaces, spaces_bytes
    from safetensors.numpy import load, save

    x, labels = nuisance_data()
    space = fit_label_space("style", x[:400], labels[:400])
    full, half = spaces_bytes({"style": space}), spaces_bytes({"style": space}, matrix_dtype="float16")
    stored = load(half)
    assert stored["style.1.matrix"].dtype == np.float16 and stored["style.1.mean"].dtype == np.float32
    assert len(full) - len(half) >= 2 * space.blocks[1].matrix.size - 16  # two bytes fewer a value (header aside)
    back = read_spaces(half, "mem")[1]["style"]
    assert all(b.matrix is None or b.matrix.dtype == np.float32 for b in back.blocks)
    assert back.digest() != space.digest()  # the matrix was rounded, and the digest says so
    a, b = space.project(x[400:]), back.project(x[400:])
    assert np.min(np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))) > 0.9999
    unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
    sim_a, sim_b = unit(a) @ unit(space.project(x)).T, unit(b) @ unit(back.project(x)).T
    assert np.abs(sim_a - sim_b).max() < 5e-3  # every similarity within the matrix's rounding
    idx_a = FaissIndex.build(x, None, spaces={"style": space}, default_mode="style")
    idx_b = FaissIndex.build(x, None, spaces={"style": back}, default_mode="style")
    p5 = [np.mean([[labels[n.id] == labels[i] for n in idx.neighbours(x[i], 5, exclude={i})] for i in range(400, 500)])
          for idx in (idx_a, idx_b)]
    assert abs(p5[0] - p5[1]) <= 0.01, p5
    with pytest.raises(ValueError, match="matrix_dtype"):
        spaces_bytes({"style": space}, matrix_dtype="int8")
    import json as _json
    import struct

    tensors = load(half)
    tensors["style.1.matrix"] = tensors["style.1.matrix"].astype(np.float64)  # neither float32 nor float16
    header = _json.loads(half[8 : 8 + struct.unpack("<Q", half[:8])[0]])["__metadata__"]
    with pytest.raises(SpaceError, match="block 1 matrix is float64"):
        read_spaces(save(tensors, metadata=header), "mem")


def test_crafted_spaces_file_is_refused(tmp_path):
    from safetensors.numpy import load, save

    from artlens.retrieval import fit_label_space
    from artlens.retrieval.spaces import SpaceError, read_spaces, spaces_bytes

    x, labels = nuisance_data(n=120)
    good = spaces_bytes({"style": fit_label_space("style", x, labels)})
    tensors = load(good)
    tensors["style.1.matrix"] = np.zeros((5, 3), np.float32)  # not (24, 3)
    import json as _json
    import struct

    n = struct.unpack("<Q", good[:8])[0]
    header = _json.loads(good[8 : 8 + n])["__metadata__"]
    with pytest.raises(SpaceError, match="mem: space 'style': block 1 matrix"):
        read_spaces(save(tensors, metadata=header), "mem")
    with pytest.raises(SpaceError, match="not a spaces file"):
        read_spaces(b"\x00" * 20, "mem")
    # an index whose spaces file was swapped for another fails its checksum
    rows = pd.DataFrame({"path": [f"{i}" for i in range(120)], "style": labels})
    FaissIndex.build(x, rows, spaces={"style": fit_label_space("style", x, labels)}, default_mode="style").save(tmp_path / "i")
    (tmp_path / "i" / "spaces.safetensors").write_bytes(spaces_bytes({"style": fit_label_space("style", x[:60], labels[:60])}))
    with pytest.raises(RetrievalError, match="spaces.safetensors: does not match meta.json"):
        FaissIndex.load(tmp_path / "i")


def test_shipped_spaces_apply_to_clip_features_only():
    from artlens.models.clip import CLIP_FEATURE_DIM
    from artlens.retrieval import default_spaces
    from artlens.retrieval.spaces import shipped_spaces_path

    assert list(default_spaces("pixels", 48)) == ["visual"]
    assert default_spaces("pixels", 48)["visual"].blocks[0].stop == 48
    clip = default_spaces("clip-vit-b16", CLIP_FEATURE_DIM)
    assert clip["visual"].dim == 512  # the image embedding alone
    if shipped_spaces_path().is_file():
        assert {"style", "artist"} <= set(clip) and clip["style"].in_dim == CLIP_FEATURE_DIM
        assert set(default_spaces("clip-vit-b16", CLIP_FEATURE_DIM, finetuned=True)) == {"visual"}


# --------------------------------------------------------------------------- a collection kept up to date
class CountingEncoder(PixelEncoder):
    def __init__(self):
        super().__init__()
        self.seen = 0

    def embed_batch(self, batch):
        self.seen += len(batch)
        return super().embed_batch(batch)


def test_index_collection_updates_in_place(tmp_path, image_factory):
    from artlens.retrieval import default_index_dir, index_collection

    _gallery(tmp_path, image_factory)
    gallery = tmp_path / "gallery"
    enc = CountingEncoder()
    first = index_collection(gallery, backbone="pixels", encoder=enc, store_root=tmp_path / "s1", workers=0)
    assert first.path == gallery / ".artlens-index" == default_index_dir(gallery)
    assert (first.added, first.kept, first.removed, first.written) == (12, 0, 0, True)
    assert first.index.default_mode == "visual" and enc.seen == 12

    # nothing changed: nothing embedded, nothing written
    enc2 = CountingEncoder()
    mtime = (first.path / "meta.json").stat().st_mtime_ns
    same = index_collection(gallery, backbone="pixels", encoder=enc2, store_root=tmp_path / "s2", workers=0)
    assert (same.added, same.kept, same.removed, same.written) == (0, 12, 0, False) and enc2.seen == 0
    assert (first.path / "meta.json").stat().st_mtime_ns == mtime

    # two files added, one removed, one renamed, one rewritten with other pixels; an empty store
    # root, so every reused vector comes from the index itself
    image_factory("gallery/red/new.png", size=(40, 32), color=(230, 20, 20), seed=99)
    image_factory("gallery/blue/new.png", size=(40, 32), color=(20, 20, 230), seed=98)
    (gallery / "green" / "0.png").unlink()
    (gallery / "green" / "1.png").rename(gallery / "green" / "renamed.png")
    image_factory("gallery/red/3.png", size=(40, 32), color=(30, 200, 30), seed=7)
    enc3 = CountingEncoder()
    upd = index_collection(gallery, backbone="pixels", encoder=enc3, store_root=tmp_path / "s3", workers=0)
    assert (upd.added, upd.removed, upd.written) == (3, 2, True), upd.to_dict()  # removed: green/0 and the old red/3
    assert upd.kept == 10 and enc3.seen == 3 and len(upd.index) == 13
    again = FaissIndex.load(upd.path)
    paths = set(again.rows["path"])
    assert str(gallery / "green" / "renamed.png") in paths and str(gallery / "green" / "0.png") not in paths
    ns = similar(again, str(gallery / "blue" / "new.png"), k=3, encoder=enc3)
    assert ns[0].duplicate and ns[0].path.endswith("blue/new.png")
    assert [n.labels["style"] for n in ns[1:]] == ["blue", "blue"]
    # every stored vector is its file's own (no row got a neighbour's vector)
    x = again.features()
    for i, p in enumerate(again.rows["path"]):
        np.testing.assert_allclose(x[i], l2_normalize(PixelEncoder().embed_batch(_pixels(Image.open(p))[None]))[0], atol=1e-5)


@pytest.mark.reliability
def test_index_collection_rebuilds_a_damaged_index_and_names_bad_files(tmp_path, image_factory):
    from artlens.retrieval import index_collection

    _gallery(tmp_path, image_factory)
    gallery = tmp_path / "gallery"
    (gallery / "red" / "broken.jpg").write_bytes(b"not a picture")
    first = index_collection(gallery, backbone="pixels", encoder=PixelEncoder(), store_root=tmp_path / "s", workers=0)
    assert len(first.index) == 12 and [p for p, _ in first.errors] == [str(gallery / "red" / "broken.jpg")]
    (first.path / "index.faiss").write_bytes(b"garbage")
    again = index_collection(gallery, backbone="pixels", encoder=PixelEncoder(), store_root=tmp_path / "s", workers=0)
    assert again.written and len(FaissIndex.load(again.path)) == 12
    assert any("could not be read" in n for n in again.notes)
    # another encoder: rebuilt, not mixed
    other = index_collection(gallery, backbone="pixels", encoder=PixelEncoder("pixels-test-2"), store_root=tmp_path / "s", workers=0)
    assert other.kept == 0 and other.added == 12 and FaissIndex.load(other.path).backbone_id == "pixels-test-2"


def test_cli_index_a_folder_then_similar_by_mode(tmp_path, image_factory, monkeypatch):
    from typer.testing import CliRunner

    import artlens.embed
    from artlens.cli import app

    df = _gallery(tmp_path, image_factory)
    enc = PixelEncoder()
    monkeypatch.setattr(artlens.embed, "get_encoder", lambda *a, **k: enc)
    runner = CliRunner()
    gallery = tmp_path / "gallery"
    res = runner.invoke(app, ["index", str(gallery), "--backbone", "pixels", "--store", str(tmp_path / "s"), "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["index"] == str(gallery / ".artlens-index") and got["count"] == 12 and got["added"] == 12
    assert got["default_mode"] == "visual" and got["modes"] == ["visual", "features"]
    res = runner.invoke(app, ["index", str(gallery), "--backbone", "pixels", "--store", str(tmp_path / "s")])
    assert res.exit_code == 0 and "+0 new, 12 kept" in res.output
    # the collection folder itself answers `similar` (its index beside it)
    res = runner.invoke(app, ["similar", str(gallery), df.path[2], "-k", "3", "--by", "features", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["by"] == "features" and out["neighbours"][0]["duplicate"]
    assert [n["labels"]["style"] for n in out["neighbours"]] == ["red"] * 3
    res = runner.invoke(app, ["similar", str(gallery), df.path[2], "--by", "brushwork"])
    assert res.exit_code == 1 and "cannot search by 'brushwork'" in res.output
    res = runner.invoke(app, ["similar", str(tmp_path), df.path[2]])
    assert res.exit_code == 1 and "artlens index" in res.output
    res = runner.invoke(app, ["index", str(gallery), "--by", "style", "--backbone", "pixels", "--store", str(tmp_path / "s")])
    assert res.exit_code == 1 and "cannot search pixels embeddings by 'style'" in res.output
