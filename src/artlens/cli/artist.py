"""`artlens train-artist` (artist head + `unknown artist` rule) and `artlens attribute` (the model's
answer with the nearest known paintings as its evidence, and the nearest known artists)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import EXIT_OK, EXIT_PARTIAL, app, fail, report, shown


@app.command("train-artist")
def train_artist(
    source: Annotated[Path, typer.Argument(help="Manifest (.parquet/.csv) or a folder of WikiArt-named images (<artist-slug>_<title>.jpg).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    min_per_class: Annotated[int, typer.Option("--min-per-class", min=2, help="Artists with fewer paintings are kept out of the head (and used as unknown artists).")] = 40,
    into: Annotated[Optional[Path], typer.Option("--into", help="Add the artist task to this model (written to --out) instead of a model of its own.")] = None,
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone whose embeddings the head reads.")] = "clip-vit-b16",
    store: Annotated[Optional[Path], typer.Option("--store", help="Embedding store root (default: the shared cache).")] = None,
    column: Annotated[str, typer.Option("--column", help="Manifest column with the artist (file names are used when it is empty).")] = "artist",
    target_known: Annotated[float, typer.Option("--target-known", min=0.0, max=1.0, help="Share of known artists' paintings that must keep a name (see --known-rate), out of fold.")] = 0.8,
    target_unknown: Annotated[float, typer.Option("--target-unknown", min=0.0, max=1.0, help="Share of unknown artists' paintings to call 'unknown artist', out of fold.")] = 0.8,
    known_rate: Annotated[str, typer.Option("--known-rate", help="What --target-known counts: 'correct' (known paintings keeping their correct name) or 'accepted' (known paintings the rule leaves a name, right or wrong).")] = "correct",
    background: Annotated[bool, typer.Option("--background/--no-background", help="Train 'someone else' logits on the kept-out artists (usually the best open-set score).")] = True,
    background_min_paintings: Annotated[int, typer.Option("--background-min-paintings", min=0, help="A kept-out artist with this many paintings gets a 'someone else' logit of its own; the rest share one per style. 0: one for all.")] = 5,  # artlens.train.artist.BACKGROUND_MIN_PAINTINGS (the CLI starts without numpy)
    shift: Annotated[str, typer.Option("--folds", help="How the out-of-fold choices hold known paintings out: 'period' (other styles and periods of the same artists) or 'painting' (one painting at a time).")] = "period",
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.3, help="Held out for the test numbers: this share of the known artists' paintings and 1.5x of the kept-out artists' (0 for a final model).")] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Train an artist head on the artists with >= --min-per-class paintings, with an open-set
    `unknown artist` rule chosen out of fold on other periods / styles of the known artists and on
    artists held out whole."""
    from rich.console import Console

    from artlens.evaluate.artist import evaluate_artist
    from artlens.models.artmodel import ArtModel, ModelFormatError
    from artlens.retrieval.build import read_rows
    from artlens.train.artist import add_artist_task, artist_task_from_manifest

    err = Console(stderr=True)
    scan_errors: list = []
    try:
        df = read_rows(source, scan_errors, progress=err.is_terminal)
        base = ArtModel.load(into) if into else None
        art, errors, vectors = artist_task_from_manifest(
            df, base.backbone_name if base is not None else backbone, store_root=store, progress=err.is_terminal,
            column=column, min_per_class=min_per_class, fractions=(0.8 - test_fraction, 0.2, test_fraction),
            unknown_fractions=(0.7 - 1.5 * test_fraction, 0.3, 1.5 * test_fraction), target_known=target_known,
            target_unknown=target_unknown, known_rate=known_rate, background=background, seed=seed, shift=shift,
            background_min_paintings=background_min_paintings)
        model = add_artist_task(base, art) if base is not None else art.to_model(
            {"recipe": {"artist": {"min_per_class": min_per_class, "seed": seed, "folds": shift}}})
        f = art.split.frame
        art.metrics.update(evaluate_artist(art.to_model(all_openset=True), f, vectors[f["row"].to_numpy()]))
        model.save(out)
        (out / "artist_metrics.json").write_text(json.dumps(art.metrics, indent=2) + "\n", encoding="utf-8")
    except (ModelFormatError, ValueError, OSError, RuntimeError) as exc:
        fail(err, exc)
    unread = list(scan_errors) + list(errors.itertuples(index=False))
    for path, reason in unread:
        report(err, "skipped", path, reason)
    if as_json:
        sys.stdout.write(json.dumps(art.metrics, indent=2) + "\n")
    else:
        print_artist_report(art.metrics, Console())
        err.print(f"model written to {out}")
    raise typer.Exit(EXIT_PARTIAL if unread else EXIT_OK)


