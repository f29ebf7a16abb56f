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
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artlens import metrics as M
from artlens.train.calibrate import calibrate_task, classification_metrics, softmax

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- candidates
def expand_candidates(candidates: list[dict]) -> list[dict]:
    """Each candidate's list values are a grid (except `hidden`, a list of widths per option)."""
    out = []
    for cand in candidates:
        keys, options = [], []
        for k, v in cand.items():
            keys.append(k)
            if k == "hidden":
                v = v if (isinstance(v, list) and v and isinstance(v[0], list)) else [v or []]
            elif not isinstance(v, list):
                v = [v]
            options.append(v)
        for combo in itertools.product(*options):
            c = dict(zip(keys, combo))
            c.setdefault("type", "linear")
            if c["type"] == "linear":
                c.pop("hidden", None)
                c.pop("dropout", None)
            else:
                c.setdefault("hidden", [1024])
                c.setdefault("dropout", 0.5)
            c.setdefault("weight_decay", 1e-3)
            c.setdefault("class_weight", None)
            if c not in out:
                out.append(c)
    return out


def _describe(c: dict) -> str:
    s = (f"linear wd={c['weight_decay']:g}" if c["type"] == "linear" else
         f"mlp {'-'.join(map(str, c['hidden']))} drop={c['dropout']:g} wd={c['weight_decay']:g}")
    s += f" cw={c['class_weight']}" if c.get("class_weight") else ""
    s += f" ep={c['best_epoch']}" if c.get("best_epoch") else ""
    return s + (f" x{c['ensemble']}" if c.get("ensemble", 1) > 1 else "")


# ----------------------------------------------------------------------------- fitting
def _class_weight_tensor(y: np.ndarray, n_classes: int, mode):
    from artlens.train.losses import class_weights

    return class_weights(y, n_classes, mode) if mode else None


def fit_linear(X, y, n_classes: int, weight_decay: float, class_weight=None, max_iter: int = 300):
    """Multinomial logistic regression by full-batch LBFGS. Returns an `nn.Sequential(Linear)`."""
    import torch
    import torch.nn.functional as F

    from artlens.models.heads import build_head

    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    head = build_head(Xt.shape[1], n_classes)
    lin = head[0]
    torch.nn.init.zeros_(lin.weight)
    torch.nn.init.zeros_(lin.bias)
    cw = _class_weight_tensor(y, n_classes, class_weight)
    opt = torch.optim.LBFGS(head.parameters(), lr=1.0, max_iter=max_iter, history_size=20,
                            tolerance_grad=1e-6, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(Xt), yt, weight=cw) + 0.5 * weight_decay * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head


def _logits(head, X) -> np.ndarray:
    import torch

    head.eval()
    with torch.no_grad():
        return head(torch.as_tensor(X, dtype=torch.float32)).numpy()


def _score(logits: np.ndarray, y: np.ndarray, metric: str) -> tuple[float, float]:
    """(selection metric, NLL) on labelled rows: accuracy or macro-F1 as `artlens.metrics` computes
    them (macro-F1 over the classes present in the truth or the predictions, as `artlens evaluate`)."""
    pred = logits.argmax(1)
    s = M.accuracy(y, pred) if metric == "accuracy" else M.macro_f1(y, pred)
    return float(s), M.log_loss(softmax(logits), y)


