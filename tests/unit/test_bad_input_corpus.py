"""Issue #9: a generated bad-input corpus run through every entry point the way a user runs it.

One folder holds good paintings (two styles), valid-but-odd images (animated GIF, 1x1, 16-bit and
palette PNGs, CMYK / progressive / EXIF-rotated JPEGs, WebP with alpha, names with spaces,
unicode, brackets and newlines) and bad files (empty, truncated, text/HTML/PDF named .jpg, SVG, a
30,000 x 30,000 PNG bomb, a symlink loop, a directory symlink loop, a file without read
permission). Every command (scan, embed, train, evaluate, predict, explain, index, similar) and
the REST API must give a result for each good and odd image, one line naming each bad file with
its reason, the documented exit code (2: finished, some inputs failed) and no traceback, within
a timeout. Nothing is stored: the corpus is built in a temporary folder. A small random-weight
CNN (`simple-cnn`) stands in for CLIP so the whole module runs in seconds on 2 cores.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.unit.test_serve_api import png_bomb  # a real 30,000 x 30,000 PNG of ~110 KB

# Hangs fail; the limit is generous because the shared CI machine can be slow (each test takes
# seconds when it is idle).
pytestmark = pytest.mark.timeout(240)

BACKBONE = "simple-cnn"
STYLES = {"Baroque": (200, 60, 40), "Cubism": (40, 70, 200)}
PER_STYLE = 6


# ------------------------------------------------------------------------------------ corpus
def _noise(size, colour, seed):
    rng = np.random.default_rng(seed)
    arr = np.empty((size[1], size[0], 3), np.uint8)
    arr[...] = colour
    return np.clip(arr.astype(int) + rng.integers(-60, 60, arr.shape), 0, 255).astype(np.uint8)


def _jpeg(arr, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@dataclass
class Corpus:
    root: Path
    good: dict[str, str] = field(default_factory=dict)  # path -> style (plain, well-formed paintings)
    odd: dict[str, str] = field(default_factory=dict)  # path -> style (valid, but unusual files)
    bad: dict[str, tuple] = field(default_factory=dict)  # path -> words its reason must contain
    manifest_csv: Path | None = None

    @property
    def readable(self) -> dict[str, str]:
        return {**self.good, **self.odd}

    @property
    def all_files(self) -> list[str]:
        return sorted([*self.good, *self.odd, *self.bad])


def build_corpus(root: Path) -> Corpus:
    c = Corpus(root)
    # Good paintings: two styles, colours far apart so even a random CNN tells them apart.
    for k, (style, colour) in enumerate(STYLES.items()):
        d = root / style
        d.mkdir(parents=True)
        for i in range(PER_STYLE):
            p = d / f"{style.lower()}_{i}.png"
            Image.fromarray(_noise((64, 48), colour, 100 * k + i), "RGB").save(p)
            c.good[str(p)] = style

    # Valid but odd: every decoder path must turn them into an RGB picture.
    bq, cu = root / "Baroque", root / "Cubism"
    warm, cool = STYLES["Baroque"], STYLES["Cubism"]

    def odd(path: Path, style: str, data: bytes | None = None, img: Image.Image | None = None, **save):
        if data is not None:
            path.write_bytes(data)
        else:
            img.save(path, **save)
        c.odd[str(path)] = style

    frames = [Image.fromarray(_noise((40, 40), warm, 200 + i), "RGB").convert("P") for i in range(3)]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=80, loop=0)
    odd(bq / "animated.gif", "Baroque", buf.getvalue())
    odd(bq / "one-pixel.png", "Baroque", img=Image.new("RGB", (1, 1), warm))
    deep = (np.linspace(0, 65535, 48 * 64).reshape(48, 64)).astype(np.uint16)
    odd(cu / "sixteen-bit.png", "Cubism", img=Image.fromarray(deep))  # mode I;16
    pal = Image.fromarray(_noise((48, 48), cool, 201), "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    odd(cu / "palette.png", "Cubism", img=pal, transparency=0)
    odd(bq / "cmyk.jpg", "Baroque", img=Image.fromarray(_noise((48, 40), warm, 202), "RGB").convert("CMYK"), quality=90)
    odd(cu / "progressive.jpg", "Cubism", _jpeg(_noise((64, 48), cool, 203), progressive=True))
    rotated = Image.fromarray(_noise((64, 32), warm, 204), "RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    odd(bq / "exif-rotated.jpg", "Baroque", img=rotated, exif=exif.tobytes(), quality=90)
    rgba = np.dstack([_noise((48, 48), cool, 205), np.tile(np.linspace(0, 255, 48, dtype=np.uint8), (48, 1))])
    odd(cu / "alpha.webp", "Cubism", img=Image.fromarray(rgba, "RGBA"), lossless=True)
    # Names a shell, a CSV or a terminal can trip over.
    for name, style, seed in [
        ("with spaces in it.png", "Baroque", 206),
        ("café ünïcode 絵画.png", "Cubism", 207),
        ("new\nline.png", "Baroque", 208),
        ("brackets [bold]not markup[red].png", "Cubism", 209),
        ("quote \" and, comma.png", "Baroque", 210),
    ]:
        folder = bq if style == "Baroque" else cu
        odd(folder / name, style, img=Image.fromarray(_noise((48, 40), STYLES[style], seed), "RGB"))

    # Bad files: each must be named with a reason that says what is wrong.
    bad = root / "bad"
    bad.mkdir()

    def bad_file(name: str, data: bytes | None, *words: str) -> Path:
        p = bad / name
        if data is not None:
            p.write_bytes(data)
        c.bad[str(p)] = words
        return p

    good_jpeg = _jpeg(_noise((64, 48), warm, 300))
    buf = io.BytesIO()
    Image.fromarray(_noise((64, 48), cool, 301), "RGB").save(buf, format="PNG")
    bad_file("empty.jpg", b"", "empty")
    bad_file("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "truncated")
    bad_file("truncated.png", buf.getvalue()[: len(buf.getvalue()) // 2], "truncated")
    bad_file("notes.jpg", b"These are my notes about the painting, not the painting.\n" * 10, "text")
    bad_file("page.jpg", b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not found</body></html>\n", "html")
    bad_file("document.jpg", b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n%%EOF\n", "pdf")
    bad_file(
        "vector.svg",
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
        b'<rect width="10" height="10" fill="red"/></svg>\n',
        "svg",
    )
    bad_file("bomb.png", png_bomb(), "too large")
    bad_file("broken\nname with newline.jpg", b"not a jpeg at all, just words\n", "text")
    bad_file("broken [red]markup[blink].jpg", b"\x00\x01\x02 neither a picture", "not an image")
    os.symlink(bad / "loop_b.jpg", bad / "loop_a.jpg")
    os.symlink(bad / "loop_a.jpg", bad / "loop_b.jpg")
    c.bad[str(bad / "loop_a.jpg")] = ("symbolic links",)
    c.bad[str(bad / "loop_b.jpg")] = ("symbolic links",)
    os.symlink(bad, bad / "loop")  # a directory loop: a recursive walk must not follow it
    locked = bq / "no-permission.jpg"
    locked.write_bytes(good_jpeg)
    locked.chmod(0)
    if os.geteuid() == 0:  # root reads anything: for root it is a good Baroque picture
        c.odd[str(locked)] = "Baroque"
    else:
        c.bad[str(locked)] = ("permission denied",)

    rows = [{"path": p, "style": s} for p, s in sorted(c.readable.items())]
    rows += [{"path": p, "style": "Baroque"} for p in sorted(c.bad)]
    rows.append({"path": str(root / "missing.jpg"), "style": "Cubism"})
    c.bad[str(root / "missing.jpg")] = ("not found",)
    c.manifest_csv = root.parent / "corpus.csv"
    with open(c.manifest_csv, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=["path", "style"])
        w.writeheader()
        w.writerows(rows)
    return c


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Corpus:
    c = build_corpus(tmp_path_factory.mktemp("bad-input") / "corpus")
    yield c
    for p in c.root.rglob("*"):  # let pytest clean up the file without permissions
        if not p.is_symlink() and p.is_file():
            p.chmod(0o644)


@dataclass
class Run:
    exit_code: int
    stdout: str
    stderr: str


def cli(*args, columns: int = 80) -> Run:
    """`artlens ARGS` in this process (as the console script runs it); never a traceback."""
    from typer.testing import CliRunner

    from artlens.cli import app

    res = CliRunner(env={"COLUMNS": str(columns)}).invoke(app, [str(a) for a in args], catch_exceptions=True)
    out, err = res.stdout, res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(res.exception))
        pytest.fail(f"artlens {' '.join(map(str, args))} crashed:\n{tb}\nstderr:\n{err}")
    assert "Traceback" not in out + err, err
    return Run(res.exit_code, out, err)


def shown(path: str) -> str:
    from artlens.cli import one_line

    return one_line(path)


def folder_bad(c: Corpus) -> dict[str, tuple]:
    """The bad files a walk of the corpus folder finds (the manifest also names a missing file)."""
    return {p: w for p, w in c.bad.items() if Path(p).name != "missing.jpg"}


def assert_one_line_each(stderr: str, bad: dict[str, tuple], tag: str | None = None) -> None:
    """Each bad file named on exactly one stderr line, with the words of its reason."""
    lines = stderr.splitlines()
    for path, words in bad.items():
        name = shown(path)
        hits = [ln for ln in lines if name + ":" in ln]
        assert len(hits) == 1, f"{name!r}: {len(hits)} lines in\n{stderr}"
        low = hits[0].lower()
        assert all(w in low for w in words), f"{name!r}: reason lacks {words}: {hits[0]!r}"
        if tag:
            assert hits[0].startswith(tag), hits[0]


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------------------------ scan
def test_scan(corpus, tmp_path):
    from artlens.data.manifest import read_manifest

    out = tmp_path / "m.parquet"
    r = cli("scan", corpus.root, "--out", out, "--json")
    assert r.exit_code == 2, r.stderr
    bad = folder_bad(corpus)
    assert_one_line_each(r.stderr, bad, "unreadable ")
    summary = json.loads(r.stdout)
    assert summary["images"] == len(corpus.readable) and summary["unreadable"] == len(bad)
    m = read_manifest(out)
    assert set(m["path"]) == set(corpus.readable)  # the newline name survives Parquet
    assert dict(zip(m["path"], m["style"])) == corpus.readable
    assert not any("/loop/" in p for p in m["path"])  # the directory loop was not followed
    errors = read_csv(tmp_path / "m.errors.csv")  # quoted: a newline in a name is not a new row
    assert {e["path"] for e in errors} == set(bad) and all(e["reason"] for e in errors)
    sizes = dict(zip(m["path"], zip(m["width"], m["height"])))
    assert sizes[str(corpus.root / "Baroque" / "exif-rotated.jpg")] == (32, 64)  # EXIF rotation applied
    assert sizes[str(corpus.root / "Baroque" / "one-pixel.png")] == (1, 1)


def test_scan_as_a_process_under_the_c_locale(corpus):
    """The real console entry point: exit code, one line per bad file, unicode names under LANG=C."""
    import subprocess
    import sys

    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("COLUMNS", None)
    proc = subprocess.run([sys.executable, "-m", "artlens", "scan", str(corpus.root), "--json"], env=env,
                          capture_output=True, timeout=60)
    stderr = proc.stderr.decode("utf-8")
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    assert_one_line_each(stderr, folder_bad(corpus), "unreadable ")
    assert len(stderr.splitlines()) == len(folder_bad(corpus))
    assert json.loads(proc.stdout)["images"] == len(corpus.readable)


def test_scan_of_the_manifest_csv(corpus, tmp_path):
    r = cli("scan", corpus.manifest_csv, "--out", tmp_path / "m.parquet")
    assert r.exit_code == 2, r.stderr
    assert_one_line_each(r.stderr, corpus.bad, "unreadable ")


# ------------------------------------------------------------------------------------ embed
def test_embed(corpus, tmp_path):
    out = tmp_path / "emb"
    r = cli("embed", corpus.root, "--backbone", BACKBONE, "--out", out, "--json", "--batch-size", "8")
    assert r.exit_code == 2, r.stderr
    bad = folder_bad(corpus)
    assert_one_line_each(r.stderr, bad, "skipped ")
    summary = json.loads(r.stdout)
    assert summary["embedded_rows"] == len(corpus.readable) and summary["failed"] == len(bad)
    assert {e["path"] for e in summary["errors"]} == set(bad)
    import pandas as pd

    rows = pd.read_parquet(out / "rows.parquet")
    vectors = np.load(out / "vectors.npy", allow_pickle=False)
    assert set(rows["path"]) == set(corpus.readable) and vectors.shape[0] == len(rows)
    assert np.isfinite(vectors).all()
    # from the manifest CSV: the missing file is named too
    r = cli("embed", corpus.manifest_csv, "--backbone", BACKBONE, "--out", tmp_path / "emb2", "--json", "--workers", "0")
    assert r.exit_code == 2, r.stderr
    assert_one_line_each(r.stderr, corpus.bad, "skipped ")
    assert json.loads(r.stdout)["embedded_rows"] == len(corpus.readable)


# ------------------------------------------------------------------------------------ train
@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("model") / "model"
    r = cli("train", "--mode", "probe", "--backbone", BACKBONE, "--data", corpus.root, "--tasks", "style", "--out", out,
            "--json", "--set", "probe.candidates=[{type: linear, weight_decay: [0.01]}]")
    return r, out


def test_train(corpus, trained):
    from artlens.models.artmodel import ArtModel

    r, out = trained
    assert r.exit_code == 2, r.stderr
    bad = folder_bad(corpus)
    assert_one_line_each(r.stderr, bad, "unreadable ")  # every one named, not the first ten
    payload = json.loads(r.stdout)
    assert payload["unreadable_files"] == len(bad)
    model = ArtModel.load(out)
    assert model.task("style").labels == ["Baroque", "Cubism"]
    counts = model.config["metrics"]
    assert sum(counts[s]["style"]["n"] for s in ("train", "val", "test") if s in counts) == len(corpus.readable)


# ------------------------------------------------------------------------------------ evaluate
def test_evaluate(corpus, trained, tmp_path):
    _, model = trained
    out = tmp_path / "eval"
    r = cli("evaluate", model, corpus.manifest_csv, "--split", "all", "--out", out, "--json", "--gallery", "2")
    assert r.exit_code == 2, r.stderr
    assert_one_line_each(r.stderr, corpus.bad, "unreadable ")
    metrics = json.loads(r.stdout)
    assert metrics["tasks"]["style"]["n"] == len(corpus.readable)
    unreadable = read_csv(out / "unreadable.csv")
    assert {u["path"] for u in unreadable} == set(corpus.bad)
    assert (out / "report.html").is_file()
    # a folder works the same way
    r = cli("evaluate", model, corpus.root, "--split", "all", "--out", tmp_path / "eval2", "--gallery", "0")
    assert r.exit_code == 2, r.stderr
    assert_one_line_each(r.stderr, folder_bad(corpus), "unreadable ")


# ------------------------------------------------------------------------------------ predict
def test_predict(corpus, trained, tmp_path):
    _, model = trained
    out_csv = tmp_path / "p.csv"
    r = cli("predict", corpus.root, corpus.root / "missing.jpg", "--model", model, "--json", "--csv", out_csv)
    assert r.exit_code == 2, r.stderr
    assert_one_line_each(r.stderr, corpus.bad, "skipped ")
    rows = [json.loads(line) for line in r.stdout.splitlines()]  # JSON Lines: one per file, newline names escaped
    by_path = {row["path"]: row for row in rows}
    assert set(by_path) == set(corpus.all_files)
    for p, style in corpus.readable.items():
        assert by_path[p]["error"] is None and by_path[p]["tasks"]["style"]["top"], p
    for p, style in corpus.good.items():
        assert by_path[p]["tasks"]["style"]["label"] == style, p
    for p in corpus.bad:
        assert by_path[p]["error"] and by_path[p]["tasks"] == {}
    table = read_csv(out_csv)
    assert {row["path"] for row in table} == set(corpus.all_files)  # newline names quoted, no split rows
    assert all(bool(row["error"]) == (row["path"] in corpus.bad) for row in table)
    # the table output too: names with brackets are printed, not read as markup
    r = cli("predict", corpus.root / "Cubism", corpus.root / "bad", "--model", model, columns=400)
    assert r.exit_code == 2
    assert "brackets [bold]not markup[red].png" in r.stdout and "broken [red]markup[blink].jpg" in r.stdout


# ------------------------------------------------------------------------------------ explain
def test_explain(corpus, trained, tmp_path):
    from artlens.predict import Predictor

    _, model = trained
    good = sorted(corpus.good)[:2] + sorted(corpus.good)[-2:]
    files = good + sorted(corpus.odd) + sorted(corpus.bad) + [str(corpus.root / "bad" / "loop")]
    out = tmp_path / "explanations"
    r = cli("explain", model, *files, "--out", out, "--json")
    assert r.exit_code == 2, r.stderr
    assert_one_line_each(r.stderr, {**corpus.bad, str(corpus.root / "bad" / "loop"): ("directory",)}, "skipped ")
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert {row["path"] for row in rows} == set(good) | set(corpus.odd)
    predicted = {row["path"]: row["tasks"]["style"]["label"] for row in Predictor(model, thresholds=0.0).predict_paths(good)}
    for row in rows:
        assert Path(row["files"]["png"]).is_file() and Path(row["files"]["npy"]).is_file()
        if row["path"] in predicted:  # Grad-CAM explains the network that predicts
            assert row["predicted"] == predicted[row["path"]] == corpus.good[row["path"]], row["path"]


# ------------------------------------------------------------------------------------ index + similar
@pytest.fixture(scope="module")
def index_dir(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("index") / "index"
    r = cli("index", corpus.root, "--backbone", BACKBONE, "--out", out, "--json")
    return r, out


def test_index(corpus, index_dir):
    from artlens.retrieval import FaissIndex

    r, out = index_dir
    assert r.exit_code == 2, r.stderr  # finished, some inputs unreadable
    bad = folder_bad(corpus)
    assert_one_line_each(r.stderr, bad, "left out ")
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["count"] == len(corpus.readable) and summary["failed"] == len(bad)
    assert set(FaissIndex.load(out).rows["path"]) == set(corpus.readable)


def test_similar(corpus, index_dir):
    _, idx = index_dir
    for path in sorted(corpus.bad) + [str(corpus.root / "bad" / "loop")]:
        r = cli("similar", idx, path, "-k", "3", "--json")
        assert r.exit_code == 1, (path, r.stderr)  # the only input failed: an error, one line
        (line,) = r.stderr.splitlines()
        assert line.startswith("error: ") and shown(path) in line, line
        assert r.stdout == ""
    for path in [sorted(corpus.good)[0], str(corpus.root / "Baroque" / "new\nline.png")]:
        r = cli("similar", idx, path, "-k", "3", "--json")
        assert r.exit_code == 0, r.stderr
        got = json.loads(r.stdout)
        assert got["neighbours"][0]["path"] == path and got["neighbours"][0]["duplicate"]


# ------------------------------------------------------------------------------------ the API
def test_api(corpus, trained, index_dir):
    import mimetypes

    from fastapi.testclient import TestClient

    from artlens.serve.app import create_app

    _, model = trained
    _, idx = index_dir
    app = create_app(model, idx, examples_dir=None, workers=1, warmup=False)
    uploads = {}
    for p in corpus.all_files:
        try:
            uploads[p] = Path(p).read_bytes()
        except OSError:  # symlink loops, missing: nothing to upload (a client-side error)
            assert p in corpus.bad
    with TestClient(app) as client:
        for p, data in uploads.items():
            name = Path(p).name
            ctype = mimetypes.guess_type(name)[0] or "application/octet-stream"
            for url in ("/v1/predict", "/v1/similar?k=3", "/v1/explain?format=json"):
                r = client.post(url, files={"file": (name, data, ctype)})
                if p in corpus.bad:
                    assert r.status_code in (413, 415, 422), (url, name, r.status_code, r.text)
                    body = r.json()
                    assert set(body) == {"error", "detail"} and body["detail"], body
                    assert all(w in body["detail"].lower() for w in corpus.bad[p]), (name, body)
                else:
                    assert r.status_code == 200, (url, name, r.text)
            if p in corpus.good:
                res = client.post("/v1/predict", files={"file": (name, data, ctype)}).json()["results"][0]
                assert res["tasks"]["style"]["label"] == corpus.good[p]
        # several files in one request: each bad one answered in its slot, the good ones answered
        batch = [p for p in uploads if p in corpus.bad][:6] + sorted(corpus.good)[:4]
        r = client.post("/v1/predict", files=[("file", (Path(p).name, uploads[p], "application/octet-stream")) for p in batch])
        assert r.status_code == 200, r.text
        slots = r.json()["results"]
        assert [bool(s["error"]) for s in slots] == [p in corpus.bad for p in batch]
        assert client.get("/healthz").json()["status"] == "ok"  # still serving


# ------------------------------------------------------------------------------------ no read permission
def test_no_read_permission(corpus, monkeypatch):
    """chmod 0 is no obstacle to root: there the PermissionError is raised where the file is opened."""
    import builtins

    import artlens.data.images as images
    import artlens.embed.extract as extract

    locked = str(corpus.root / "Baroque" / "no-permission.jpg")
    if os.geteuid() == 0:
        real_open = builtins.open

        def guarded_open(file, *a, **kw):
            if str(file) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *a, **kw)

        monkeypatch.setattr(images, "open", guarded_open, raising=False)
        monkeypatch.setattr(extract, "open", guarded_open, raising=False)
    with pytest.raises(images.ImageDecodeError, match="permission denied"):
        images.load_image(locked)
    expect = {locked: ("permission denied",)}
    r = cli("scan", corpus.root / "Baroque", "--workers", "1")
    assert r.exit_code == 2 and "no-permission.jpg" not in r.stdout
    assert_one_line_each(r.stderr, expect, "unreadable ")
    r = cli("embed", corpus.root / "Baroque", "--backbone", BACKBONE, "--workers", "0", "--out", corpus.root.parent / "e")
    assert r.exit_code == 2
    assert_one_line_each(r.stderr, expect, "skipped ")
