"""Optimizers (SGD, Adam, AdamW, RMSprop) and per-epoch learning-rate schedules (cosine annealing,
exponential decay, step halving, optional linear warm-up), built from a recipe's sections."""

from __future__ import annotations

from collections.abc import Iterable

import torch

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")
SCHEDULERS = ("none", "cosine", "exponential", "step")


def build_optimizer(param_groups: Iterable, cfg: dict) -> torch.optim.Optimizer:
    """`param_groups`: parameters or dicts `{"params": ..., "lr": ...}` (per-group lr wins)."""
    name = str(cfg.get("name", "adamw")).lower()
    lr = float(cfg.get("lr", 1e-3))
    wd = float(cfg.get("weight_decay", 0.0) or 0.0)
    momentum = float(cfg.get("momentum", 0.9) or 0.0)
    if name == "sgd":
        return torch.optim.SGD(param_groups, lr=lr, momentum=momentum, weight_decay=wd,
                               nesterov=bool(cfg.get("nesterov")) and momentum > 0)
    if name == "adam":
        return torch.optim.Adam(param_groups, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(param_groups, lr=lr, weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(param_groups, lr=lr, momentum=momentum, weight_decay=wd)
    raise ValueError(f"unknown optimizer {name!r} (use one of {', '.join(OPTIMIZERS)})")


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: dict, epochs: int):
    """A scheduler stepped once per epoch, or None."""
    from torch.optim import lr_scheduler as S

    name = str(cfg.get("name", "none") or "none").lower()
    warmup = int(cfg.get("warmup_epochs", 0) or 0)
    main_epochs = max(1, int(epochs) - warmup)
    if name == "none":
        main = None
    elif name == "cosine":
        main = S.CosineAnnealingLR(optimizer, T_max=main_epochs, eta_min=float(cfg.get("min_lr", 0.0) or 0.0))
    elif name == "exponential":
        main = S.ExponentialLR(optimizer, gamma=float(cfg.get("gamma", 0.9)))
    elif name == "step":
        main = S.StepLR(optimizer, step_size=int(cfg.get("step_size", 3)), gamma=float(cfg.get("step_gamma", 0.5)))
    else:
        raise ValueError(f"unknown scheduler {name!r} (use one of {', '.join(SCHEDULERS)})")
    if not warmup:
        return main
    warm = S.LinearLR(optimizer, start_factor=0.1, end_factor=1.0, total_iters=warmup)
    if main is None:
        return warm
    return S.SequentialLR(optimizer, [warm, main], milestones=[warmup])
