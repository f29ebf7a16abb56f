"""`artlens scan` and `artlens split`: datasets into manifests, manifests into splits."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from artlens.cli import EXIT_OK, EXIT_PARTIAL, app, fail, report, shown

_TOP = 15  # labels shown per column in the tables (the JSON has them all)


def _parse_options(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, val = v.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {v!r}")
        out[key.strip()] = val.strip()
    return out


def _sidecar(out: Path, suffix: str) -> Path:
    return out.with_name(out.name.removesuffix(".parquet") + suffix)


def _label_table(column: str, counts: dict[str, dict[str, int]], splits: list[str]):
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False)
    table.add_column(f"{column} ({len(counts):,} labels)", overflow="fold")
    for s in splits:
        table.add_column(s, justify="right")
    table.add_column("total", justify="right", style="bold")
    for label, row in list(counts.items())[:_TOP]:
        table.add_row(shown(label), *[f"{row.get(s, 0):,}" for s in splits], f"{row['total']:,}")
    if len(counts) > _TOP:
        rest = list(counts.values())[_TOP:]
        table.add_row(
            f"... {len(rest):,} more", *[f"{sum(r.get(s, 0) for r in rest):,}" for s in splits], f"{sum(r['total'] for r in rest):,}",
            style="dim",
        )
    return table


def _print_summary(console, summary: dict[str, Any], *, heading: str) -> None:
    from rich.table import Table

    console.print(heading, highlight=False, soft_wrap=True)
    splits = [s for s in ("train", "val", "test") if s in summary.get("splits", {})]
    if "none" in summary.get("splits", {}):
        splits.append("none")
    if splits == ["none"]:
        splits = []
    for column, counts in summary.get("labels", {}).items():
        console.print()
        console.print(_label_table(column, counts, splits))
    overview = Table(title="summary", title_justify="left", show_header=False, show_edge=False, pad_edge=False)
    overview.add_column()
    overview.add_column(justify="right")
    overview.add_row("images", f"{summary['images']:,}")
    for s, n in summary.get("splits", {}).items():
        if splits:  # nothing to say when no row has a split
            overview.add_row(f"  split {s}", f"{n:,}")
    dup = summary.get("duplicates")
    if dup:
        overview.add_row("duplicate groups", f"{dup['groups']:,} ({dup['exact_groups']} exact, {dup['near_groups']} near)")
        overview.add_row("  images in them", f"{dup['images_in_groups']:,}")
        overview.add_row("  filed under different labels", f"{dup['conflicting_groups']:,}")
    for key, n in summary.get("leaks", {}).items():
        overview.add_row(key.replace("_", " "), f"{n:,}")
    if "unreadable" in summary:
        overview.add_row("unreadable files", f"{summary['unreadable']:,}", style="red" if summary["unreadable"] else None)
    console.print()
    console.print(overview)
    if dup and dup.get("conflicts"):
        console.print()
        table = Table(title="duplicates filed under different labels", title_justify="left", show_edge=False, pad_edge=False)
        table.add_column("group", justify="right")
        table.add_column("kind")
        table.add_column("files and labels", overflow="fold")
        for c in dup["conflicts"][:10]:
            cols = c["columns"].split(",")
            members = "\n".join(
                shown(f"{Path(m['path']).parent.name}/{Path(m['path']).name}  [{', '.join(str(m.get(k)) for k in cols)}]") for m in c["members"]
            )
            table.add_row(str(c["group"]), c["kind"], members)
        if len(dup["conflicts"]) > 10:
            table.add_row("", "", f"... {len(dup['conflicts']) - 10} more (see --json or the duplicates CSV)", style="dim")
        console.print(table)
    for note in summary.get("notes", []):
        console.print(f"[dim]note: {shown(note)}[/dim]", highlight=False, soft_wrap=True)


@app.command()
def scan(
    source: Annotated[Path, typer.Argument(help="Dataset folder (or a CSV / metadata file) to scan.")],
    layout: Annotated[Optional[str], typer.Option("--layout", "-l", help="Layout name (default: detected). See --list-layouts.")] = None,
    name_pattern: Annotated[
        Optional[str], typer.Option("--name-pattern", help="Labels from file names: 'wikiart' or a pattern like '{artist}_{title}'.")
    ] = None,
    levels: Annotated[Optional[str], typer.Option("--levels", help="Folder layout: names of the folder levels, e.g. '{split}/{genre}'.")] = None,
    option: Annotated[list[str], typer.Option("--option", "-o", help="Layout option KEY=VALUE (repeatable), e.g. -o labels=DIR.")] = [],
    taxonomy: Annotated[list[str], typer.Option("--taxonomy", "-t", help="Add a mapped label column, e.g. wikiart-movements (repeatable).")] = [],
    out: Annotated[Optional[Path], typer.Option("--out", help="Write the manifest (Parquet) here, with .errors.csv/.duplicates.csv/.summary.json beside it.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
    workers: Annotated[int, typer.Option("--workers", "-w", min=1, help="Decoding processes.")] = 2,
    near_distance: Annotated[int, typer.Option("--near-distance", help="pHash bits under which images are near duplicates (-1: exact only).")] = 4,
    progress: Annotated[Optional[bool], typer.Option("--progress/--no-progress", help="Progress bar (default: when stderr is a terminal).")] = None,
    list_layouts: Annotated[bool, typer.Option("--list-layouts", help="List the layouts and their options, then exit.")] = False,
) -> None:
    """Scan a dataset into a manifest: labels, sizes, content hashes, duplicates, unreadable files."""
    from rich.console import Console

    from artlens.data.manifest import ManifestError, scan as run_scan, write_manifest
    from artlens.data.sources import SourceError, get_source, list_sources
    from artlens.data.taxonomy import TaxonomyError

    console, err = Console(), Console(stderr=True)
    if list_layouts:
        for name in list_sources():
            a = get_source(name)
            console.print(f"[bold]{name}[/bold]: {a.description}", highlight=False)
            for k, v in a.options.items():
                console.print(f"    -o {k}=...  {v}", highlight=False)
        raise typer.Exit(EXIT_OK)
    options = _parse_options(option)
    if levels:
        options["levels"] = levels
    try:
        result = run_scan(
            source, layout, name_pattern=name_pattern, taxonomies=taxonomy, workers=workers,
            near_distance=None if near_distance < 0 else near_distance,
            progress=err.is_terminal if progress is None else progress, options=options,
        )
    except (SourceError, TaxonomyError, ManifestError, KeyError, OSError) as exc:
        fail(err, exc)
    if result.manifest.empty and result.errors.empty:
        fail(err, f"no image files found in {source}")
    summary = result.summary()
    if out is not None:
        try:
            write_manifest(result.manifest, out)
            result.errors.to_csv(_sidecar(out, ".errors.csv"), index=False)
            result.duplicates.to_csv(_sidecar(out, ".duplicates.csv"), index=False)
            _sidecar(out, ".summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        except OSError as exc:
            fail(err, f"cannot write {out}: {exc}")
    for path, reason in zip(result.errors["path"], result.errors["reason"]):
        report(err, "unreadable", path, reason)
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    else:
        dup = summary.get("duplicates", {})
        heading = (
            f"[bold]{shown(summary['root'])}[/bold] (layout {summary['layout']}): {summary['images']:,} images, "
            f"{dup.get('groups', 0):,} duplicate groups, {summary['unreadable']:,} unreadable"
        )
        _print_summary(console, summary, heading=heading)
        if out is not None:
            console.print(f"manifest written to {shown(out)}", highlight=False)
    raise typer.Exit(EXIT_PARTIAL if len(result.errors) else EXIT_OK)


@app.command()
def split(
    manifest: Annotated[Path, typer.Argument(help="Manifest (Parquet) from `artlens scan`.")],
    out: Annotated[Path, typer.Option("--out", help="Where to write the manifest with its split column.")],
    seed: Annotated[int, typer.Option("--seed", help="Random seed (same seed, same split).")] = 0,
    val: Annotated[float, typer.Option("--val", min=0.0, max=0.9, help="Fraction for validation.")] = 0.1,
    test: Annotated[float, typer.Option("--test", min=0.0, max=0.9, help="Fraction for test.")] = 0.2,
    stratify: Annotated[str, typer.Option("--stratify", help="Label column whose proportions each split keeps ('' for none).")] = "style",
    group_by: Annotated[Optional[str], typer.Option("--group-by", help="Column whose values never straddle splits, e.g. artist.")] = None,
    balance_n: Annotated[Optional[int], typer.Option("--balance", min=1, help="Keep at most N images per class (before splitting).")] = None,
    balance_by: Annotated[Optional[str], typer.Option("--balance-by", help="Class column for --balance (default: the --stratify column).")] = None,
    balance_also: Annotated[Optional[str], typer.Option("--balance-also", help="Balance per class x this column too, e.g. origin.")] = None,
    taxonomy: Annotated[list[str], typer.Option("--taxonomy", "-t", help="Add a mapped label column first, e.g. wikiart-movements (repeatable).")] = [],
    near_distance: Annotated[int, typer.Option("--near-distance", help="pHash bits under which images count as near duplicates (-1: exact only).")] = 4,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
) -> None:
    """Assign train/val/test: stratified, seeded, duplicates (and --group-by values) kept on one side."""
    from rich.console import Console

    from artlens.data.manifest import ManifestError, read_manifest, write_manifest
    from artlens.data.summary import summarize
    from artlens.data.splits import assign_splits, balance, split_leaks
    from artlens.data.taxonomy import TaxonomyError, apply_taxonomy

    console, err = Console(), Console(stderr=True)
    near = None if near_distance < 0 else near_distance
    try:
        df = read_manifest(manifest)
        for name in taxonomy:
            df = apply_taxonomy(df, name)
        before = len(df)
        if balance_n:
            df = balance(df, balance_n, by=balance_by or stratify or "style", also_by=balance_also, seed=seed)
        df = assign_splits(df, val=val, test=test, seed=seed, stratify=stratify or None, group_by=group_by, near_distance=near)
        write_manifest(df, out)
    except (ManifestError, TaxonomyError, KeyError, ValueError, OSError) as exc:
        fail(err, exc)
    summary = summarize(df)
    summary.pop("unreadable", None)
    summary.update(root=str(manifest), seed=seed, fractions={"val": val, "test": test}, group_by=group_by, stratify=stratify or None)
    if balance_n:
        summary["balanced"] = {"per_class": balance_n, "kept": len(df), "dropped": before - len(df)}
    summary["leaks"] = split_leaks(df, group_by=group_by, near_distance=near)
    _sidecar(out, ".summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if as_json:
        sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    else:
        heading = f"[bold]{shown(manifest)}[/bold] -> {shown(out)}: {len(df):,} images, seed {seed}, val {val:g}, test {test:g}"
        if group_by:
            heading += f", grouped by {group_by}"
        if balance_n:
            heading += f", balanced to {balance_n:,} per class ({before - len(df):,} dropped)"
        if stratify and stratify in summary.get("labels", {}):
            summary["labels"] = {stratify: summary["labels"][stratify]}
        _print_summary(console, summary, heading=heading)
    raise typer.Exit(EXIT_OK)
