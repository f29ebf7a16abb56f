"""`artlens train-artist` (artist head + `unknown artist` rule) and `artlens attribute` (nearest
known artists with their closest works)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from artlens.cli import EXIT_OK, EXIT_PARTIAL, app, fail, report, shown


def _manifest(source: Path, progress: bool):
    """A manifest from a .parquet/.csv file, or a folder scanned with WikiArt file-name labels."""
    import pandas as pd

    from artlens.data.manifest import read_manifest, scan

    if source.is_dir():
        res = scan(source, name_pattern="wikiart", progress=progress)
        return res.manifest
    if not source.is_file():
        raise FileNotFoundError(f"{source}: no such file or folder")
    if source.suffix.lower() == ".csv":
        return pd.read_csv(source)
    return read_manifest(source)


def _unknown_fractions(test_fraction: float) -> tuple[float, float, float]:
    """Kept-out artists: 1.5 x test_fraction measure the rule, the rest train the background logit
    and calibrate the rule (`--validation crossfit`: pooled, out of fold; `holdout`: 30% calibrate)."""
    test = min(1.5 * test_fraction, 0.45)
    return (1.0 - 0.3 - test, 0.3, test)


@app.command("train-artist")
def train_artist(
    source: Annotated[Path, typer.Argument(help="Manifest (.parquet/.csv) or a folder of WikiArt-named images (<artist-slug>_<title>.jpg).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model directory to write.")],
    min_per_class: Annotated[int, typer.Option("--min-per-class", min=2, help="Artists with fewer paintings are kept out of the head (and used as unknown artists).")] = 40,
    into: Annotated[Optional[Path], typer.Option("--into", help="Add the artist task to this model (written to --out) instead of a model of its own.")] = None,
    backbone: Annotated[str, typer.Option("--backbone", "-b", help="Backbone whose embeddings the head reads.")] = "clip-vit-b16",
    store: Annotated[Optional[Path], typer.Option("--store", help="Embedding store root (default: the shared cache).")] = None,
    column: Annotated[str, typer.Option("--column", help="Manifest column with the artist (file names are used when it is empty).")] = "artist",
    target_known: Annotated[float, typer.Option("--target-known", min=0.0, max=1.0, help="Share of known artists' paintings that must keep a name (see --known-rate) on validation.")] = 0.8,
    target_unknown: Annotated[float, typer.Option("--target-unknown", min=0.0, max=1.0, help="Share of unknown artists' paintings to call 'unknown artist' (validation).")] = 0.8,
    known_rate: Annotated[str, typer.Option("--known-rate", help="What --target-known counts: 'correct' (known paintings keeping their correct name) or 'accepted' (known paintings the rule leaves a name, right or wrong).")] = "correct",
    background: Annotated[bool, typer.Option("--background/--no-background", help="Train 'someone else' logits on part of the kept-out artists (usually the best open-set score).")] = True,
    background_min_paintings: Annotated[int, typer.Option("--background-min-paintings", min=0, help="A kept-out artist with this many paintings gets a 'someone else' logit of its own (crossfit); the rest share one. 0: one for all.")] = 5,  # artlens.train.artist.BACKGROUND_MIN_PAINTINGS (the CLI starts without numpy)
    validation: Annotated[str, typer.Option("--validation", help="Where the weight decay, temperature and open-set threshold are chosen: 'crossfit' (out-of-fold scores over the train+val paintings, kept-out artists whole to a fold; the head then trains on all of them) or 'holdout' (train on train, choose on val).")] = "crossfit",
    test_fraction: Annotated[float, typer.Option("--test-fraction", min=0.0, max=0.5, help="Held out for the test numbers: this share of the known artists' paintings and of the kept-out artists' (0 for a final model).")] = 0.2,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Train an artist head on the artists with >= --min-per-class paintings, with an open-set
    `unknown artist` rule calibrated on artists held out whole."""
    from rich.console import Console

    from artlens.models.artmodel import ArtModel, ModelFormatError
    from artlens.train.artist import add_artist_task, artist_task_from_manifest

    err = Console(stderr=True)
    try:
        df = _manifest(source, progress=err.is_terminal)
        base = ArtModel.load(into) if into else None
        if base is not None and base.backbone_name != backbone:
            backbone = base.backbone_name
        art, errors = artist_task_from_manifest(
            df, backbone, store_root=store, progress=err.is_terminal, column=column, min_per_class=min_per_class,
            fractions=(1.0 - 0.2 - test_fraction, 0.2, test_fraction), target_known=target_known,
            target_unknown=target_unknown, known_rate=known_rate, background=background, seed=seed, validation=validation,
            background_min_paintings=background_min_paintings,
            unknown_fractions=_unknown_fractions(test_fraction),
        )
        for path, reason in errors.itertuples(index=False):
            report(err, "skipped", path, reason)
        model = add_artist_task(base, art) if base is not None else art.to_model(
            {"backbone": {"name": backbone, "feature_dim": art.backbone["feature_dim"]}, "recipe": {"artist": {"min_per_class": min_per_class, "seed": seed, "validation": validation}}}
        )
        model.save(out)
        (out / "artist_metrics.json").write_text(json.dumps(art.metrics, indent=2) + "\n", encoding="utf-8")
    except (ModelFormatError, ValueError, OSError, RuntimeError) as exc:
        fail(err, exc)
    if as_json:
        sys.stdout.write(json.dumps(art.metrics, indent=2) + "\n")
    else:
        print_artist_report(art.metrics, Console())
        err.print(f"model written to {out}")
    raise typer.Exit(EXIT_PARTIAL if len(errors) else EXIT_OK)