def fit_mlp(X, y, Xv, yv, n_classes: int, hidden, dropout: float, weight_decay: float, class_weight=None,
            epochs: int = 60, lr: float = 1e-3, batch_size: int = 256, eval_every: int = 5, metric="macro_f1",
            seed: int = 0):
    """AdamW with a cosine schedule; returns (head at the best validation epoch, best epoch)."""
    import torch
    import torch.nn.functional as F

    from artlens.models.heads import build_head

    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    Xt = torch.as_tensor(X, dtype=torch.float32)
    yt = torch.as_tensor(y, dtype=torch.long)
    head = build_head(Xt.shape[1], n_classes, hidden, dropout)
    cw = _class_weight_tensor(y, n_classes, class_weight)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, int(np.ceil(len(yt) / batch_size)))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    best = (-np.inf, np.inf)
    best_state, best_epoch = copy.deepcopy(head.state_dict()), 0
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(yt), generator=gen)
        for i in range(0, len(yt), batch_size):
            idx = perm[i : i + batch_size]
            loss = F.cross_entropy(head(Xt[idx]), yt[idx], weight=cw)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        if epoch % eval_every == 0 or epoch == epochs:
            s, nll = _score(_logits(head, Xv), yv, metric)
            if (s, -nll) > (best[0], -best[1]):
                best, best_state, best_epoch = (s, nll), copy.deepcopy(head.state_dict()), epoch
    head.load_state_dict(best_state)
    head.eval()
    return head, best_epoch


def merge_heads(heads: list) -> Any:
    """One `nn.Sequential` whose logits are the mean of the heads' logits (same architecture).

    Hidden layers are stacked side by side (block-diagonal weights), the output layer averages,
    so the ensemble keeps the artifact's `[Linear, ReLU, Dropout] * k + Linear` layout exactly.
    """
    import torch

    from artlens.models.heads import build_head, linear_indices

    if len(heads) == 1:
        return heads[0]
    k = len(heads)
    idx = linear_indices(heads[0])
    lins = [[h[i] for i in idx] for h in heads]
    in_dim = lins[0][0].in_features
    hidden = [k * l.out_features for l in lins[0][:-1]]
    dropout = next((m.p for m in heads[0] if isinstance(m, torch.nn.Dropout)), 0.0)
    merged = build_head(in_dim, lins[0][-1].out_features, hidden, dropout)
    m_idx = linear_indices(merged)
    with torch.no_grad():
        for j, mi in enumerate(m_idx):
            target = merged[mi]
            ws = [l[j].weight for l in lins]
            bs = [l[j].bias for l in lins]
            if len(m_idx) == 1:  # linear heads: average
                target.weight.copy_(torch.stack(ws).mean(0))
                target.bias.copy_(torch.stack(bs).mean(0))
            elif j == 0:
                target.weight.copy_(torch.cat(ws, 0))
                target.bias.copy_(torch.cat(bs, 0))
            elif j < len(m_idx) - 1:
                target.weight.copy_(torch.block_diag(*ws))
                target.bias.copy_(torch.cat(bs, 0))
            else:
                target.weight.copy_(torch.cat(ws, 1) / k)
                target.bias.copy_(torch.stack(bs).mean(0))
    merged.eval()
    return merged


# ----------------------------------------------------------------------------- one task
@dataclass
class TaskResult:
    name: str
    head: Any
    chosen: dict
    hidden: list[int]
    dropout: float
    temperature: float
    threshold: float
    trials: list[dict] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)  # split -> metrics


def _fit(c: dict, Xtr, ytr, Xv, yv, n_classes: int, pcfg: dict, metric: str, seed: int):
    if c["type"] == "linear":
        return fit_linear(Xtr, ytr, n_classes, c["weight_decay"], c.get("class_weight"),
                          int(c.get("max_iter", pcfg["max_iter"]))), None
    return fit_mlp(
        Xtr, ytr, Xv, yv, n_classes, c["hidden"], c["dropout"], c["weight_decay"], c.get("class_weight"),
        epochs=int(c.get("epochs", pcfg["epochs"])), lr=float(c.get("lr", pcfg["lr"])),
        batch_size=int(pcfg["batch_size"]), eval_every=int(pcfg["eval_every"]), metric=metric, seed=seed,
    )


