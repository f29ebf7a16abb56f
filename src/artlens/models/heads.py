"""Classification heads: one per task over a shared feature vector.

A head is `[Linear, ReLU, Dropout] * len(hidden) + Linear` (linear when `hidden` is empty). The same
layout is evaluated in numpy by `ArtModel.head_logits`, so inference needs no torch import.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def build_head(in_dim: int, n_classes: int, hidden: Sequence[int] = (), dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = []
    prev = in_dim
    for width in hidden:
        layers += [nn.Linear(prev, int(width)), nn.ReLU(), nn.Dropout(dropout)]
        prev = int(width)
    layers.append(nn.Linear(prev, n_classes))
    return nn.Sequential(*layers)


class MultiTaskHeads(nn.Module):
    """Task name -> head. Optional feature standardisation (probe models) is applied first."""

    def __init__(self, in_dim: int, tasks: dict[str, dict], norm: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.heads = nn.ModuleDict(
            {
                name: build_head(in_dim, len(t["labels"]), t.get("hidden", ()), t.get("dropout", 0.0))
                for name, t in tasks.items()
            }
        )
        if norm is not None:
            self.register_buffer("norm_mean", torch.as_tensor(norm[0], dtype=torch.float32))
            self.register_buffer("norm_std", torch.as_tensor(norm[1], dtype=torch.float32))
        else:
            self.norm_mean = None
            self.norm_std = None

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.norm_mean is not None:
            features = (features - self.norm_mean) / self.norm_std
        return {name: head(features) for name, head in self.heads.items()}


def linear_indices(head: nn.Sequential) -> list[int]:
    """Positions of the Linear layers in a head (their tensor names are `<i>.weight`)."""
    return [i for i, m in enumerate(head) if isinstance(m, nn.Linear)]
