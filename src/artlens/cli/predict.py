"""`artlens predict`: what is this artwork?"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, app, fail, report, shown


def _parse_thresholds(values: list[str]) -> dict[str, float] | float | None:
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return float(values[0])
    out = {}
    for v in values:
        task, _, num = v.partition("=")
        if not num:
            raise typer.BadParameter(f"expected TASK=VALUE or one number, got {v!r}")
        out[task.strip()] = float(num)
    return out


@app.command()
def predict(
    paths: Annotated[list[Path], typer.Argument(help="Images, folders (searched recursively) or manifests (.parquet/.csv).")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model directory (default: the shipped model).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels shown per task.")] = 3,
    threshold: Annotated[
        list[str],
        typer.Option("--threshold", help="Override the 'unsure' threshold: one number for all tasks, or TASK=VALUE (repeatable)."),
    ] = [],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image (JSON Lines) on stdout.")] = False,
    csv: Annotated[Optional[Path], typer.Option("--csv", help="Also write the results to this CSV file.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Images per encoder call "
                                                      "(default: 32 on the CPU, more on a GPU).")] = None,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda (cuda:N) or auto (a GPU when there is one).")] = "auto",
    engine: Annotated[str, typer.Option("--engine", help="local (this process) or ray (a Ray Data pipeline: "
                                        "a local Ray, or a cluster with --address). Same answers, same output.")] = "local",
    address: Annotated[Optional[str], typer.Option("--address", help="--engine ray: the cluster (auto, ray://HOST:10001); "
                                                   "default: RAY_ADDRESS, else a local Ray.")] = None,
    workers: Annotated[Optional[int], typer.Option("--workers", min=1, help="--engine ray: model actors, one CPU each (default 2).")] = None,
) -> None:
    """Classify images: per task the top-k labels with calibrated probabilities, or `unsure`."""
    from rich.console import Console

    from artlens.models.artmodel import ModelFormatError
    from artlens.models.device import resolve_device
    from artlens.predict import Predictor, expand_inputs

    err = Console(stderr=True)
    options = engine_options(engine, address, workers, batch_size, device)
    if options is None and workers is not None:
        raise typer.BadParameter("--workers needs --engine ray (the local engine uses this process's cores)")
    thresholds = _parse_thresholds(threshold)
    try:
        # with --engine ray the model runs on the workers: this machine's devices do not matter
        predictor = Predictor(model, top_k=top_k, thresholds=thresholds,
                              device=resolve_device(device) if options is None else "cpu")
        files = expand_inputs(paths)
    except (ModelFormatError, ValueError, OSError) as exc:  # DeviceError ("no CUDA device") is a ValueError
        fail(err, exc)
    if not files:
        fail(err, "no images found in " + ", ".join(map(str, paths)))
    if options is None:
        try:  # the encoder loads lazily: a model that cannot load is one error, not one per image
            predictor.encoder
        except Exception as exc:
            from artlens import default_model_dir

            fail(err, f"cannot load model {model or default_model_dir()}: {exc or type(exc).__name__}")

    results = []
    failed = total = 0
    # --json alone streams: rows are kept only for the table or the CSV (a collection-sized run
    # with --json holds no more than the rows in flight)
    keep = csv is not None or not as_json
    show_progress = len(files) > 8 and err.is_terminal
    if show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(
            TextColumn("predicting"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=err
        )
        progress.start()
        job = progress.add_task("predict", total=len(files))
        on_progress = lambda n: progress.advance(job, n)  # noqa: E731
    else:
        progress, on_progress = None, None
    if options is None:
        rows = predictor.iter_predict(files, batch_size=batch_size, on_progress=on_progress)
    else:  # the model loads on the workers: one that cannot load there is one EngineError
        from artlens.engine import ray_iter_predict

        rows = ray_iter_predict(files, predictor.model, top_k=top_k, thresholds=thresholds, options=options,
                                device=worker_device(options), on_progress=on_progress)
    try:
        for row in engine_rows(err, rows):
            if row["error"]:
                failed += 1
                report(err, "skipped", row["path"], row["error"])
            if as_json:
                sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
                sys.stdout.flush()
            total += 1
            if keep:
                results.append(row)
    finally:
        if progress is not None:
            progress.stop()

    # Attached tasks (origin's generator family) are reported inside their parent task's answer.
    shown_tasks = [t for t in predictor.model.tasks if not t.attach]
    names = [t.name for t in shown_tasks]
    attached = {t.name: [a.attach["key"] for a in predictor.model.tasks if a.attach and a.attach["task"] == t.name]
                for t in shown_tasks}
    banded = {t.name for t in shown_tasks if t.band}
    if csv is not None:
        _write_csv(csv, results, names, attached, {t.name for t in shown_tasks if t.band or t.withhold})
    if not as_json:
        _print_table(results, names, attached, banded)
    if failed:
        err.print(f"{failed} of {total} file(s) could not be read.")
        raise typer.Exit(EXIT_ERROR if failed == total else EXIT_PARTIAL)
    raise typer.Exit(EXIT_OK)


def engine_options(engine: str, address: str | None, workers: int | None, batch_size: int | None,
                   device: str = "cpu"):
    """`RayOptions` for `--engine ray` (32 images per batch unless given), None for the local engine;
    options that only Ray takes are a usage error without it. With Ray, `--device cuda` gives each
    actor a GPU (Ray picks which: inside an actor it is `cuda`); `auto` and `cpu` run on the
    workers' CPUs (the driver cannot see the cluster's GPUs)."""
    engine = engine.strip().lower()
    if engine not in ("local", "ray"):
        raise typer.BadParameter(f"--engine is local or ray, not {engine!r}")
    if engine == "local":
        if address is not None:
            raise typer.BadParameter("--address needs --engine ray")
        return None
    from artlens.engine import RayOptions

    return RayOptions(address=address or None, workers=workers or 2, batch_size=batch_size or 32,
                      gpus_per_worker=1.0 if device.strip().lower().startswith("cuda") else 0.0)


def worker_device(options) -> str:
    """The device the Ray actors run the model on."""
    return "cuda" if options.gpus_per_worker else "cpu"


def engine_rows(err, rows):
    """`rows`, with a failed Ray run (no ray installed, cluster gone, model not loadable there) one error line."""
    from artlens.engine import EngineError

    try:
        yield from rows
    except EngineError as exc:
        fail(err, exc)


def _fmt_task(res: dict, keys: list[str] = (), compact: bool = False) -> str:
    """One table cell. `keys`: attached answers in `res` (origin's `family`); `compact`: one line
    (a two-sided answer, whose other label is only the complement)."""
    top = res["top"]
    head = top[0]
    reason = res.get("reason")
    if res["label"] != head["label"]:  # unsure, or an open-set "unknown"
        guess = f"{head['label']} {head['prob']:.0%}"
        if reason:
            first = f"[yellow]{res['label']}[/yellow] [dim]({guess}): {shown(reason)}[/dim]"
        else:
            first = f"[yellow]{res['label']}[/yellow] [dim](best guess {guess})[/dim]"
    else:
        first = f"[bold]{head['label']}[/bold] {head['prob']:.0%}"
        for key in keys:
            if res.get(key):  # at most two: the CSV has them all
                listed = ", ".join(f"{x['label']} {x['prob']:.0%}" for x in res[key][:2])
                first += f" [dim]({key}: {listed})[/dim]"
    rest = "" if compact else ", ".join(f"{t['label']} {t['prob']:.0%}" for t in top[1:])
    return first + (f"\n[dim]{rest}[/dim]" if rest else "")


def _print_table(results: list[dict], tasks: list[str], attached: dict[str, list[str]] | None = None,
                 banded: set[str] = frozenset()) -> None:
    from rich.console import Console
    from rich.table import Table

    attached = attached or {}
    table = Table(show_lines=True)
    table.add_column("image", overflow="fold", max_width=40)
    for t in tasks:
        table.add_column(t)
    for r in results:
        name = shown(Path(r["path"]).name)
        if r["error"]:
            table.add_row(name, *([f"[red]error: {shown(r['error'])}[/red]"] + [""] * (len(tasks) - 1)))
        else:
            table.add_row(name, *(_fmt_task(r["tasks"][t], attached.get(t, []), t in banded or bool(attached.get(t)))
                                  for t in tasks))
    Console().print(table)


def _write_csv(path: Path, results: list[dict], tasks: list[str], attached: dict[str, list[str]] | None = None,
               with_reason: set[str] = frozenset()) -> None:
    import csv as csvmod
    import io

    from artlens.paths import atomic_write_text

    attached = attached or {}
    buf = io.StringIO()
    cols = ["path", "error"]
    for t in tasks:
        cols += [f"{t}", f"{t}_prob", f"{t}_unsure", f"{t}_top"]
        for key in attached.get(t, []):
            cols += [f"{t}_{key}", f"{t}_{key}_top"]
        # Tasks that can give a reason (a banded task's unsure answer, a withheld one) always have the
        # column; any other task that gives one gets it too.
        if t in with_reason or any("reason" in r["tasks"].get(t, {}) for r in results):
            cols.append(f"{t}_reason")
    w = csvmod.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in results:
        row = {"path": r["path"], "error": r["error"] or ""}
        for t in tasks:
            res = r["tasks"].get(t)
            if res:
                row[t] = res["label"]
                row[f"{t}_prob"] = res["top"][0]["prob"]
                row[f"{t}_unsure"] = res["unsure"]
                row[f"{t}_top"] = _pairs(res["top"])
                for key in attached.get(t, []):
                    if res.get(key):
                        row[f"{t}_{key}"] = res[key][0]["label"]
                        row[f"{t}_{key}_top"] = _pairs(res[key])
                if res.get("reason"):
                    row[f"{t}_reason"] = res["reason"]
        w.writerow(row)
    atomic_write_text(path, buf.getvalue())


def _pairs(items: list[dict]) -> str:
    return ";".join(f"{x['label']}:{x['prob']}" for x in items)
