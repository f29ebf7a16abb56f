"""`artlens evaluate` (metrics, plots and an HTML report) and `artlens curves` (training curves)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import EXIT_OK, EXIT_PARTIAL, app, fail, report, shown


@app.command()
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model directory (config.json + model.safetensors).")],
    data: Annotated[Path, typer.Argument(help="Manifest (.parquet/.csv) or a folder of images (scanned).")],
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder (default: eval-<model name>).")] = None,
    split: Annotated[str, typer.Option("--split", help="Rows of this split when the manifest has a split column; 'all' for every row.")] = "test",
    robustness: Annotated[bool, typer.Option("--robustness", help="Re-score human-vs-AI after JPEG, resize, crop and PNG re-saving.")] = False,
    robustness_max: Annotated[int, typer.Option("--robustness-max", min=0, help="At most this many images (stratified sample) for --robustness; 0 for all.")] = 600,
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="Also report per value of this manifest column (e.g. generator).")] = None,
    logs: Annotated[Optional[Path], typer.Option("--logs", help="Lightning metrics.csv or a folder holding one (default: searched in the model directory).")] = None,
    gallery: Annotated[int, typer.Option("--gallery", min=0, help="Images per gallery of confident mistakes/successes.")] = 12,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 32,
    as_json: Annotated[bool, typer.Option("--json", help="Print metrics.json to stdout instead of the table.")] = False,
) -> None:
    """Score a model on labelled images: metrics.json, plots, outliers.csv and a self-contained report.html."""
    from rich.console import Console

    from artlens.evaluate.pipeline import EvaluateError
    from artlens.evaluate.pipeline import evaluate as run
    from artlens.models.artmodel import ModelFormatError

    err = Console(stderr=True)
    out_dir = out or Path(f"eval-{model.resolve().name}")
    try:
        res = run(
            model, data, out_dir, split=split, robustness=robustness, group_by=group_by, logs=logs,
            robustness_max=robustness_max or None, gallery_size=gallery, batch_size=batch_size,
            progress=err.is_terminal,
        )
    except (EvaluateError, ModelFormatError, FileNotFoundError, ValueError) as exc:
        fail(err, exc)

    for warning in res.metrics.get("warnings", []):
        err.print(f"[yellow]warning:[/yellow] {shown(warning)}", highlight=False, soft_wrap=True)
    for row in (res.errors.to_dict(orient="records") if res.n_failed else []):
        report(err, "unreadable", row["path"], row["reason"])
    if as_json:
        sys.stdout.write((res.out_dir / "metrics.json").read_text(encoding="utf-8"))
    else:
        _print_summary(res.metrics)
        Console().print(f"report: [bold]{shown(res.files.get('report', res.out_dir))}[/bold]", soft_wrap=True)
    if res.n_failed:
        err.print(f"{res.n_failed} image(s) could not be read (see {shown(res.out_dir / 'unreadable.csv')}).", highlight=False, soft_wrap=True)
        raise typer.Exit(EXIT_PARTIAL)
    raise typer.Exit(EXIT_OK)


def _print_summary(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}%"

    def num(v):
        return "-" if v is None else f"{v:.3f}"

    table = Table(title="evaluation")
    for c in ("task", "images", "accuracy", "balanced acc.", "macro F1", "weighted F1", "ECE", "coverage"):
        table.add_column(c, justify="left" if c == "task" else "right")
    for name, m in metrics["tasks"].items():
        if m.get("skipped"):
            table.add_row(name, "0", f"[yellow]{m['skipped']}[/yellow]", "", "", "", "", "")
            continue
        table.add_row(name, str(m["n"]), pct(m["accuracy"]), pct(m["balanced_accuracy"]), num(m["macro_f1"]),
                      num(m["weighted_f1"]), num(m["ece"]), pct(m["coverage"]))
    console = Console()
    console.print(table)
    rb = metrics.get("robustness")
    if rb and "conditions" in rb:
        t2 = Table(title=f"AI detection robustness ({rb['rows']} images)")
        for c in ("condition", "AUC", "accuracy", "AI recall", "FPR on human"):
            t2.add_column(c, justify="left" if c == "condition" else "right")
        for c, v in rb["conditions"].items():
            t2.add_row(c, num(v["auc"]), pct(v["accuracy"]), pct(v["tpr_ai"]), pct(v["fpr_human"]))
        console.print(t2)
    elif rb:
        Console(stderr=True).print(f"[yellow]robustness:[/yellow] {rb.get('error')}")


@app.command()
def curves(
    logs: Annotated[Path, typer.Argument(help="Lightning CSVLogger metrics.csv, or a folder holding one (newest is used).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG to write.")] = Path("training_curves.png"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the per-epoch values as JSON.")] = False,
) -> None:
    """Plot train/val loss and accuracy per epoch from a training log."""
    from rich.console import Console

    from artlens.evaluate import plots
    from artlens.evaluate.curves import CurvesError, curve_groups, find_metrics_csv, read_epoch_metrics, summarise

    err = Console(stderr=True)
    csv = find_metrics_csv(logs)
    if csv is None:
        fail(err, f"{logs}: no metrics.csv found")
    try:
        per_epoch = read_epoch_metrics(csv)
    except CurvesError as exc:
        fail(err, exc)
    groups = curve_groups(per_epoch)
    if not any(groups.values()):
        fail(err, f"{csv}: no loss or accuracy columns ({', '.join(per_epoch.columns)})")
    plots.curves_png(per_epoch, groups, out)
    if as_json:
        sys.stdout.write(json.dumps({"source": str(csv), "png": str(out), **summarise(per_epoch)}) + "\n")
    else:
        Console().print(f"{len(per_epoch)} epoch(s) from {csv} -> [bold]{out}[/bold]", highlight=False, soft_wrap=True)
    raise typer.Exit(EXIT_OK)
