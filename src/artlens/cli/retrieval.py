"""`artlens index` (a collection's index, kept beside it and updated in place) and `artlens similar`
(the works most like an image, by style, artist or look): thin commands over artlens.retrieval."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import EXIT_OK, EXIT_PARTIAL, app, fail, report, shown

BY_HELP = "style (works of the same style, the default), artist (the same hand), visual (raw CLIP look-alikes) or features."


def _err():
    from rich.console import Console

    return Console(stderr=True)


@app.command()
def index(
    source: Annotated[Path, typer.Argument(help="Image folder, manifest (.parquet/.csv), or an embedding store folder (with --manifest).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Index folder (default: SOURCE/.artlens-index, or MODEL/index with --model).")] = None,
    by: Annotated[Optional[str], typer.Option("--by", help="Default search mode of the index: " + BY_HELP)] = None,
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone whose embeddings are indexed.")] = "clip-vit-b16",
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Use this model's backbone (fine-tuned weights included).")] = None,
    manifest: Annotated[Optional[Path], typer.Option("--manifest", help="Rows to index when SOURCE is an embedding store folder.")] = None,
    store: Annotated[Optional[Path], typer.Option("--store", help="Embedding store root (default: the shared cache).")] = None,
    kind: Annotated[str, typer.Option("--kind", help="auto (exact up to 100k vectors, then HNSW), flat or hnsw.")] = "auto",
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per batch (default: 32 "
                                                      "on the CPU, more on a GPU).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the index summary as JSON.")] = False,
    engine: Annotated[str, typer.Option("--engine", help="local (this machine) or ray (new files embedded by a Ray "
                                        "Data pipeline: a local Ray, or a cluster with --address). The same index.")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="--engine ray: the cluster (auto, ray://HOST:10001); "
                                                   "default: RAY_ADDRESS, else a local Ray.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="--engine ray: model actors, one CPU each (default 2).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda (cuda:N) or auto (a GPU when there is one); "
                                        "with --engine ray, cuda gives each actor a GPU.")] = "auto",
) -> None:
    """Index a collection for `artlens similar`: new files are embedded (with progress), unchanged
    ones keep their vectors (by content hash), removed ones drop out."""
    from artlens.cli.predict import engine_options, worker_device
    from artlens.embed import get_encoder, model_encoder
    from artlens.engine import EngineError
    from artlens.models.artmodel import ArtModel, ModelFormatError
    from artlens.models.device import resolve_device
    from artlens.retrieval import RetrievalError, index_collection, index_from_store, read_rows

    err = _err()
    options = engine_options(engine, address, workers, batch_size, device)
    if options is None and workers is not None:
        raise typer.BadParameter("--workers needs --engine ray (the local engine uses this process's cores)")
    encoder, embedder, finetuned, art = None, None, False, None
    is_store = (source / "backbone.json").is_file()
    try:
        # with --engine ray the encoder runs on the workers: this machine's devices do not matter
        device = resolve_device(device) if options is None else worker_device(options)
        if model is not None:
            art = ArtModel.load(model)
            backbone, finetuned = art.backbone_name, bool(art.backbone_state())
            out = out or model / "index"
        if options is not None and not is_store:  # the model loads on the workers
            from artlens.engine import RayEmbedder

            embedder = (RayEmbedder.for_model(art, device=device, options=options) if art
                        else RayEmbedder(backbone, device=device, options=options))
        elif art is not None:
            encoder = model_encoder(art, device=device)
        elif not is_store:
            encoder = get_encoder(backbone, device=device)
        if is_store:
            if manifest is None:
                fail(err, f"{source} is an embedding store: give --manifest with the rows to index")
            if out is None:
                fail(err, "give --out DIR for an index of an embedding store")
            errors: list = []
            idx, missing = index_from_store(source, read_rows(manifest, errors), backbone=backbone, kind=kind,
                                            default_mode=by or "auto")
            errors += [(p, "not in the embedding store") for p in missing["path"]]
            idx.save(out)
            summary = {"index": str(out), "count": len(idx), "kind": idx.kind, "dim": idx.dim, "backbone": idx.backbone,
                       "backbone_id": idx.backbone_id, "modes": idx.modes, "default_mode": idx.default_mode,
                       "failed": len(errors)}
        else:
            update = index_collection(source, out, backbone=backbone, encoder=encoder, embedder=embedder, finetuned=finetuned,
                                      default_mode=by, store_root=store, kind=kind,
                                      batch_size=batch_size or getattr(encoder, "batch_size", 32),  # the device's
                                      progress=err.is_terminal)
            errors, summary = update.errors, update.to_dict()
    except (ModelFormatError, RetrievalError, EngineError, ValueError, OSError) as exc:
        fail(err, exc)
    for path, reason in errors:
        report(err, "left out", path, reason)
    for note in summary.get("notes", []):
        err.print(f"note: {shown(note)}", highlight=False, soft_wrap=True)
    if as_json:
        print(json.dumps(summary))
    else:
        change = f" (+{summary['added']} new, {summary['kept']} kept, -{summary['removed']} removed)" if "added" in summary else ""
        err.print(f"indexed {summary['count']} images{change}, searched by {summary['default_mode']} "
                  f"(modes: {', '.join(summary['modes'])}) -> {shown(summary['index'])}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_PARTIAL if errors else EXIT_OK)


@app.command()
def similar(
    target: Annotated[Path, typer.Argument(help="An index folder, a collection folder indexed with `artlens index`, or a model folder with its index beside it.")],
    image: Annotated[Path, typer.Argument(help="The query image.")],
    k: Annotated[int, typer.Option("-k", "--k", min=1, help="Number of neighbours.")] = 5,
    by: Annotated[Optional[str], typer.Option("--by", help=BY_HELP + " Default: the index's own.")] = None,
    index_dir: Annotated[Optional[Path], typer.Option("--index", help="Index folder (default: MODEL/index).")] = None,
    sheet: Annotated[Optional[Path], typer.Option("--sheet", help="Write a contact sheet PNG (query first) and its JSON.")] = None,
    exclude_duplicates: Annotated[bool, typer.Option("--exclude-duplicates", help="Leave out copies of the query instead of marking them.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the neighbours as JSON.")] = False,
) -> None:
    """The k artworks most like IMAGE, with their similarity and labels; copies of it are marked."""
    from artlens.data.images import ImageDecodeError, load_image
    from artlens.models.artmodel import ModelFormatError
    from artlens.retrieval import RetrievalError, default_index_dir, open_index, similar as find_similar, write_sheet
    from artlens.retrieval.index import META_NAME

    err = _err()
    if target.is_dir() and index_dir is None and not (target / META_NAME).is_file() and not (target / "config.json").is_file():
        index_dir = default_index_dir(target)  # a collection folder: its index beside it
        if not (index_dir / META_NAME).is_file():
            fail(err, f"{target} has no index: build one with `artlens index {target}`")
    try:
        idx, encoder = open_index(target, index_dir)
        mode = idx.mode(by)
        query = load_image(image)
        neighbours = find_similar(idx, image, k, by=mode, encoder=encoder, exclude_duplicates=exclude_duplicates)
    except (RetrievalError, ModelFormatError, ImageDecodeError, ValueError, OSError) as exc:
        fail(err, exc)
    result = {"query": str(image), "index": str(index_dir or target), "by": mode, "backbone_id": idx.backbone_id,
              "neighbours": [n.to_dict() for n in neighbours]}
    if sheet is not None:
        write_sheet(sheet, query, neighbours, result, query_caption=image.name)
        result["sheet"] = str(sheet)
    if as_json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        _print_neighbours(image, neighbours, mode)
        if sheet is not None:
            err.print(f"contact sheet: {shown(sheet)}", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK)


def _print_neighbours(image: Path, neighbours, mode: str) -> None:
    from rich.console import Console
    from rich.table import Table

    cols = [c for c in ("style", "artist", "genre", "origin") if any(c in n.labels for n in neighbours)]
    table = Table(title=f"most similar to {shown(image.name)} (by {mode})")
    table.add_column("#", justify="right")
    table.add_column("similarity", justify="right")
    for c in cols:
        table.add_column(c)
    table.add_column("image", overflow="fold")
    for n in neighbours:
        name = Path(n.path).name if n.path else (n.sha256 or "")[:12]
        sim = f"{n.similarity:.3f}" + (" [red]dup[/red]" if n.duplicate else "")
        table.add_row(str(n.rank), sim, *(shown(n.labels.get(c, "")) for c in cols), shown(name))
    Console().print(table)
