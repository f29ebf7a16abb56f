"""`artlens train`: heads on cached embeddings (probe) or a Lightning fine-tune, from a recipe."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import EXIT_ERROR, EXIT_OK, EXIT_PARTIAL, app, fail, report, shown


def _overrides(mode, data, tasks, out, backbone, epochs, batch_size, lr, seed, devices, strategy, num_nodes,
               accelerator, sets, as_json=False) -> dict:
    from artlens.train.config import parse_overrides

    o: dict = {}
    flags = {
        "mode": mode, "out": str(out) if out else None, "backbone.name": backbone, "seed": seed,
        "finetune.epochs": epochs, "finetune.batch_size": batch_size, "finetune.optimizer.lr": lr,
        "finetune.devices": devices, "finetune.strategy": strategy, "finetune.num_nodes": num_nodes,
        "finetune.accelerator": accelerator,
    }
    o.update({k: v for k, v in flags.items() if v is not None})
    if data:
        o["data.sources"] = list(data)
    if tasks:
        o["tasks"] = tasks
    if as_json:  # progress bars write to stdout: keep it for the JSON
        o["finetune.progress"] = "none"
    o.update(parse_overrides(sets))  # --set wins over everything
    return o


def _merge_tasks(recipe_tasks: list[dict], names: str) -> list:
    """`--tasks style,genre`: keep the recipe's settings for tasks it already defines."""
    by_name = {t["name"]: t for t in recipe_tasks}
    return [by_name.get(n.strip(), n.strip()) for n in names.split(",") if n.strip()]


@app.command()
def train(
    recipe: Annotated[Optional[Path], typer.Argument(help="A YAML recipe (see configs/); built-in defaults when omitted.")] = None,
    mode: Annotated[Optional[str], typer.Option("--mode", help="probe (heads on cached embeddings) or finetune (Lightning).")] = None,
    data: Annotated[list[str], typer.Option("--data", "-d", help="A folder or manifest (repeatable); replaces the recipe's sources.")] = [],
    tasks: Annotated[Optional[str], typer.Option("--tasks", help="Comma-separated tasks, e.g. style,genre or origin+style.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output directory (the model; default runs/<recipe name>).")] = None,
    backbone: Annotated[Optional[str], typer.Option("--backbone", help="Backbone name from the registry.")] = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Fine-tune epochs.")] = None,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", min=1, help="Fine-tune batch size.")] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Fine-tune learning rate.")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed (data split, init, order).")] = None,
    min_per_class: Annotated[Optional[int], typer.Option("--min-per-class", min=1, help="Labels (e.g. artists) with fewer labelled rows are kept out of every task and named in the output (the tasks' min_count).")] = None,
    devices: Annotated[Optional[str], typer.Option("--devices", help="Lightning Trainer devices (e.g. 1, 4, auto).")] = None,
    strategy: Annotated[Optional[str], typer.Option("--strategy", help="Lightning strategy (e.g. ddp).")] = None,
    num_nodes: Annotated[Optional[int], typer.Option("--num-nodes", min=1, help="Lightning num_nodes.")] = None,
    accelerator: Annotated[Optional[str], typer.Option("--accelerator", help="cpu, gpu, auto...")] = None,
    sets: Annotated[list[str], typer.Option("--set", help="Override any recipe key: --set finetune.loss.name=focal (repeatable).")] = [],
    resume: Annotated[bool, typer.Option("--resume", help="Continue a fine-tune from OUT/checkpoints/last.ckpt.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON instead of a table.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rescan data folders instead of reusing cached manifests.")] = False,
) -> None:
    """Train a model (probe or fine-tune) from a recipe; CLI flags override the recipe's keys."""
    import logging

    from rich.console import Console
    from rich.logging import RichHandler

    from artlens.train.config import RecipeError, load_recipe

    err = Console(stderr=True)
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=[RichHandler(console=err, show_path=False)])
    for noisy in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.seed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if devices is not None and devices.isdigit():
        devices = int(devices)
    try:
        overrides = _overrides(mode, data, tasks, out, backbone, epochs, batch_size, lr, seed, devices, strategy,
                               num_nodes, accelerator, sets, as_json)
        if tasks and recipe is not None:
            base = load_recipe(recipe)
            overrides["tasks"] = _merge_tasks(base["tasks"], tasks)
        cfg = load_recipe(recipe, overrides)
        if min_per_class is not None:
            for t in cfg["tasks"]:
                t["min_count"] = int(min_per_class)
    except (RecipeError, OSError) as exc:
        fail(err, exc)
    out_dir = Path(cfg["out"] or Path("runs") / cfg["name"])
    cfg["out"] = str(out_dir)

    try:
        from artlens.train.data import prepare

        err.print(f"[bold]artlens train[/bold] {cfg['name']}: mode {cfg['mode']}, backbone {cfg['backbone']['name']}, "
                  f"tasks {', '.join(t['name'] for t in cfg['tasks'])} -> {shown(out_dir)}", highlight=False, soft_wrap=True)
        prepared = prepare(cfg, use_cache=not no_cache, progress=err.is_terminal)
        for note in prepared.notes:
            err.print(f"[yellow]note:[/yellow] {shown(note)}", highlight=False, soft_wrap=True)
        for task, c in prepared.counts().items():
            err.print(f"  {task}: " + ", ".join(f"{k} {v}" for k, v in c.items()), highlight=False)
        if cfg["mode"] == "probe":
            from artlens.train.probe import run_probe

            def on_trial(trial):
                err.print(f"  {trial['describe']}: val {trial.get('val_macro_f1', trial.get('val_accuracy', 0)):.4f} "
                          f"({trial['seconds']} s)", highlight=False)

            result = run_probe(cfg, out_dir, prepared=prepared, progress=on_trial, show_progress=err.is_terminal)
        else:
            from artlens.train.finetune import run_finetune

            result = run_finetune(cfg, out_dir, resume=resume, prepared=prepared)
    except KeyboardInterrupt:
        err.print("[yellow]interrupted[/yellow]" + (" (continue with --resume)" if cfg["mode"] == "finetune" else ""))
        raise typer.Exit(EXIT_ERROR)
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, RuntimeError, ImportError) as exc:
        fail(err, exc)
    if not result:  # a non-zero rank of a multi-process run
        raise typer.Exit(EXIT_OK)

    unreadable = list(prepared.errors[["path", "reason"]].itertuples(index=False)) + list(result.get("embed_errors") or [])
    failed = len(unreadable)
    if as_json:
        from artlens.train.export import compact

        payload = {"model_dir": result["model_dir"], "mode": cfg["mode"], "metrics": compact(result["metrics"]),
                   "unreadable_files": failed, "kept_out": getattr(prepared, "kept_out", {})}
        sys.stdout.write(json.dumps(payload, indent=2, default=float) + "\n")
    else:
        from artlens.train.export import origin_table, summary_table

        Console().print(summary_table(result, title=f"artlens train: {cfg['name']} ({cfg['mode']})"))
        if (origin := origin_table(result.get("metrics", {}).get("origin"))) is not None:
            Console().print(origin)
        Console().print(f"model saved to [bold]{shown(result['model_dir'])}[/bold]", highlight=False, soft_wrap=True)
    if failed:
        for path, reason in unreadable:  # every one, one line each
            report(err, "unreadable", path, reason)
        err.print(f"[yellow]{failed} unreadable file(s) were left out[/yellow]")
        raise typer.Exit(EXIT_PARTIAL)
    raise typer.Exit(EXIT_OK)