def train_task(name: str, labels: list[str], X: np.ndarray, y: np.ndarray, split: np.ndarray, pcfg: dict,
               calibration: dict, seed: int = 0, progress=None) -> TaskResult:
    """Search the candidates on validation rows, optionally ensemble, calibrate, score val/test."""
    n_classes = len(labels)
    tr = (split == "train") & (y >= 0)
    va = (split == "val") & (y >= 0)
    if tr.sum() == 0:
        raise ValueError(f"task {name!r}: no labelled training rows")
    if va.sum() == 0:
        raise ValueError(f"task {name!r}: no labelled validation rows (hyper-parameters are chosen on them)")
    Xtr, ytr, Xv, yv = X[tr], y[tr], X[va], y[va]
    metric = pcfg.get("metric", "macro_f1")
    cands = expand_candidates(pcfg["candidates"])
    trials, best = [], None

    def trial(c: dict, s: float, nll: float, t0: float) -> None:
        trials.append({"candidate": c, "describe": _describe(c), f"val_{metric}": s, "val_nll": nll,
                       "seconds": round(time.perf_counter() - t0, 2)})
        log.debug("%s: %s -> val %s %.4f (nll %.3f)", name, trials[-1]["describe"], metric, s, nll)
        if progress is not None:
            progress(trials[-1])

    for c in cands:
        t0 = time.perf_counter()
        head, best_epoch = _fit(c, Xtr, ytr, Xv, yv, n_classes, pcfg, metric, seed)
        s, nll = _score(_logits(head, Xv), yv, metric)
        if best_epoch is not None:
            c = {**c, "best_epoch": best_epoch}
        trial(c, s, nll, t0)
        if best is None or (s, -nll) > (best[0], -best[1]):
            best = (s, nll, c, head)
    score, nll, chosen, head = best
    n_ens = int(pcfg.get("ensemble", 1) or 1)
    if chosen["type"] == "mlp" and n_ens > 1:
        t0 = time.perf_counter()
        members = [head] + [
            _fit({k: v for k, v in chosen.items() if k != "best_epoch"}, Xtr, ytr, Xv, yv, n_classes, pcfg, metric,
                 seed + 1 + i)[0]
            for i in range(n_ens - 1)
        ]
        merged = merge_heads(members)
        s, nll_e = _score(_logits(merged, Xv), yv, metric)
        c = {**chosen, "ensemble": n_ens}
        trial(c, s, nll_e, t0)
        if (s, -nll_e) > (score, -nll):
            score, nll, chosen, head = s, nll_e, c, merged
    from artlens.models.heads import linear_indices

    hidden = [head[i].out_features for i in linear_indices(head)[:-1]]
    dropout = float(chosen.get("dropout", 0.0)) if hidden else 0.0
    val_logits = _logits(head, Xv)
    temperature, threshold = calibrate_task(val_logits, yv, calibration)
    res = TaskResult(name, head, chosen, hidden, dropout, temperature, threshold, trials)
    for part in ("train", "val", "test"):
        m = (split == part) & (y >= 0)
        if m.any():
            res.metrics[part] = classification_metrics(_logits(head, X[m]), y[m], labels, temperature, threshold)
            if part == "val":
                raw = classification_metrics(val_logits, yv, labels, 1.0, 0.0)
                res.metrics[part]["ece_uncalibrated"] = raw["ece"]
                res.metrics[part]["nll_uncalibrated"] = raw["nll"]
    return res


# ----------------------------------------------------------------------------- all tasks
@dataclass
class ProbeResult:
    heads: Any  # MultiTaskHeads with norm buffers
    tasks: list  # TaskConfig
    metrics: dict
    results: dict[str, TaskResult]
    mean: np.ndarray
    std: np.ndarray


def standardisation(X: np.ndarray, rows: np.ndarray, enabled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if not enabled:
        return np.zeros(X.shape[1], np.float32), np.ones(X.shape[1], np.float32)
    mean = X[rows].mean(axis=0).astype(np.float32)
    std = X[rows].std(axis=0).astype(np.float32)
    return mean, np.maximum(std, 1e-6).astype(np.float32)


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
