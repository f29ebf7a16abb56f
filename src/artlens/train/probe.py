"""Probe mode: task heads trained on cached backbone embeddings, in seconds on a CPU.

Per task, rows without a label are masked out of that task's loss (target -1). Heads share no
parameters, so the masked multi-task loss decomposes into one problem per task over the rows
labelled for it: each task gets its own hyper-parameter search on its validation rows.

- Features are standardised with the training rows' mean/std (stored as `norm.mean`/`norm.std`).
- Linear heads: multinomial logistic regression, full batch, LBFGS on
  `CE + weight_decay/2 * ||W||^2` (`weight_decay` = 1/(C * n) in sklearn's terms).
- MLP heads: `[Linear, ReLU, Dropout] * k + Linear`, AdamW mini-batches; the best epoch on
  validation data is kept. An ensemble of seeds is merged exactly into one wider head.
- Every choice (head type, weight decay, class weights, epochs, ensembling) is made on the
  validation split; the test split is only scored at the end.
- Then a temperature and an "unsure" threshold per head (`artlens.train.calibrate`).

Heads are fitted by `artlens.train.fitting` and chosen per task by `artlens.train.search`; this
module runs them over every task, embeds the rows and saves the model (`run_probe`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from artlens.train.fitting import standardisation
from artlens.train.search import TaskResult, _describe, train_task

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- all tasks
@dataclass
class ProbeResult:
    heads: Any  # MultiTaskHeads with norm buffers
    tasks: list  # TaskConfig
    metrics: dict
    results: dict[str, TaskResult]
    mean: np.ndarray
    std: np.ndarray


def train_probe(X: np.ndarray, targets: dict[str, np.ndarray], split: np.ndarray, tasks: list[dict],
                pcfg: dict, calibration: dict, seed: int = 0, progress=None) -> ProbeResult:
    """Heads for every task over features `X (N, D)`.

    `targets[task]`: (N,) class indices, -1 where a row has no label for the task; `split`: (N,)
    of train/val/test; `tasks`: dicts with `name`, `labels`, `column`.
    """
    import torch

    from artlens.models.artmodel import TaskConfig
    from artlens.models.heads import MultiTaskHeads

    X = np.asarray(X, dtype=np.float32)
    split = np.asarray(split).astype(str)
    if not np.isfinite(X).all():
        raise ValueError("features contain NaN/inf rows: drop the rows that failed to embed first")
    old_threads = torch.get_num_threads()
    if pcfg.get("threads"):
        torch.set_num_threads(int(pcfg["threads"]))
    try:
        labelled = np.zeros(len(X), bool)
        for t in tasks:
            labelled |= targets[t["name"]] >= 0
        mean, std = standardisation(X, (split == "train") & labelled, pcfg.get("standardize", True))
        Xs = (X - mean) / std
        results, task_cfgs = {}, []
        for t in tasks:
            r = train_task(t["name"], t["labels"], Xs, targets[t["name"]], split, pcfg, calibration, seed, progress)
            results[t["name"]] = r
            task_cfgs.append(TaskConfig(name=t["name"], labels=list(t["labels"]), column=t.get("column"),
                                        hidden=r.hidden, dropout=r.dropout, temperature=r.temperature,
                                        threshold=r.threshold))
    finally:
        torch.set_num_threads(old_threads)
    heads = MultiTaskHeads(X.shape[1], {tc.name: {"labels": tc.labels, "hidden": tc.hidden, "dropout": tc.dropout}
                                        for tc in task_cfgs}, norm=(torch.from_numpy(mean), torch.from_numpy(std)))
    with torch.no_grad():
        for name, r in results.items():
            heads.heads[name].load_state_dict(r.head.state_dict())
    heads.eval()
    metrics = summarise(results)
    return ProbeResult(heads, task_cfgs, metrics, results, mean, std)


def summarise(results: dict[str, TaskResult]) -> dict:
    """Metrics per split and task, the selected head and calibration, and every trial."""
    out: dict[str, Any] = {}
    for name, r in results.items():
        for part, m in r.metrics.items():
            out.setdefault(part, {})[name] = m
        out.setdefault("selected", {})[name] = {"head": _describe(r.chosen), "candidate": r.chosen,
                                                "temperature": r.temperature, "threshold": r.threshold}
        out.setdefault("trials", {})[name] = r.trials
    return out


# ----------------------------------------------------------------------------- the command
def embed_rows(prepared, recipe: dict, progress: bool = True):
    """Embeddings for the prepared rows from the shared store (computing what is missing).
    Rows that fail to embed are dropped (named in the log); returns (X, prepared subset, errors)."""
    from artlens.embed import embed_manifest

    res = embed_manifest(prepared.df, recipe["backbone"]["name"], store_root=recipe["data"].get("store"),
                         batch_size=int(recipe["data"].get("embed_batch_size") or 32), progress=progress)
    vectors, ok, errors = res[0], np.asarray(res[1], bool), res[2]
    for path, reason in errors.itertuples(index=False) if len(errors) else []:
        log.warning("skipped %s: %s", path, reason)
    if not ok.all():
        prepared = subset(prepared, ok)
    return np.asarray(vectors)[ok], prepared, errors, getattr(res, "stats", None)


def subset(prepared, mask: np.ndarray):
    from artlens.train.data import Prepared

    return Prepared(prepared.df[mask].reset_index(drop=True), prepared.tasks,
                    {k: v[mask] for k, v in prepared.targets.items()}, prepared.errors, prepared.notes,
                    getattr(prepared, "kept_out", {}))


def run_probe(recipe: dict, out, *, prepared=None, features=None, progress=None, show_progress: bool = True) -> dict:
    """Prepare data, embed (cached), search and train heads, calibrate, save the ArtModel in `out`."""
    from pathlib import Path

    from artlens.train.data import prepare
    from artlens.train.export import save_run

    t0 = time.perf_counter()
    prepared = prepared or prepare(recipe, progress=show_progress)
    embed_stats = embed_errors = None
    embed_seconds, t_embed = 0.0, time.perf_counter()
    if features is None:
        features, prepared, embed_errors, embed_stats = embed_rows(prepared, recipe, progress=show_progress)
        embed_seconds = time.perf_counter() - t_embed
    t_train = time.perf_counter()
    result = train_probe(features, prepared.targets, prepared.split, prepared.tasks, recipe["probe"],
                         recipe["calibration"], seed=int(recipe["seed"]), progress=progress)
    train_seconds = time.perf_counter() - t_train
    spec = _spec(recipe["backbone"]["name"])
    extra = {"embed_seconds": round(embed_seconds, 2), "train_seconds": round(train_seconds, 2),
             "total_seconds": round(time.perf_counter() - t0, 2)}
    if embed_stats is not None and hasattr(embed_stats, "as_dict"):
        extra["embedding"] = embed_stats.as_dict()
    saved = save_run(recipe, result.tasks, result.heads, result.metrics, Path(out), mode="probe", spec=spec,
                     prepared=prepared, extra=extra, feature_dim=features.shape[1])
    # Tasks trained their own way after the probe (imported here: they build on this module).
    from artlens.train.artist import artist_from_recipe
    from artlens.train.origin import add_origin

    if (recipe.get("origin") or {}).get("enabled"):
        _add_task(out, saved, "origin", lambda m: add_origin(m, features, prepared.df, recipe["origin"]))
    if (recipe.get("artist") or {}).get("enabled"):
        _add_task(out, saved, "artist", lambda m: artist_from_recipe(m, features, prepared.df, recipe["artist"], int(recipe["seed"]))[0])
    # Files the scan accepted but the encoder could not use: the caller reports them with the
    # scan's unreadable files (and exits "partial").
    saved["embed_errors"] = [] if embed_errors is None or not len(embed_errors) else [
        (str(a), str(b)) for a, b in embed_errors[["path", "reason"]].itertuples(index=False)]
    return saved


def _add_task(out, saved: dict, name: str, build) -> None:
    """Replace the probe's `name` head (if any) by `build(model)`'s (a task trained its own way:
    origin by groups, the artist head with its open-set rule); the probe's split metrics for a head
    that is gone go too, and the task's own metrics join `metrics.json`."""
    from pathlib import Path

    from artlens.models.artmodel import ArtModel

    model = build(ArtModel.load(out))
    path = Path(out) / "metrics.json"
    on_disk = json.loads(path.read_text())
    for m in (saved["metrics"], model.config.get("metrics") or {}, on_disk):
        for part in ("train", "val", "test", "selected"):
            (m.get(part) or {}).pop(name, None)
    model.save(out)
    saved["metrics"][name] = on_disk[name] = model.config["metrics"][name]
    saved["config"] = model.config
    path.write_text(json.dumps(on_disk, indent=2, default=str) + "\n")


def _spec(name: str):
    from artlens.models.backbones import get_spec

    return get_spec(name)