def print_artist_report(m: dict, console) -> None:
    """Rich tables: the split, closed-set numbers beside the nearest-centroid baseline, open set."""
    from rich.table import Table

    s = m["split"]
    console.print(
        f"[bold]{s['known_artists']}[/bold] known artists (>= {s['min_per_class']} paintings); "
        f"{s['kept_out_artists']} artists ({s['kept_out_paintings']} paintings) kept out of the head and used as unknown "
        f"artists: {s.get('unknown_train_artists', 0)} train its background logit, {s.get('unknown_val_artists', 0)} "
        f"calibrate the rule, {s.get('unknown_test_artists', 0)} test it."
    )
    kept = m.get("kept_out") or {}
    if kept:
        shown = ", ".join(f"{a} ({n})" for a, n in list(kept.items())[:12])
        more = f" and {len(kept) - 12} more" if len(kept) > 12 else ""
        console.print(f"kept out (< {s['min_per_class']} paintings): {shown}{more} [dim](all in artist_metrics.json)[/dim]",
                      highlight=False, soft_wrap=True)
    t = Table(title="closed set (known artists, held-out paintings)")
    for c in ("split", "model", "n", "accuracy", "macro-F1", "top-5"):
        t.add_column(c, justify="right" if c not in ("split", "model") else "left")
    for part in ("val", "test"):
        for name, key in (("artist head", "closed_set"), ("nearest centroid", "nearest_centroid")):
            r = m.get(f"{key}_{part}")
            if r:
                t.add_row(part + (" (out of fold)" if r.get("out_of_fold") else ""), name, str(r["n"]), f"{r['accuracy']:.3f}", f"{r['macro_f1']:.3f}", f"{r.get('top5_accuracy', float('nan')):.3f}")
    console.print(t)
    v = m["open_set_validation"]
    how = "out of fold" if str(s.get("validation", "")).startswith("crossfit") else "on validation"
    t = Table(title=f"open set {how} (whole artists held out)")
    for c in ("method", "AUROC", "threshold", "known named", "known correct", "unknown rejected", "chosen"):
        t.add_column(c)
    for meth, r in v["methods"].items():
        op = r["operating_point"]
        t.add_row(meth, f"{r['auroc']:.3f}", f"{op['threshold']:.4g}", f"{op['known_accepted']:.1%}", f"{op['known_correct']:.1%}",
                  f"{op['unknown_rejected']:.1%}", "yes" if meth == v["method"] else "")
    console.print(t)
    ot = m.get("open_set_test")
    if ot:
        p, r = ot.get("predict", {}), ot["rule"]
        console.print(
            f"test, rule {v['rule']}: AUROC {r['auroc']:.3f}; known paintings keeping their correct name "
            f"[bold]{p.get('known_correct_name', float('nan')):.1%}[/bold] (a name: "
            f"{p.get('known_correct_name', float('nan')) + p.get('known_wrong_name', float('nan')):.1%}); unknown-artist paintings called "
            f"'unknown artist' [bold]{p.get('unknown_called_unknown', float('nan')):.1%}[/bold]; false attribution "
            f"rate {p.get('false_attribution_rate', float('nan')):.1%}"
        )


