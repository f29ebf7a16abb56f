"""`artlens embed`: a manifest or a folder -> cached embeddings + an export with their rows."""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, app, fail, report
from artlens.data.rows import read_rows


@app.command()
def embed(
    source: Annotated[Path, typer.Argument(help="A manifest (.parquet/.csv), or a folder of images (scanned first).")],
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Registry backbone name.")] = "clip-vit-b16",
    store: Annotated[Optional[Path], typer.Option("--store", help="Embedding store root (default: <cache>/embeddings).")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per encoder call "
                                                      "(default: 32 on the CPU, more on a GPU).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda (cuda:N) or auto (a GPU when there is one).")] = "auto",
    workers: Annotated[int, typer.Option("--workers", min=0, help="Decoding processes (0: decode in this process); "
                                         "with --engine ray, model actors (one CPU each).")] = 2,
    out: Annotated[
        Optional[Path],
        typer.Option("--out", "-o", help="Export: NAME.npy (+ NAME.rows.parquet, NAME.json), NAME.parquet, or a directory. "
                     "Default: ./<source>-<backbone>-embeddings/"),
    ] = None,
    layout: Annotated[Optional[str], typer.Option("--layout", help="Folder layout for scanning (default: detect).")] = None,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: when stderr is a terminal).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON on stdout.")] = False,
    flush_s: Annotated[float, typer.Option("--flush-every", min=0, help="Seconds between saves of finished vectors "
                                           "(also every 256); 0: by count only.")] = 30.0,
    engine: Annotated[str, typer.Option("--engine", help="local (this machine) or ray (a Ray Data pipeline: a local "
                                        "Ray, or a cluster with --address). Same vectors, same store.")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="--engine ray: the cluster (auto, ray://HOST:10001); "
                                                   "default: RAY_ADDRESS, else a local Ray.")] = None,
) -> None:
    """Embed images with a backbone, reusing every vector already in the store."""
    from rich.console import Console

    from artlens.cli.predict import engine_options, worker_device
    from artlens.embed import embed_manifest
    from artlens.embed.export import save_embeddings
    from artlens.models.backbones import get_spec
    from artlens.models.device import default_batch_size, resolve_device

    err = Console(stderr=True)
    options = engine_options(engine, address, max(1, workers), batch_size, device)
    try:  # with --engine ray the encoder runs on the workers: this machine's devices do not matter
        device = resolve_device(device) if options is None else worker_device(options)
    except ValueError as exc:  # "no CUDA device: ...", one line
        fail(err, exc)
    show = err.is_terminal if progress is None else progress
    try:
        df, scan_errors = read_rows(source, layout=layout, progress=show, image=True)
    except Exception as exc:  # a bad manifest or source is one clear line, not a traceback
        fail(err, exc)
    if len(df) == 0:
        fail(err, f"no images in {source}")

    try:
        if options is None:
            size = batch_size or default_batch_size(device, get_spec(backbone).kind)
            result = embed_manifest(df, backbone, store_root=store, batch_size=size, workers=workers, progress=show,
                                    device=device, flush_s=flush_s or None)
        else:
            from artlens.engine import ray_embed_manifest

            result = ray_embed_manifest(df, backbone, store_root=store, options=options, device=device, progress=show,
                                        flush_s=flush_s or None)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]: the vectors computed so far are saved; run the same command to resume")
        raise typer.Exit(EXIT_ERROR)
    except Exception as exc:  # unknown backbone, missing weights...
        fail(err, exc)
    vectors, ok, errors = result
    stats = result.stats

    failures = [(r.path, r.reason) for r in errors.itertuples()]
    if scan_errors is not None and len(scan_errors):
        failures = [(r.path, r.reason) for r in scan_errors.itertuples()] + failures
    for path, reason in failures:  # one line each, even for names with newlines in them
        report(err, "skipped", path, reason)

    if out is None:
        slug = re.sub(r"[^A-Za-z0-9._-]+", "_", source.resolve().stem or "images")
        out = Path.cwd() / f"{slug}-{backbone}-embeddings"
    rows = df.loc[ok].copy()
    if "sha256" not in rows.columns:
        rows["sha256"] = [h for h, good in zip(result.hashes, ok) if good]
    info = {
        "backbone": backbone,
        "backbone_id": stats.backbone_id,
        "source": str(source.resolve()),
        "failed": len(failures),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        save_embeddings(out, rows, vectors[ok], info)
    except OSError as exc:
        fail(err, f"cannot write {out}: {exc}")

    summary = {
        "source": str(source),
        "backbone": backbone,
        "backbone_id": stats.backbone_id,
        "dim": stats.dim,
        "rows": stats.rows,
        "embedded_rows": int(ok.sum()),
        "unique_images": stats.unique,
        "computed": stats.computed,
        "reused": stats.reused,
        "failed": len(failures),
        "seconds": round(stats.seconds, 2),
        "images_per_s": round(stats.images_per_s, 2),
        "out": str(out),
        "store": str(store) if store else None,
        "errors": [{"path": p, "reason": r} for p, r in failures],
    }
    if as_json:
        sys.stdout.write(json.dumps(summary, ensure_ascii=False) + "\n")
    else:
        from rich.table import Table

        table = Table(title=f"artlens embed: {backbone}", show_header=False)
        table.add_column(style="bold")
        table.add_column()
        for key in ("rows", "embedded_rows", "unique_images", "computed", "reused", "failed", "seconds", "images_per_s", "dim", "backbone_id", "out"):
            table.add_row(key.replace("_", " "), str(summary[key]))
        Console().print(table)
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)
