"""Losses for multi-task classification with missing labels.

Targets are class indices with `IGNORE` (-1) where a row has no label for that task: those rows
are masked out of that task's loss, so datasets labelled for different tasks train one model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -1


def class_weights(targets: np.ndarray | torch.Tensor, n_classes: int, mode: str | None = "balanced") -> torch.Tensor | None:
    """sklearn's `balanced` weights (n_samples / (n_classes * count)), ignoring unlabelled rows.

    Classes absent from `targets` get weight 1 (they never occur in the loss anyway).
    """
    if mode is None:
        return None
    if mode != "balanced":
        raise ValueError(f"class weights: unknown mode {mode!r} (use 'balanced' or none)")
    from sklearn.utils.class_weight import compute_class_weight

    y = np.asarray(targets).astype(np.int64).ravel()
    y = y[y != IGNORE]
    weights = np.ones(n_classes, dtype=np.float32)
    present = np.unique(y)
    if len(present):
        weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.from_numpy(weights)


class FocalLoss(nn.Module):
    """Focal loss (Lin et al. 2017): CE scaled by (1 - p_t)^gamma, so easy examples count less.

    `weight` plays the role of alpha (per-class weights); the mean is taken over labelled rows,
    weighted like `nn.CrossEntropyLoss` does.
    """

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None, ignore_index: int = IGNORE,
                 label_smoothing: float = 0.0):
        super().__init__()
        self.gamma = float(gamma)
        self.ignore_index = ignore_index
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", weight if weight is None else weight.float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        keep = target != self.ignore_index
        logits, target = logits[keep].float(), target[keep]
        if target.numel() == 0:
            return logits.sum() * 0.0
        logp = F.log_softmax(logits, dim=-1)
        logp_t = logp.gather(1, target[:, None]).squeeze(1)
        ce = -logp_t
        if self.label_smoothing:
            ce = (1 - self.label_smoothing) * ce - self.label_smoothing * logp.mean(dim=-1)
        loss = (1 - logp_t.exp()).clamp(min=0).pow(self.gamma) * ce
        w = self.weight[target] if self.weight is not None else torch.ones_like(loss)
        return (loss * w).sum() / w.sum()


class MaskedCrossEntropy(nn.CrossEntropyLoss):
    """`nn.CrossEntropyLoss` that returns 0 (not NaN) when a batch has no label for the task."""

    def __init__(self, weight=None, label_smoothing: float = 0.0):
        super().__init__(weight=weight, ignore_index=IGNORE, label_smoothing=label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not bool((target != IGNORE).any()):
            return logits.sum() * 0.0
        return super().forward(logits.float(), target)


def build_loss(name: str = "ce", *, weight: torch.Tensor | None = None, label_smoothing: float = 0.0,
               gamma: float = 2.0) -> nn.Module:
    name = name.lower()
    if name == "ce":
        return MaskedCrossEntropy(weight=weight, label_smoothing=label_smoothing)
    if name == "focal":
        return FocalLoss(gamma=gamma, weight=weight, label_smoothing=label_smoothing)
    raise ValueError(f"unknown loss {name!r} (use ce or focal)")


class MultiTaskLoss(nn.Module):
    """Sum over tasks of `weight_t * loss_t`, each loss masked to the rows labelled for its task."""

    def __init__(self, losses: Mapping[str, nn.Module], weights: Mapping[str, float] | None = None):
        super().__init__()
        self.losses = nn.ModuleDict(dict(losses))
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in losses}

    def forward(self, logits: Mapping[str, torch.Tensor], targets: torch.Tensor | Mapping[str, torch.Tensor]):
        """`targets`: a dict task -> (N,) or a (N, n_tasks) tensor in the order of `losses`."""
        total = None
        parts: dict[str, torch.Tensor] = {}
        for i, (task, fn) in enumerate(self.losses.items()):
            y = targets[task] if isinstance(targets, Mapping) else targets[:, i]
            part = fn(logits[task], y)
            parts[task] = part.detach()
            total = part * self.weights[task] if total is None else total + part * self.weights[task]
        return total, parts


def weight_penalty(params: Iterable[tuple[str, torch.Tensor]], l1: float = 0.0, l2: float = 0.0) -> torch.Tensor | None:
    """`l1 * sum|w| + l2/2 * sum w^2` over trainable weight matrices and kernels (not biases or norms)."""
    if not l1 and not l2:
        return None
    total = None
    for name, p in params:
        if not p.requires_grad or p.ndim < 2:
            continue
        term = 0.0
        if l1:
            term = term + l1 * p.abs().sum()
        if l2:
            term = term + 0.5 * l2 * p.pow(2).sum()
        total = term if total is None else total + term
    return total
