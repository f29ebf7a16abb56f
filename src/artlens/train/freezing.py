"""Which backbone layers train: by name, the top N % of layers, or two phases (BaseFinetuning).

Frozen means `requires_grad=False` and, for BatchNorm, running statistics left alone (the layer
stays in eval mode while the rest trains; `keep_frozen_bn_eval` re-applies that after Lightning
switches the model to train mode).
"""

from __future__ import annotations

from collections.abc import Sequence

from lightning.pytorch.callbacks import BaseFinetuning
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad = trainable


def resolve_modules(model: nn.Module, names: Sequence[str]) -> list[tuple[str, nn.Module]]:
    """Modules by dotted path (`layer1`, `blocks.0`). A name that is not a full path may match the
    end of one (`conv1` in a wrapper that holds `model.conv1`); the shallowest match wins."""
    modules = dict(model.named_modules())
    out = []
    for name in names:
        name = str(name).strip()
        if name in modules and name:
            out.append((name, modules[name]))
            continue
        matches = sorted((k for k in modules if k.endswith("." + name)), key=lambda k: k.count("."))
        if not matches:
            top = [k for k, _ in model.named_children()]
            raise ValueError(f"no layer named {name!r} in the backbone; its top-level layers are: {', '.join(top)}")
        out.append((matches[0], modules[matches[0]]))
    return out


def freeze_named(model: nn.Module, names: Sequence[str], train_bn: bool = False) -> list[str]:
    """Freeze the named modules (and everything inside them). Returns the frozen module paths."""
    found = resolve_modules(model, names)
    for _, module in found:
        _set_trainable(module, False)
        if train_bn:
            for m in module.modules():
                if isinstance(m, _BatchNorm):
                    _set_trainable(m, True)
    return [name for name, _ in found]


def parameter_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that own parameters directly (conv, linear, norm...), in definition order."""
    return [
        (name, m) for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))
    ]


def freeze_top_fraction(model: nn.Module, trainable_fraction: float, train_bn: bool = False) -> list[str]:
    """Keep the last `trainable_fraction` of parameterised layers (the top of the network)
    trainable and freeze the rest. Returns the trainable layer paths."""
    if not 0.0 <= trainable_fraction <= 1.0:
        raise ValueError(f"trainable_fraction must be within [0, 1], got {trainable_fraction}")
    layers = parameter_layers(model)
    n_train = int(round(len(layers) * trainable_fraction))
    cut = len(layers) - n_train
    for i, (_, m) in enumerate(layers):
        trainable = i >= cut or (train_bn and isinstance(m, _BatchNorm))
        for p in m.parameters(recurse=False):
            p.requires_grad = trainable
    return [name for name, _ in layers[cut:]]


def keep_frozen_bn_eval(model: nn.Module) -> None:
    """BatchNorm layers with no trainable parameter go to eval mode (running stats stay fixed)."""
    for m in model.modules():
        if isinstance(m, _BatchNorm) and m.training:
            params = list(m.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                m.eval()


class TwoPhaseFinetuning(BaseFinetuning):
    """Phase 1 trains the heads on a frozen backbone; at epoch `milestone` the backbone unfreezes.

    The optimizer holds every parameter from the start (frozen ones have no gradient, so it skips
    them), so the learning-rate schedule covers the backbone after the milestone too, and the
    backbone's learning rate is the recipe's `backbone_lr_factor` times the heads'.
    """

    def __init__(self, milestone: int = 2, attr: str = "backbone", train_bn: bool = False):
        super().__init__()
        self.milestone = int(milestone)
        self.attr = attr
        self.train_bn = train_bn

    def freeze_before_training(self, pl_module) -> None:
        backbone = getattr(pl_module, self.attr)
        if pl_module.current_epoch < self.milestone:  # a run resumed after the milestone stays unfrozen
            self.freeze(backbone, train_bn=self.train_bn)

    def finetune_function(self, pl_module, epoch: int, optimizer) -> None:
        if epoch >= self.milestone:
            backbone = getattr(pl_module, self.attr)
            if not any(p.requires_grad for p in backbone.parameters()):
                self.make_trainable(backbone)

    def on_fit_start(self, trainer, pl_module) -> None:
        # BaseFinetuning restores param groups it added itself; this callback adds none.
        return None
