"""One task's head chosen on its validation rows: the candidate grid, the search, calibration, scores."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artlens.train.calibrate import calibrate_task, classification_metrics
from artlens.train.fitting import _logits, _score, fit_linear, fit_mlp, merge_heads

log = logging.getLogger(__name__)


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