def print_artist_report(m: dict, console) -> None:
    """Rich tables: the split, closed-set numbers beside the nearest-centroid baseline, open set."""
    from rich.table import Table

    s = m["split"]
    console.print(
        f"[bold]{s['known_artists']}[/bold] known artists (>= {s['min_per_class']} paintings); "
        f"{s['kept_out_artists']} artists ({s['kept_out_paintings']} paintings) kept out of the head and used as unknown "
        f"artists ({s.get('unknown_test_artists', 0)} of them held out for the test numbers)."
    )
    kept = m.get("kept_out") or {}
    if kept:
        named = ", ".join(f"{a} ({n})" for a, n in list(kept.items())[:12])
        more = f" and {len(kept) - 12} more" if len(kept) > 12 else ""
        console.print(f"kept out (< {s['min_per_class']} paintings): {named}{more} [dim](all in artist_metrics.json)[/dim]",
                      highlight=False, soft_wrap=True)
    console.print(f"[dim]{s.get('validation', '')}[/dim]", highlight=False)
    t = Table(title="closed set (known artists)")
    for c in ("paintings", "model", "n", "accuracy", "macro-F1", "top-5"):
        t.add_column(c, justify="right" if c not in ("paintings", "model") else "left")
    for part, what in (("val", "out of fold"), ("test", "test")):
        for name, key in (("artist head", "closed_set"), ("nearest centroid", "nearest_centroid")):
            r = m.get(f"{key}_{part}")
            if r:
                t.add_row(what, name, str(r["n"]), f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", f"{r.get('top5_accuracy', float('nan')):.3f}")
    console.print(t)
    v = m["open_set_validation"]
    t = Table(title="open set out of fold (known: other periods / styles; unknown: whole artists)")
    for c in ("method", "AUROC", "balanced", "threshold", "known named", "known correct", "unknown rejected", "chosen"):
        t.add_column(c)
    for meth, r in v["methods"].items():
        op = r["operating_point"]
        t.add_row(meth, f"{r['auroc']:.3f}", f"{r.get('balanced', float('nan')):.3f}", f"{op['threshold']:.4g}", f"{op['known_accepted']:.1%}", f"{op['known_correct']:.1%}",
                  f"{op['unknown_rejected']:.1%}", "yes" if meth == v["method"] else "")
    console.print(t)
    ft = m.get("fold_transfer") or {}
    if ft.get("known_correct"):
        kc, ur = ft["known_correct"], ft["unknown_rejected"]
        console.print(f"threshold chosen on the other folds, per held-out fold: known keeping their correct name "
                      f"{kc['mean']:.1%} ({kc['min']:.1%}-{kc['max']:.1%}), unknown called 'unknown artist' "
                      f"{ur['mean']:.1%} ({ur['min']:.1%}-{ur['max']:.1%})")
    p = (m.get("open_set_test") or {})
    if "known_correct_name" in p:
        console.print(
            f"test, rule {v['rule']}: AUROC {p.get('auroc', float('nan')):.3f}; known paintings keeping their correct name "
            f"[bold]{p['known_correct_name']:.1%}[/bold] (a name: {p['known_correct_name'] + p['known_wrong_name']:.1%}); "
            f"unknown-artist paintings called 'unknown artist' [bold]{p.get('unknown_called_unknown', float('nan')):.1%}[/bold]")


@app.command()
def attribute(
    images: Annotated[list[Path], typer.Argument(help="Images (or folders) to attribute.")],
    gallery: Annotated[Path, typer.Option("--gallery", "-g", help="An index directory (`artlens index`), or a manifest/folder to index on the fly.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Model whose artist head answers (default: the shipped model); only its artists are ranked.")] = None,
    no_model: Annotated[bool, typer.Option("--no-model", help="Similarity only: rank every artist of the gallery, no model answer.")] = False,
    top_artists: Annotated[int, typer.Option("--top-artists", "-k", min=1)] = 3,
    works: Annotated[int, typer.Option("--works", min=1, help="Closest works shown per artist.")] = 3,
    method: Annotated[str, typer.Option("--method", help="Artist score: topk (mean cosine of its 3 closest works), max (closest work), centroid.")] = "topk",
    exclude_self: Annotated[bool, typer.Option("--exclude-self", help="Leave the image itself (and near copies) out of the gallery.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image (JSON Lines).")] = False,
) -> None:
    """The artist head's answer with the nearest known paintings as evidence, and the nearest known
    artists by embedding similarity, each with its closest works."""
    from rich.console import Console

    from artlens.models.artmodel import ModelFormatError
    from artlens.retrieval import RetrievalError
    from artlens.retrieval.attribution import attribute as attribute_images
    from artlens.retrieval.attribution import open_gallery

    err = Console(stderr=True)
    gallery_errors: list = []
    if model is None and not no_model:
        from artlens import default_model_dir

        model = default_model_dir()
    try:
        index = open_gallery(gallery, gallery_errors, progress=err.is_terminal)
        results = attribute_images(index, images, model=None if no_model else model, top_artists=top_artists,
                                   works_per_artist=works, method=method, exclude_duplicates=exclude_self)
    except (ModelFormatError, RetrievalError, ValueError, OSError) as exc:
        fail(err, exc)
    if gallery_errors:
        err.print(f"[yellow]{len(gallery_errors)} gallery image(s) could not be read and are left out[/yellow]")
    failed = 0
    for r in results:
        if r["error"]:
            failed += 1
            report(err, "skipped", r["path"], r["error"])
        if as_json:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
    if not as_json:
        print_attribution(results, Console())
    raise typer.Exit(EXIT_PARTIAL if failed else EXIT_OK)


def _works(works: list[dict]) -> str:
    return "\n".join(
        f"{w['similarity']:.3f}  {shown(w['title'] or w['path'])}" + (" [yellow](this image)[/yellow]" if w["duplicate"] else "")
        for w in works)


def print_attribution(results: list[dict], console) -> None:
    from rich.table import Table

    for r in results:
        if r["error"]:
            continue
        title = shown(r["path"])
        if r.get("model"):
            a, ev = r["model"], r["evidence"]
            best = a["top"][0]
            named = a["label"] == best["label"]
            title += f"\nartist: [bold]{shown(a['label'])}[/bold]" + (f" {best['prob']:.0%}" if named else
                                                                      f" [dim](best guess {shown(best['label'])} {best['prob']:.0%})[/dim]")
            if a.get("reason"):  # e.g. withheld because origin says `ai`
                title += f" [yellow]{shown(a['reason'])}[/yellow]"
            what = f"closest works by {shown(ev['artist'])}" if ev["artist"] else "closest known paintings (any known artist)"
            lines = [f"{w['similarity']:.3f}  {shown(w['title'] or w['path'])}" + ("" if ev["artist"] else f" [dim]({shown(w['artist'])})[/dim]")
                     + (" [yellow](this image)[/yellow]" if w["duplicate"] else "") for w in ev["works"]]
            title += f"\nevidence, {what} (cosine):\n  " + "\n  ".join(lines)
        t = Table(title=title, title_justify="left", show_lines=True)
        t.add_column("#", justify="right")
        t.add_column("artist")
        t.add_column("similarity", justify="right")
        t.add_column("closest works (cosine)")
        for i, a in enumerate(r["artists"], start=1):
            t.add_row(str(i), f"{shown(a['artist'])}\n[dim]{a['n_works']} works[/dim]",
                      f"{a['score']:.3f}\n[dim]centroid {a['centroid_similarity']:.3f}[/dim]", _works(a["works"]))
        console.print(t)
