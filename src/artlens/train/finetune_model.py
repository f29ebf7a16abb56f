"""The fine-tune network: a registry backbone -> L2-normalised features -> `MultiTaskHeads`.

The heads' `norm` buffers scale the unit vectors by sqrt(dim) (mean 0, std 1/sqrt(dim)), so every
feature has unit RMS like standardised probe features, and the exported model predicts from the
encoder's normalised embeddings unchanged. Losses with masked missing labels, class weights,
label smoothing, focal loss, L1/L2; freezing by name, top N %, or two phases; the optimizer and
schedule of the recipe.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import lightning as L

from artlens.train.losses import IGNORE, MultiTaskLoss, build_loss, weight_penalty


def _create_backbone(name: str, pretrained: bool, weights=None):
    from artlens.models.backbones import create_backbone

    return create_backbone(name, pretrained=pretrained, weights=weights) if weights else create_backbone(name, pretrained=pretrained)


def _get_spec(name: str):
    from artlens.models.backbones import get_spec

    return get_spec(name)


class ArtClassifier(L.LightningModule):
    """`backbone`: the network to fine-tune; None builds the recipe's from the registry."""

    def __init__(self, recipe: dict, tasks: list[dict], feature_dim: int, class_weight: dict[str, Any] | None = None,
                 backbone: torch.nn.Module | None = None):
        super().__init__()
        from artlens.models.heads import MultiTaskHeads
        from artlens.train.freezing import freeze_named, freeze_top_fraction

        self.recipe = recipe
        self.task_defs = [{"name": t["name"], "labels": list(t["labels"]), "column": t["column"],
                           "hidden": list(t.get("hidden") or []), "dropout": float(t.get("dropout") or 0.0)}
                          for t in tasks]
        bb = recipe["backbone"]
        # the registry builds backbones in eval mode; Lightning keeps a module's mode as it is
        if backbone is None:
            backbone = _create_backbone(bb["name"], bool(bb.get("pretrained", True)), bb.get("weights"))
        self.backbone = backbone.train()
        self.feature_dim = int(feature_dim)
        scale = torch.full((self.feature_dim,), 1.0 / math.sqrt(self.feature_dim))
        self.heads = MultiTaskHeads(self.feature_dim, {t["name"]: t for t in self.task_defs},
                                    norm=(torch.zeros(self.feature_dim), scale))
        ft = recipe["finetune"]
        lc = ft["loss"]
        losses = {
            t["name"]: build_loss(lc["name"], weight=(class_weight or {}).get(t["name"]),
                                  label_smoothing=float(lc.get("label_smoothing") or 0.0), gamma=float(lc.get("gamma", 2.0)))
            for t in self.task_defs
        }
        self.criterion = MultiTaskLoss(losses, {t["name"]: t.get("weight", 1.0) for t in tasks})
        fz = ft["freeze"]
        self.frozen_info = ""
        if fz["strategy"] == "named":
            self.frozen_info = "frozen: " + ", ".join(freeze_named(self.backbone, fz["layers"], bool(fz.get("train_bn"))))
        elif fz["strategy"] == "top":
            kept = freeze_top_fraction(self.backbone, float(fz["trainable_fraction"]), bool(fz.get("train_bn")))
            self.frozen_info = f"trainable: the top {len(kept)} parameterised layers"
        self._metrics_ready = False

    # ------------------------------------------------------------------ forward
    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.backbone(x).flatten(1).float(), dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.heads(self.features(x))

    def setup(self, stage: str) -> None:
        if self._metrics_ready:
            return
        from torchmetrics.classification import MulticlassAccuracy, MulticlassF1Score

        def make():
            return torch.nn.ModuleDict({
                t["name"]: torch.nn.ModuleDict({
                    "accuracy": MulticlassAccuracy(len(t["labels"]), average="micro", ignore_index=IGNORE),
                    "macro_f1": MulticlassF1Score(len(t["labels"]), average="macro", ignore_index=IGNORE),
                }) for t in self.task_defs
            })

        self.val_metrics, self.test_metrics = make(), make()
        self._metrics_ready = True

    # ------------------------------------------------------------------ steps
    def on_train_batch_start(self, batch, batch_idx):
        from artlens.train.freezing import keep_frozen_bn_eval

        keep_frozen_bn_eval(self.backbone)

    def _loss(self, batch):
        x, y = batch
        logits = self(x)
        loss, parts = self.criterion(logits, y)
        return logits, y, loss, parts

    def training_step(self, batch, batch_idx):
        if batch is None:  # every file in the batch was unreadable
            return None
        _, y, loss, parts = self._loss(batch)
        lc = self.recipe["finetune"]["loss"]
        pen = weight_penalty(self.named_parameters(), float(lc.get("l1") or 0.0), float(lc.get("l2") or 0.0))
        if pen is not None:
            loss = loss + pen
        bs = y.shape[0]
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=bs, sync_dist=True)
        if len(parts) > 1:
            for k, v in parts.items():
                self.log(f"train/{k}/loss", v, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def _eval_step(self, batch, metrics, stage: str):
        if batch is None:
            return
        logits, y, loss, _ = self._loss(batch)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", on_epoch=True, batch_size=y.shape[0], sync_dist=True)
        for i, t in enumerate(self.task_defs):
            for m in metrics[t["name"]].values():
                m.update(logits[t["name"]].float(), y[:, i])

    def _eval_end(self, metrics, stage: str):
        f1s, accs = [], []
        for t in self.task_defs:
            for key, m in metrics[t["name"]].items():
                value = m.compute() if m.update_count else torch.tensor(float("nan"))
                m.reset()
                self.log(f"{stage}/{t['name']}/{key}", value, sync_dist=True)
                (f1s if key == "macro_f1" else accs).append(value)
        self.log(f"{stage}/macro_f1", torch.nanmean(torch.stack(f1s)), prog_bar=True, sync_dist=True)
        self.log(f"{stage}/accuracy", torch.nanmean(torch.stack(accs)), prog_bar=stage == "val", sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self):
        self._eval_end(self.val_metrics, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, self.test_metrics, "test")

    def on_test_epoch_end(self):
        self._eval_end(self.test_metrics, "test")

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        from artlens.train.optim import build_optimizer, build_scheduler

        ft = self.recipe["finetune"]
        oc = ft["optimizer"]
        lr = float(oc["lr"])
        factor = float(oc.get("backbone_lr_factor", 1.0) or 1.0)
        # Every parameter is in the optimizer: frozen ones get no gradient and are skipped, and a
        # two-phase run's backbone joins with its learning rate (and the schedule) in place.
        groups = [{"params": list(self.heads.parameters()), "lr": lr},
                  {"params": list(self.backbone.parameters()), "lr": lr * factor}]
        opt = build_optimizer(groups, oc)
        sched = build_scheduler(opt, ft["scheduler"], int(ft["epochs"]))
        if sched is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["artlens"] = json.dumps({"tasks": self.task_defs, "feature_dim": self.feature_dim})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved = json.loads(checkpoint.get("artlens", "{}") or "{}")
        mine = [(t["name"], t["labels"]) for t in self.task_defs]
        theirs = [(t["name"], t["labels"]) for t in saved.get("tasks", [])]
        if theirs and theirs != mine:
            raise ValueError("the checkpoint was trained for other tasks/labels than this recipe and data: "
                             f"{theirs} != {mine}")


@torch.no_grad()
def predict_logits(model: ArtClassifier, loader) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Logits per task and the targets for every readable sample of an eval loader."""
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list] = {t["name"]: [] for t in model.task_defs}
    ys = []
    for batch in loader:
        if batch is None:
            continue
        x, y = batch
        logits = model(x.to(device))
        for k in out:
            out[k].append(logits[k].float().cpu().numpy())
        ys.append(y.numpy())
    n_tasks = len(model.task_defs)
    return ({k: (np.concatenate(v) if v else np.zeros((0, 1))) for k, v in out.items()},
            np.concatenate(ys) if ys else np.zeros((0, n_tasks), np.int64))
