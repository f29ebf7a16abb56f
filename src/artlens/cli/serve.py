"""`artlens serve`: the REST API and the web page."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import app, fail, report, shown


@app.command()
def serve(
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model directory (default: the shipped model).")] = None,
    index: Annotated[Optional[Path], typer.Option("--index", help="Index directory from `artlens index` (enables similar artworks).")] = None,
    collection: Annotated[
        Optional[Path], typer.Option("--collection", metavar="DIR", help="An image folder to serve similar works from: its "
                                     "index (DIR/.artlens-index) is brought up to date first, as `artlens index DIR` "
                                     "does (new files embedded, removed ones dropped). Not with --index.")
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on. Keep 127.0.0.1 unless behind a proxy.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port (0: any free port).")] = 8000,
    max_upload_mb: Annotated[float, typer.Option("--max-upload-mb", min=0.1, help="Largest accepted request body, in MB.")] = 20,
    workers: Annotated[Optional[int], typer.Option(min=1, max=64, help="Worker threads for model work (default: CPU cores, at most 4).")] = None,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds a request may take, queueing included.")] = 60,
    pixel_budget: Annotated[
        float, typer.Option("--pixel-budget", min=1, metavar="MPX", help="Megapixels the server may hold decoded at once, "
                            "all requests together (about 4 MB each); a decode waits for room.")
    ] = 128,
    request_pixel_budget: Annotated[
        float, typer.Option("--request-pixel-budget", min=1, metavar="MPX", help="Megapixels decoded over all the "
                            "pictures of one request; a picture that does not fit is answered 413 in its slot.")
    ] = 256,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", min=0.5, help="Seconds an upload may send nothing before it is dropped (408).")
    ] = 5,
    min_upload_rate: Annotated[
        float, typer.Option("--min-upload-rate", min=0, metavar="KB/S", help="kB/s an upload must average once its "
                            "first --body-timeout seconds are over (each kB buys one more second); slower is "
                            "dropped (408). 0: off.")
    ] = 1.0,
    body_budget_mb: Annotated[
        float, typer.Option("--body-budget-mb", min=1, help="Request-body MB held at once (declared sizes); more waits.")
    ] = 256,
    cors_origin: Annotated[
        list[str], typer.Option("--cors-origin", help="Allow browser calls from this origin (repeatable). Off by default.")
    ] = [],
    allowed_host: Annotated[
        list[str],
        typer.Option(
            "--allowed-host",
            metavar="NAME",
            help="Also answer requests whose Host header is this name (repeatable; NAME or NAME:PORT). Default: the "
            "--host address (and localhost, 127.0.0.1, [::1] on a loopback address) with the port; other Host "
            "headers get 400, so DNS-rebinding pages cannot reach the server. On 0.0.0.0 or :: without "
            "--allowed-host, any Host is answered.",
        ),
    ] = [],
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "info",
) -> None:
    """Serve the API (/v1/predict, /v1/explain, /v1/similar, /v1/models, /docs) and the page at /."""
    import uvicorn
    from rich.console import Console

    from artlens.serve.app import create_app

    if collection is not None and index is not None:
        raise typer.BadParameter("--collection and --index are mutually exclusive: give an image folder "
                                 "(--collection DIR) or a built index (--index DIR), not both")
    err = Console(stderr=True)
    # Fail before binding when the model or the index cannot be loaded (the app loads them at start-up).
    try:
        from artlens import default_model_dir
        from artlens.models.artmodel import ArtModel

        art = ArtModel.load(model or default_model_dir())
        if index is not None and not index.is_dir():
            raise ValueError(f"{index}: not an index directory")
    except (ValueError, OSError) as exc:
        fail(err, exc)
    backend = predictor = None
    if collection is not None:
        backend, predictor = _open_collection(err, collection, art)
        model = model or default_model_dir()  # the model card is read from there
    if not _is_loopback(host):
        err.print(
            f"[yellow]note:[/yellow] listening on {host}: anyone who can reach this address can use the server "
            "(there is no authentication)."
        )

    application = create_app(
        model,
        index,
        predictor=predictor,
        index=backend,
        max_upload_mb=max_upload_mb,
        workers=workers,
        timeout_s=timeout,
        pixel_budget=int(pixel_budget * 1_000_000),
        request_pixel_budget=int(request_pixel_budget * 1_000_000),
        body_timeout_s=body_timeout,
        min_upload_rate_kb=min_upload_rate,
        body_budget_mb=body_budget_mb,
        cors_origins=cors_origin or None,
        allowed_hosts=allowed_hosts(host, port, allowed_host),
    )
    where = f"http://{host}:{port}/" if port else f"{host} on a free port (uvicorn names it below)"
    err.print(f"artlens: loading the model, then serving on {where}  (API docs at /docs)")
    try:
        # Keep-alive and concurrency limits at the HTTP level too; the app bounds the model work.
        uvicorn.run(application, host=host, port=port, log_level=log_level, timeout_keep_alive=5, limit_concurrency=1024)
    except SystemExit as exc:  # uvicorn exits 3 when start-up fails (index unreadable, port in use)
        if exc.code not in (0, None):
            fail(err, "the server could not start (see the log above)")
    except Exception as exc:
        fail(err, exc)


def _open_collection(err, folder: Path, art):
    """The collection's index brought up to date (`artlens.retrieval.index_collection`, progress on
    stderr), as the server's similar backend, and a predictor factory sharing its encoder."""
    from artlens.predict import Predictor
    from artlens.retrieval import RetrievalError
    from artlens.serve.collection import open_collection, summary_line
    from artlens.serve.state import TOP_K_MAX

    err.print(f"artlens: bringing the index of {shown(folder)} up to date (new files are embedded; the first run "
              "takes a while)", highlight=False, soft_wrap=True)
    try:
        backend, update = open_collection(folder, art, progress=err.is_terminal)
    except (RetrievalError, ValueError, OSError) as exc:
        fail(err, exc)
    for path, reason in update.errors:
        report(err, "left out", path, reason)
    for note in update.notes:
        err.print(f"note: {shown(note)}", highlight=False, soft_wrap=True)
    err.print(shown(summary_line(update)), highlight=False, soft_wrap=True)
    return backend, lambda: Predictor(art, top_k=TOP_K_MAX, encoder=backend.encoder)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(host: str, port: int, extra: list[str]) -> list[str] | None:
    """The Host header values `serve` answers (None: any). Port 0 picks a free port, not known
    here, so the names then go without one."""
    if host in ("0.0.0.0", "::", "") and not extra:
        return None
    names = [] if host in ("0.0.0.0", "::", "") else [f"[{host}]" if ":" in host else host]
    if _is_loopback(host):
        names += ["localhost", "127.0.0.1", "[::1]"]
    suffix = f":{port}" if port else ""
    return list(dict.fromkeys([n + suffix for n in names] + list(extra)))
