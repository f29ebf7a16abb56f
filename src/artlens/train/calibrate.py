"""Calibration on validation data: a temperature per head, then a per-task "unsure" threshold.

Temperature scaling (Guo et al. 2017): one scalar T > 0 per head minimising the negative
log-likelihood of `softmax(logits / T)` on validation logits (LBFGS on log T). It changes the
confidence, never the predicted class.

Threshold rule (`precision`): predictions whose top calibrated probability is under the threshold
are answered "unsure". We take the lowest threshold at which the accepted validation predictions
reach the target precision (default 0.90), provided it keeps at least `min_coverage` of them; when
the target cannot be reached with that coverage, the threshold that keeps exactly `min_coverage`
is used (the most precise operating point still answering most images). A task whose validation
accuracy already reaches the target gets threshold 0 (never unsure).
"""

from __future__ import annotations

import numpy as np

from artlens import metrics as M
from artlens.metrics import softmax


def fit_temperature(logits: np.ndarray, targets: np.ndarray, max_iter: int = 100) -> float:
    """The T minimising NLL(softmax(logits / T), targets); 1.0 when there is nothing to fit."""
    import torch
    import torch.nn.functional as F

    keep = np.asarray(targets) >= 0
    if keep.sum() < 2:
        return 1.0
    z = torch.as_tensor(np.asarray(logits)[keep], dtype=torch.float64)
    y = torch.as_tensor(np.asarray(targets)[keep], dtype=torch.long)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.exp().item())
    if not np.isfinite(t) or t <= 0:
        return 1.0
    return float(np.clip(t, 0.05, 20.0))


def choose_threshold(probs: np.ndarray, targets: np.ndarray, rule: str = "precision", target: float = 0.9,
                     min_coverage: float = 0.5, value: float | None = None) -> float:
    """The per-task "unsure" threshold from validation probabilities (see the module docstring)."""
    rule = (rule or "none").lower()
    if rule == "none":
        return 0.0
    if rule == "fixed":
        if value is None:
            raise ValueError("threshold rule 'fixed' needs a value")
        return float(value)
    if rule != "precision":
        raise ValueError(f"unknown threshold rule {rule!r} (use precision, fixed or none)")
    keep = np.asarray(targets) >= 0
    probs, y = np.asarray(probs)[keep], np.asarray(targets)[keep]
    if len(y) == 0:
        return 0.0
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    order = np.argsort(-conf, kind="stable")
    conf_sorted, correct_sorted = conf[order], correct[order]
    n_accept = np.arange(1, len(y) + 1)
    precision = np.cumsum(correct_sorted) / n_accept
    if precision[-1] >= target:
        return 0.0
    # Accepting the k most confident predictions = threshold conf_sorted[k-1]; ties are accepted
    # together, so only positions where the next confidence is strictly lower are valid cuts.
    valid = np.ones(len(y), dtype=bool)
    valid[:-1] = conf_sorted[:-1] > conf_sorted[1:]
    min_k = max(1, int(np.ceil(min_coverage * len(y))))
    ok = valid & (precision >= target) & (n_accept >= min_k)
    if ok.any():
        k = int(np.nonzero(ok)[0].max())  # the largest accepted set = the lowest threshold
    else:
        cands = np.nonzero(valid & (n_accept >= min_k))[0]
        k = int(cands.min()) if len(cands) else len(y) - 1
    return float(conf_sorted[k])


def classification_metrics(logits: np.ndarray, targets: np.ndarray, labels: list[str], temperature: float = 1.0,
                           threshold: float = 0.0) -> dict:
    """accuracy, macro-F1, NLL and ECE (calibrated), coverage and accuracy above the threshold.

    Rows with a negative target (no label for this task) are left out. The numbers are
    `artlens.metrics`' (macro-F1 over the classes present), the ones `artlens evaluate` reports.
    """
    keep = np.asarray(targets) >= 0
    z, y = np.asarray(logits)[keep], np.asarray(targets)[keep]
    if len(y) == 0:
        return {"n": 0}
    probs = softmax(z / temperature)
    pred = probs.argmax(axis=1)
    conf = probs.max(axis=1)
    accepted = conf >= threshold
    return {
        "n": int(len(y)),
        "accuracy": M.accuracy(y, pred),
        "macro_f1": M.macro_f1(y, pred),
        "nll": M.log_loss(probs, y),
        "ece": M.expected_calibration_error(probs, y),
        "coverage": float(accepted.mean()),
        "accuracy_accepted": float((pred[accepted] == y[accepted]).mean()) if accepted.any() else float("nan"),
        "per_class_f1": {lab: float(v) for lab, v in zip(labels, M.per_class_prf(y, pred, len(labels))[2])},
    }


def calibrate_task(val_logits: np.ndarray, val_targets: np.ndarray, cfg: dict) -> tuple[float, float]:
    """(temperature, threshold) for one task from its validation logits and the recipe's section."""
    t = fit_temperature(val_logits, val_targets) if cfg.get("temperature", True) else 1.0
    th_cfg = cfg.get("threshold") or {"rule": "none"}
    keep = np.asarray(val_targets) >= 0
    probs = softmax(np.asarray(val_logits)[keep] / t) if keep.any() else np.zeros((0, 1))
    threshold = choose_threshold(
        probs, np.asarray(val_targets)[keep], rule=th_cfg.get("rule", "precision"),
        target=float(th_cfg.get("target", 0.9)), min_coverage=float(th_cfg.get("min_coverage", 0.5)),
        value=th_cfg.get("value"),
    )
    return t, threshold
