"""A trained artist head as a model part: `ArtistTask` (the head, its `unknown artist` rule and the
tensors the rule needs) and `add_artist_task(model, task)`, which puts it into another model.

The head is linear over standardised embeddings; `ArtistTask.tensors(norm)` re-expresses it (and its
"someone else" background logits) in another model's standardisation exactly, so it can join a model
whose other heads were trained with another `norm.mean` / `norm.std`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from artlens.data.artist_split import ArtistSplit
from artlens.models.artmodel import ArtModel, new_config


@dataclass
class ArtistTask:
    """A trained artist head with its open-set rule; `to_model` / `add_artist_task` package it."""

    task: Any  # TaskConfig (name, labels, temperature, unknown rule)
    layers: list[tuple[np.ndarray, np.ndarray]]  # the head's Linear (weight, bias), on standardised features
    mean: np.ndarray  # the standardisation the head was trained with
    std: np.ndarray
    centroids: np.ndarray  # (n_classes, dim) unit centroids of the training embeddings
    openset: dict  # {"method", "rule", "methods": {m: {"auroc", "balanced", "operating_point"}}, "validation"}
    # "someone else" logits (n, dim), (n,), standardised space: one per background class (`background_classes`)
    background: tuple[np.ndarray, np.ndarray] | None = None
    metrics: dict = field(default_factory=dict)
    split: ArtistSplit | None = None
    backbone: dict = field(default_factory=dict)  # {"name", "feature_dim", "backbone_id"?}
    # The validation scores the rule was chosen on (not saved): {"known": {method: scores},
    # "unknown": {method: scores}, "correct": bool per known painting}; out-of-fold with cross-fitting.
    calibration_scores: dict = field(default_factory=dict, repr=False)

    @property
    def labels(self) -> list[str]:
        return list(self.task.labels)

    def summary(self) -> dict:
        """The compact numbers a model's config.json carries (the full metrics name every kept-out artist)."""
        m = self.metrics
        out = {k: m[k] for k in ("split", "selected_head", "closed_set_val", "closed_set_test", "nearest_centroid_test")
               if k in m}
        v = m.get("open_set_validation") or {}
        if v:
            out["open_set_validation"] = {
                "method": v["method"],
                "auroc": {k: r["auroc"] for k, r in v["methods"].items()},
                "operating_point": v["methods"][v["method"]]["operating_point"],
            }
        ft = m.get("fold_transfer") or {}
        if ft:
            out["fold_transfer"] = ft
        if "open_set_test" in m:
            out["open_set_test"] = m["open_set_test"]
        return out

    def tensors(self, norm: tuple[np.ndarray, np.ndarray] | None = None, *, all_openset: bool = False) -> dict[str, np.ndarray]:
        """Tensors of this task for a model whose features are standardised with `norm`
        (`(mean, std)`, or None for a model without `norm.*`). The `openset.*` tensors are those
        its rule needs (`all_openset`: those of every method, to compare them)."""
        name = self.task.name
        m2, s2 = (np.zeros_like(self.mean), np.ones_like(self.std)) if norm is None else norm

        def refold(w0, b0):
            # The model feeds z = (x - m2) / s2; the head was trained on (x - m1) / s1 = (s2 z + m2 - m1) / s1.
            return (w0 * (s2 / self.std)[None, :]).astype(np.float32), (b0 + w0 @ ((m2 - self.mean) / self.std)).astype(np.float32)

        (w0, b0), rest = self.layers[0], self.layers[1:]
        w, b = refold(w0, b0)
        out = {f"heads.{name}.0.weight": w, f"heads.{name}.0.bias": b}
        for j, (wj, bj) in enumerate(rest, start=1):
            # Linear layers sit at positions 0, 3, 6, ... of `[Linear, ReLU, Dropout] * k + Linear`.
            out[f"heads.{name}.{3 * j}.weight"] = wj.astype(np.float32)
            out[f"heads.{name}.{3 * j}.bias"] = bj.astype(np.float32)
        method = (self.task.unknown or {}).get("method")
        if all_openset or method == "centroid":
            out[f"openset.{name}.centroids"] = self.centroids.astype(np.float32)
        if self.background is not None and (all_openset or method == "background"):
            out[f"openset.{name}.background.weight"], out[f"openset.{name}.background.bias"] = refold(*self.background)
        return out

    def to_model(self, config: dict | None = None, *, all_openset: bool = False):
        """A standalone `ArtModel` with this one task (its own standardisation)."""
        cfg = dict(config or {})
        cfg.setdefault("backbone", {k: v for k, v in self.backbone.items() if k in ("name", "feature_dim", "weights_id")})
        cfg["tasks"] = [self.task]
        cfg.setdefault("metrics", {self.task.name: self.summary()})
        tensors = {"norm.mean": self.mean.astype(np.float32), "norm.std": self.std.astype(np.float32)}
        tensors.update(self.tensors((self.mean, self.std), all_openset=all_openset))
        return ArtModel(new_config(cfg), tensors)


def add_artist_task(model, artist: ArtistTask, *, replace: bool = True):
    """A new `ArtModel`: `model` plus the artist head, its `unknown` rule and `openset.artist.*`.

    The head is re-expressed in the model's feature standardisation (exactly; see `ArtistTask.tensors`),
    so it can join a model whose other heads were trained with another `norm.mean`/`norm.std`.
    """
    name = artist.task.name
    if artist.backbone.get("name") and artist.backbone["name"] != model.backbone_name:
        raise ValueError(
            f"the artist head was trained on {artist.backbone['name']} embeddings, the model uses {model.backbone_name}"
        )
    if int(artist.mean.shape[0]) != model.feature_dim:
        raise ValueError(f"the artist head expects {artist.mean.shape[0]}-d features, the model gives {model.feature_dim}")
    if name in model.task_names and not replace:
        raise ValueError(f"the model already has a task {name!r}")
    norm = (model.tensors["norm.mean"], model.tensors["norm.std"]) if "norm.mean" in model.tensors else None
    tensors = {k: v for k, v in model.tensors.items() if not k.startswith((f"heads.{name}.", f"openset.{name}."))}
    tensors.update(artist.tensors(norm))
    config = dict(model.config)
    task = asdict(artist.task)
    origin = next((t for t in model.tasks if t.name == "origin" and "ai" in t.labels), None)
    if origin is not None:  # an AI imitation of a painter is not that painter's work
        task["withhold"] = {"task": origin.name, "when": "ai"}
    config["tasks"] = [asdict(t) for t in model.tasks if t.name != name] + [task]
    metrics = dict(config.get("metrics") or {})
    metrics[name] = artist.summary()
    config["metrics"] = metrics
    return ArtModel(config, tensors)