@app.command()
def attribute(
    images: Annotated[list[Path], typer.Argument(help="Images (or folders) to attribute.")],
    gallery: Annotated[Path, typer.Option("--gallery", "-g", help="An index directory (`artlens index`), or a manifest/folder to index on the fly.")],
    model: Annotated[Optional[Path], typer.Option("--model", "-m", help="Only the artists this model's artist head knows; also show its answer.")] = None,
    top_artists: Annotated[int, typer.Option("--top-artists", "-k", min=1)] = 3,
    works: Annotated[int, typer.Option("--works", min=1, help="Closest works shown per artist.")] = 3,
    method: Annotated[str, typer.Option("--method", help="Artist score: topk (mean cosine of its 3 closest works), max (closest work), centroid.")] = "topk",
    exclude_self: Annotated[bool, typer.Option("--exclude-self", help="Leave the image itself (and near copies) out of the gallery.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per image (JSON Lines).")] = False,
) -> None:
    """Nearest known artists by embedding similarity, each with its closest works: why a name was proposed."""
    from rich.console import Console

    from artlens.models.artmodel import ArtModel, ModelFormatError
    from artlens.predict import expand_inputs
    from artlens.predict import Predictor
    from artlens.retrieval.attribution import Attributor, embed_paths
    from artlens.retrieval import FaissIndex, RetrievalError, index_embeddings, query_encoder

    err = Console(stderr=True)
    try:
        if (gallery / "meta.json").is_file():
            index = FaissIndex.load(gallery)
        else:
            index, gerr = index_embeddings(_manifest(gallery, err.is_terminal), progress=err.is_terminal)
            if len(gerr):
                err.print(f"[yellow]{len(gerr)} gallery image(s) could not be embedded and are left out[/yellow]")
        m = ArtModel.load(model) if model else None
        known = None
        if m is not None:
            if "artist" not in m.task_names:
                raise ValueError(f"{model}: the model has no artist task")
            if index.backbone and m.backbone_name != index.backbone:
                raise ValueError(f"the model reads {m.backbone_name} embeddings, the gallery holds {index.backbone} ones")
            known = m.task("artist").labels
        att = Attributor(index, artists=known)
        encoder = query_encoder(index)
        files = expand_inputs(images)
        if not files:
            raise ValueError("no images found in " + ", ".join(map(str, images)))
        vectors, shas, errors = embed_paths(files, encoder)
        good = [i for i in range(len(files)) if i not in errors]
        matches = att.attribute(vectors[good], query_sha256=[shas[i] for i in good], top_artists=top_artists,
                                works_per_artist=works, method=method, exclude_duplicates=exclude_self) if good else []
    except (ModelFormatError, RetrievalError, ValueError, OSError) as exc:
        fail(err, exc)
    by_row = dict(zip(good, matches))
    results = [{"path": p, "error": errors.get(i), "artists": [a.to_dict() for a in by_row.get(i, [])]} for i, p in enumerate(files)]
    if m is not None and good:
        # The artist head's answer (a name or `unknown artist`) beside the similarity evidence.
        answers = Predictor(m, top_k=3, encoder=encoder).predict_features(vectors[good])
        for i, a in zip(good, answers):
            results[i]["model"] = a["artist"]
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


def print_attribution(results: list[dict], console) -> None:
    from rich.table import Table

    for r in results:
        if r["error"]:
            continue
        title = shown(r["path"])
        if r.get("model"):
            a = r["model"]
            title += f"\nartist head: [bold]{a['label']}[/bold]" + (f" {a['top'][0]['prob']:.0%}" if a["label"] == a["top"][0]["label"] else "") + (
                f" [dim](best guess {a['top'][0]['label']} {a['top'][0]['prob']:.0%})[/dim]" if a["label"] != a["top"][0]["label"] else ""
            )
        t = Table(title=title, title_justify="left", show_lines=True)
        t.add_column("#", justify="right")
        t.add_column("artist")
        t.add_column("similarity", justify="right")
        t.add_column("closest works (cosine)")
        for i, a in enumerate(r["artists"], start=1):
            works = "\n".join(
                f"{w['similarity']:.3f}  {shown(w['title'] or w['path'])}" + (" [yellow](this image)[/yellow]" if w["duplicate"] else "")
                for w in a["works"]
            )
            t.add_row(str(i), f"{a['artist']}\n[dim]{a['n_works']} works[/dim]", f"{a['score']:.3f}\n[dim]centroid {a['centroid_similarity']:.3f}[/dim]", works)
        console.print(t)
