"""`artlens explain` (Grad-CAM heat maps), `artlens index` and `artlens similar` (similar artworks)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from artlens.cli import EXIT_OK, EXIT_PARTIAL, app, fail, report, shown

MANIFEST_SUFFIXES = {".parquet", ".csv"}


def _err():
    from rich.console import Console

    return Console(stderr=True)


def _fail(msg: str) -> NoReturn:
    fail(_err(), msg)


# --------------------------------------------------------------------------- explain
@app.command()
def explain(
    model: Annotated[Path, typer.Argument(help="Model directory.")],
    images: Annotated[list[Path], typer.Argument(help="Image file(s) to explain.")],
    task: Annotated[Optional[str], typer.Option("--task", "-t", help="Task to explain (default: the model's first).")] = None,
    target: Annotated[Optional[str], typer.Option("--class", "-c", help="Class label to explain (default: the predicted one).")] = None,
    method: Annotated[str, typer.Option("--method", help="gradcam, gradcam++, eigencam or layercam.")] = "gradcam",
    layer: Annotated[
        Optional[str],
        typer.Option("--layer", help="Backbone layer(s), dotted paths, comma separated (a strip of overlays). Default: the backbone's Grad-CAM layer."),
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the overlay PNG, raw map .npy and JSON.")] = Path("explanations"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image on stdout.")] = False,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda (cuda:N) or auto (a GPU when there is one).")] = "auto",
) -> None:
    """Heat map of what the model looked at (pytorch-grad-cam), over the image, plus the raw map."""
    import torch

    from artlens.data.images import ImageDecodeError, load_image
    from artlens.explain.gradcam import ExplainError, Explainer, method_class
    from artlens.models.artmodel import ModelFormatError
    from artlens.models.device import DeviceError, resolve_device

    err = _err()
    try:
        method_class(method)
        explainer = Explainer(model, task=task, device=resolve_device(device))
    except (ModelFormatError, ExplainError, OSError, DeviceError) as exc:
        _fail(str(exc))
    torch.set_grad_enabled(True)

    rows, failed = [], 0
    stems: dict[str, int] = {}
    for path in images:
        try:
            exp = explainer.explain(load_image(path), task=task, target_class=target, method=method, layers=layer)
        except ImageDecodeError as exc:
            failed += 1
            report(err, "skipped", path, exc.reason)
            rows.append({"path": str(path), "error": exc.reason})
            continue
        except ExplainError as exc:  # the same for every image (unknown class or layer): stop here
            _fail(str(exc))
        # Output files are named after the image; two images of one name (in different folders)
        # must not overwrite each other's overlay.
        stem = Path(path).stem
        stems[stem] = stems.get(stem, 0) + 1
        files = exp.save(out, stem if stems[stem] == 1 else f"{stem}-{stems[stem]}")
        row = {"path": str(path), "error": None, **exp.to_dict(), "files": {k: str(v) for k, v in files.items()}}
        rows.append(row)
        if as_json:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            sys.stdout.flush()

    if not as_json:
        from rich.console import Console
        from rich.table import Table

        table = Table(show_lines=False, caption=f"overlays (.png), maps (.npy) and JSON in {shown(out)}")
        for col in ("image", "task", "class", "prob", "predicted", "overlay"):
            table.add_column(col, overflow="fold")
        for r in rows:
            if r["error"]:
                table.add_row(shown(Path(r["path"]).name), "", f"[red]error: {shown(r['error'])}[/red]", "", "", "")
            else:
                table.add_row(
                    shown(Path(r["path"]).name), shown(r["task"]), shown(r["label"]), f"{r['prob']:.1%}",
                    f"{shown(r['predicted'])} {r['predicted_prob']:.0%}", shown(Path(r["files"]["png"]).name),
                )
        Console().print(table)
    if failed:
        err.print(f"{failed} of {len(rows)} image(s) could not be read.")
        raise typer.Exit(EXIT_PARTIAL)
    raise typer.Exit(EXIT_OK)


# --------------------------------------------------------------------------- index
def read_rows(source: Path, errors: list | None = None):
    """A manifest file, or an image folder scanned into one (labels from the folder layout).

    The files a scan could not read are appended to `errors` as (path, reason)."""
    import pandas as pd

    if source.is_file() and source.suffix.lower() in MANIFEST_SUFFIXES:
        try:
            from artlens.data.manifest import read_manifest
        except ModuleNotFoundError:
            read_manifest = None
        if read_manifest is not None and source.suffix.lower() == ".parquet":
            df = read_manifest(source)
        else:
            df = pd.read_parquet(source) if source.suffix.lower() == ".parquet" else pd.read_csv(source)
        if "path" not in df.columns:
            raise ValueError(f"{source}: a manifest needs a 'path' column")
        base = source.parent
        df["path"] = [str(p if Path(p).is_absolute() else base / p) for p in df["path"].astype(str)]
        return df
    if source.is_dir():
        try:
            from artlens.data.manifest import scan
        except ModuleNotFoundError:
            scan = None
        if scan is not None:
            result = scan(source)
            if errors is not None:
                errors.extend(zip(result.errors["path"], result.errors["reason"]))
            return result.manifest
        from artlens.predict import expand_inputs

        return pd.DataFrame({"path": expand_inputs([source])})
    raise ValueError(f"{source}: expected a manifest (.parquet/.csv), an image folder or an embedding store folder")


@app.command()
def index(
    source: Annotated[Path, typer.Argument(help="Manifest (.parquet/.csv), image folder, or an embedding store folder (with --manifest).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Index folder to write (default with --model: MODEL/index).")] = None,
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone whose embeddings are indexed.")] = "clip-vit-b16",
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Use this model's backbone (fine-tuned weights included).")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Rows to index when SOURCE is an embedding store folder.")] = None,
    store: Annotated[Optional[Path], typer.Option("--store", help="Embedding store root (default: the shared cache).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="auto (exact up to 100k vectors, then HNSW), flat or hnsw.")] = "auto",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print the index summary as JSON.")] = False,
) -> None:
    """Build a FAISS index of artworks for `artlens similar` (reuses the embedding store)."""
    from artlens.models.artmodel import ArtModel, ModelFormatError
    from artlens.retrieval.index import RetrievalError, index_embeddings, index_from_store

    err = _err()
    state = pre = None
    if model is not None:
        try:
            art = ArtModel.load(model)
        except ModelFormatError as exc:
            _fail(str(exc))
        backbone = art.backbone_name
        state = art.backbone_state() if art.mode == "finetune" else None
        pre = art.config.get("preprocessing") if state else None
        out = out or model / "index"
    if out is None:
        _fail("give --out DIR (or --model MODEL to write MODEL/index)")
    errors: list[tuple[str, str]] = []  # rows left out: unreadable in the scan, or not embedded
    try:
        if (source / "backbone.json").is_file():
            if manifest is None:
                _fail(f"{source} is an embedding store: give --manifest with the rows to index")
            idx, missing = index_from_store(source, read_rows(manifest, errors), backbone=backbone, kind=kind)
            errors += [(p, "not in the embedding store") for p in missing["path"]]
        else:
            df = read_rows(source, errors)
            if not len(df):
                for path, reason in errors:
                    report(err, "left out", path, reason)
                _fail(f"no images in {source}")
            idx, err_df = index_embeddings(
                df, backbone, store_root=store, backbone_state=state, preprocessing=pre, kind=kind, batch_size=batch_size,
                progress=err.is_terminal,
            )
            errors += list(zip(err_df["path"], err_df["reason"]))
    except (RetrievalError, ValueError, OSError) as exc:
        _fail(str(exc))
    for path, reason in errors:
        report(err, "left out", path, reason)
    if not len(idx):
        _fail("nothing to index: every row failed")
    try:
        idx.save(out)
    except OSError as exc:
        _fail(f"cannot write the index to {out}: {exc}")
    summary = {"index": str(out), "count": len(idx), "kind": idx.kind, "dim": idx.dim,
               "backbone": idx.backbone, "backbone_id": idx.backbone_id, "failed": len(errors)}
    if as_json:
        print(json.dumps(summary))
    else:
        err.print(f"indexed {len(idx)} images ({idx.kind}, {idx.dim}-d, {idx.backbone_id}) -> {shown(out)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_PARTIAL if errors else EXIT_OK)


# --------------------------------------------------------------------------- similar
def _open_index(target: Path, index_dir: Path | None):
    """(FaissIndex, encoder) for an index folder or a model folder (index beside it or --index)."""
    from artlens.models.artmodel import ArtModel
    from artlens.retrieval.index import META_NAME, FaissIndex, RetrievalError, check_encoder, query_encoder

    if (target / META_NAME).is_file() and index_dir is None:
        idx = FaissIndex.load(target)
        return idx, query_encoder(idx)
    if (target / "config.json").is_file():
        from artlens.embed import get_encoder

        art = ArtModel.load(target)
        index_dir = index_dir or target / "index"
        if not (index_dir / META_NAME).is_file():
            raise RetrievalError(
                f"no index at {index_dir}: build one with `artlens index MANIFEST --model {target}` (or pass --index DIR)"
            )
        idx = FaissIndex.load(index_dir)
        state = art.backbone_state() if art.mode == "finetune" else None
        pre = art.config.get("preprocessing") if state else None
        encoder = get_encoder(art.backbone_name, backbone_state=state or None, preprocessing=pre)
        check_encoder(idx, encoder)
        return idx, encoder
    if index_dir is not None:
        idx = FaissIndex.load(index_dir)
        return idx, query_encoder(idx)
    raise RetrievalError(f"{target}: neither an index folder ({META_NAME}) nor a model folder (config.json)")


@app.command()
def similar(
    model_or_index: Annotated[Path, typer.Argument(help="An index folder (`artlens index`), or a model folder with its index beside it.")],
    image: Annotated[Path, typer.Argument(help="The query image.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of neighbours.")] = 5,
    index_dir: Annotated[Optional[Path], typer.Option("--index", help="Index folder (default: MODEL/index).")] = None,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Write a contact sheet PNG (query first) and its JSON.")] = None,
    exclude_duplicates: Annotated[bool, typer.Option("--exclude-duplicates", help="Leave out copies of the query instead of marking them.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the neighbours as JSON.")] = False,
) -> None:
    """The k artworks most like IMAGE, with cosine similarity and labels; copies of it are marked."""
    from artlens.data.images import ImageDecodeError, load_image
    from artlens.embed import file_sha256
    from artlens.models.artmodel import ModelFormatError
    from artlens.retrieval.index import RetrievalError

    try:
        idx, encoder = _open_index(model_or_index, index_dir)
    except (RetrievalError, ModelFormatError, OSError) as exc:
        _fail(str(exc))
    try:
        query = load_image(image)
    except ImageDecodeError as exc:
        _fail(str(exc))
    from artlens.retrieval.index import image_phash

    vector = encoder.embed_images([query])[0]
    neighbours = idx.neighbours(
        vector, k, query_sha256=file_sha256(str(image)), query_phash=image_phash(query), exclude_duplicates=exclude_duplicates
    )
    result = {
        "query": str(image),
        "index": str(index_dir or model_or_index),
        "backbone_id": idx.backbone_id,
        "neighbours": [n.to_dict() for n in neighbours],
    }
    if sheet is not None:
        import io

        from artlens.paths import atomic_write_bytes, atomic_write_text
        from artlens.retrieval.sheet import contact_sheet

        buf = io.BytesIO()
        contact_sheet(query, neighbours, query_caption=image.name).save(buf, format="PNG")
        atomic_write_bytes(sheet, buf.getvalue())
        atomic_write_text(sheet.with_suffix(".json"), json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        result["sheet"] = str(sheet)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print_neighbours(image, neighbours)
        if sheet is not None:
            _err().print(f"contact sheet: {shown(sheet)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK)


def _print_neighbours(image: Path, neighbours) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = [c for c in ("style", "artist", "genre", "origin") if any(c in n.labels for n in neighbours)]
    table = Table(title=f"most similar to {shown(image.name)}")
    table.add_column("#", justify="right")
    table.add_column("cosine", justify="right")
    for c in cols:
        table.add_column(c)
    table.add_column("image", overflow="fold")
    for n in neighbours:
        name = Path(n.path).name if n.path else (n.sha256 or "")[:12]
        sim = f"{n.similarity:.3f}" + (" [red]dup[/red]" if n.duplicate else "")
        table.add_row(str(n.rank), sim, *(shown(n.labels.get(c, "")) for c in cols), shown(name))
    Console().print(table)
