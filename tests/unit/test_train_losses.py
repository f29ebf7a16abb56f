"""Losses: masking of missing labels, label smoothing, focal loss, class weights, penalties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from artlens.train.losses import (
    IGNORE, FocalLoss, MaskedCrossEntropy, MultiTaskLoss, build_loss, class_weights, weight_penalty,
)

torch.set_num_threads(1)


def _data(n=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


def test_masked_ce_ignores_missing_rows_and_matches_plain_ce():
    z, y = _data()
    y_masked = y.clone()
    y_masked[::3] = IGNORE
    keep = y_masked != IGNORE
    loss = MaskedCrossEntropy()(z, y_masked)
    assert torch.allclose(loss, F.cross_entropy(z[keep], y[keep]))
    # changing the logits of unlabelled rows changes nothing
    z2 = z.clone()
    z2[~keep] += 100.0
    assert torch.allclose(MaskedCrossEntropy()(z2, y_masked), loss)


def test_masked_ce_all_missing_is_zero_with_gradient():
    z, _ = _data()
    z.requires_grad_(True)
    loss = MaskedCrossEntropy()(z, torch.full((12,), IGNORE))
    assert loss.item() == 0.0
    loss.backward()  # no NaN, a zero gradient
    assert torch.count_nonzero(z.grad) == 0


def test_label_smoothing_matches_torch_and_raises_loss_on_confident_logits():
    z, y = _data()
    confident = F.one_hot(y, 4).float() * 20
    plain = build_loss("ce")(confident, y)
    smooth = build_loss("ce", label_smoothing=0.1)(confident, y)
    assert smooth > plain + 0.5
    assert torch.allclose(build_loss("ce", label_smoothing=0.1)(z, y), F.cross_entropy(z, y, label_smoothing=0.1))


def test_focal_gamma_zero_is_ce_and_downweights_easy_examples():
    z, y = _data(n=64)
    assert torch.allclose(FocalLoss(gamma=0.0)(z, y), F.cross_entropy(z, y), atol=1e-6)
    easy = F.one_hot(y, 4).float() * 4.0  # p_t ~ 0.95
    ratio_easy = FocalLoss(gamma=2.0)(easy, y) / F.cross_entropy(easy, y)
    hard = torch.zeros_like(easy)  # p_t = 0.25
    ratio_hard = FocalLoss(gamma=2.0)(hard, y) / F.cross_entropy(hard, y)
    assert ratio_easy < 0.01 and ratio_hard > 0.5


def test_focal_masks_and_weights():
    z, y = _data(n=20)
    y[:5] = IGNORE
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    loss = FocalLoss(gamma=0.0, weight=w)(z, y)
    keep = y != IGNORE
    assert torch.allclose(loss, F.cross_entropy(z[keep], y[keep], weight=w), atol=1e-6)
    assert FocalLoss()(z, torch.full((20,), IGNORE)).item() == 0.0


def test_balanced_class_weights_follow_sklearn_and_ignore_missing():
    y = np.array([0, 0, 0, 1, IGNORE, IGNORE, 2, 2])
    w = class_weights(y, 4, "balanced")
    # n / (k * count) over the 6 labelled rows and 3 present classes
    assert torch.allclose(w[:3], torch.tensor([6 / 9, 6 / 3, 6 / 6]))
    assert w[3] == 1.0  # absent class
    assert class_weights(y, 4, None) is None
    with pytest.raises(ValueError):
        class_weights(y, 4, "inverse")


def test_weighted_ce_favours_rare_class():
    y = torch.tensor([0] * 9 + [1])
    z = torch.zeros(10, 2, requires_grad=True)
    w = class_weights(y.numpy(), 2)
    build_loss("ce", weight=w)(z, y).backward()
    # gradient pushes class 1's logit up more than an unweighted loss would
    g_weighted = z.grad[:, 1].sum().item()
    z.grad = None
    build_loss("ce")(z, y).backward()
    assert g_weighted < z.grad[:, 1].sum().item()


def test_multitask_loss_sums_masked_tasks():
    za, ya = _data(seed=1)
    zb, yb = _data(seed=2)
    yb[:6] = IGNORE
    mt = MultiTaskLoss({"a": build_loss("ce"), "b": build_loss("ce")}, {"a": 1.0, "b": 0.5})
    total, parts = mt({"a": za, "b": zb}, torch.stack([ya, yb], 1))
    keep = yb != IGNORE
    expect = F.cross_entropy(za, ya) + 0.5 * F.cross_entropy(zb[keep], yb[keep])
    assert torch.allclose(total, expect)
    assert set(parts) == {"a", "b"}


def test_weight_penalty_l1_l2_skip_biases_and_frozen():
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.fill_(2.0)
        lin.bias.fill_(5.0)
    p = weight_penalty(lin.named_parameters(), l1=0.1, l2=0.0)
    assert torch.isclose(p, torch.tensor(0.1 * 6 * 2.0))
    p = weight_penalty(lin.named_parameters(), l1=0.0, l2=0.2)
    assert torch.isclose(p, torch.tensor(0.5 * 0.2 * 6 * 4.0))
    assert weight_penalty(lin.named_parameters()) is None
    lin.weight.requires_grad_(False)
    assert weight_penalty(lin.named_parameters(), l1=1.0) is None


def test_l2_penalty_shrinks_weights_in_training():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    norms = []
    for l2 in (0.0, 1.0):
        torch.manual_seed(0)
        lin = torch.nn.Linear(5, 3)
        opt = torch.optim.SGD(lin.parameters(), lr=0.1)
        for _ in range(100):
            loss = F.cross_entropy(lin(x), y)
            pen = weight_penalty(lin.named_parameters(), l2=l2)
            if pen is not None:
                loss = loss + pen
            opt.zero_grad()
            loss.backward()
            opt.step()
        norms.append(lin.weight.norm().item())
    assert norms[1] < 0.5 * norms[0]
