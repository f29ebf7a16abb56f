"""`artlens explain`: Grad-CAM heat maps of what the model looked at."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer

from artlens.cli import EXIT_OK, EXIT_PARTIAL, app, fail, report, shown


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
