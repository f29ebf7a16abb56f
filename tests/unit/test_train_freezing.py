"""Freezing strategies (named, top N %, two-phase), optimizers and schedules on a tiny CNN."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from artlens.train.freezing import (
    TwoPhaseFinetuning, freeze_named, freeze_top_fraction, keep_frozen_bn_eval, parameter_layers,
)
from artlens.train.optim import build_optimizer, build_scheduler

torch.set_num_threads(1)


def count_trainable(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters())


def tiny_cnn() -> nn.Module:
    """A ResNet-shaped toy: conv1, bn1, layer1, layer2, pooled features."""
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, 4, 3, padding=1), bn1=nn.BatchNorm2d(4), relu=nn.ReLU(),
        layer1=nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        layer2=nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()),
        layer3=nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()),
        pool=nn.AdaptiveAvgPool2d(1), flat=nn.Flatten(),
    ))


def _train_steps(model, steps=3):
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x = torch.randn(4, 3, 8, 8)
    for _ in range(steps):
        opt.zero_grad()
        model(x).pow(2).mean().backward()
        opt.step()


def test_freeze_named_layers_stay_unchanged_and_bn_stats_fixed():
    model = tiny_cnn()
    frozen = freeze_named(model, ["conv1", "bn1", "layer1", "layer2"])
    assert frozen == ["conv1", "bn1", "layer1", "layer2"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    keep_frozen_bn_eval(model)
    assert not model.bn1.training and not model.layer2[1].training
    _train_steps(model)
    after = model.state_dict()
    for k in before:
        if k.startswith(("conv1", "bn1", "layer1", "layer2")):
            assert torch.equal(before[k], after[k]), k  # weights AND running stats untouched
        elif k.startswith("layer3") and k.endswith("weight"):
            assert not torch.equal(before[k], after[k]), k


def test_freeze_named_matches_suffix_in_a_wrapper_and_rejects_unknown():
    wrapper = nn.Module()
    wrapper.model = tiny_cnn()
    assert freeze_named(wrapper, ["layer1"]) == ["model.layer1"]
    assert not any(p.requires_grad for p in wrapper.model.layer1.parameters())
    with pytest.raises(ValueError, match="no layer named 'layer9'"):
        freeze_named(wrapper, ["layer9"])


def test_freeze_top_fraction_keeps_the_last_layers():
    model = tiny_cnn()
    layers = parameter_layers(model)
    assert [n for n, _ in layers] == ["conv1", "bn1", "layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0"]
    kept = freeze_top_fraction(model, 0.3)  # round(7 * 0.3) = 2
    assert kept == ["layer2.1", "layer3.0"]
    assert not model.conv1.weight.requires_grad and model.layer3[0].weight.requires_grad
    assert freeze_top_fraction(model, 1.0) == [n for n, _ in layers]
    assert count_trainable(model)[0] == count_trainable(model)[1]
    assert freeze_top_fraction(model, 0.0) == []
    assert count_trainable(model)[0] == 0
    with pytest.raises(ValueError):
        freeze_top_fraction(model, 1.5)


class _Module(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = tiny_cnn()
        self.head = nn.Linear(8, 2)
        self.current_epoch = 0


def test_two_phase_freezes_then_unfreezes_at_the_milestone():
    m = _Module()
    cb = TwoPhaseFinetuning(milestone=2)
    cb.freeze_before_training(m)
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert all(p.requires_grad for p in m.head.parameters())
    opt = build_optimizer([{"params": m.head.parameters()}, {"params": m.backbone.parameters()}], {"name": "sgd", "lr": 0.1})
    w0 = m.backbone.conv1.weight.clone()
    for epoch in range(4):
        cb.finetune_function(m, epoch, opt)
        opt.zero_grad()
        m.head(m.backbone(torch.randn(2, 3, 8, 8))).sum().backward()
        opt.step()
        moved = not torch.equal(w0, m.backbone.conv1.weight)
        assert moved == (epoch >= 2), epoch
    assert all(p.requires_grad for p in m.backbone.parameters())


def test_two_phase_resumed_after_milestone_starts_unfrozen():
    m = _Module()
    m.current_epoch = 3
    TwoPhaseFinetuning(milestone=2).freeze_before_training(m)
    assert all(p.requires_grad for p in m.backbone.parameters())


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam),
                                      ("adamw", torch.optim.AdamW), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers_build_and_reduce_a_loss(name, cls):
    torch.manual_seed(0)
    lin = nn.Linear(4, 2)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    opt = build_optimizer(lin.parameters(), {"name": name, "lr": 0.01, "weight_decay": 1e-4, "momentum": 0.9})
    assert isinstance(opt, cls)
    first = None
    for _ in range(30):
        loss = nn.functional.cross_entropy(lin(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_optimizer_rejects_unknown():
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer(nn.Linear(2, 2).parameters(), {"name": "lion"})


def _lrs(cfg, epochs=6, lr=1.0):
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)
    sched = build_scheduler(opt, cfg, epochs)
    out = []
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        if sched is not None:
            sched.step()
    return out


def test_schedules():
    assert _lrs({"name": "none"}) == [1.0] * 6
    cos = _lrs({"name": "cosine"}, epochs=4)
    assert cos[0] == 1.0 and cos == sorted(cos, reverse=True) and cos[2] == pytest.approx(0.5)
    assert _lrs({"name": "exponential", "gamma": 0.5}, epochs=3) == pytest.approx([1.0, 0.5, 0.25])
    assert _lrs({"name": "step", "step_size": 2}) == pytest.approx([1.0, 1.0, 0.5, 0.5, 0.25, 0.25])
    warm = _lrs({"name": "cosine", "warmup_epochs": 2}, epochs=6)
    assert warm[0] == pytest.approx(0.1) and warm[1] < warm[2] and warm[2] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="unknown scheduler"):
        _lrs({"name": "cyclic"})
