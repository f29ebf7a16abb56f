"""Fitting one head on features: standardisation, logistic regression (LBFGS), MLP (AdamW), ensemble merge."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from artlens import metrics as M
from artlens.train.calibrate import softmax


def standardisation(X: np.ndarray, rows: np.ndarray, enabled: bool = True) -> tuple[np.ndarray, np.ndarray]:
    if not enabled:
        return np.zeros(X.shape[1], np.float32), np.ones(X.shape[1], np.float32)
    mean = X[rows].mean(axis=0).astype(np.float32)
    std = X[rows].std(axis=0).astype(np.float32)
    return mean, np.maximum(std, 1e-6).astype(np.float32)


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
