"""Fine-tune mode: a backbone from the registry plus task heads, trained end to end with Lightning.

`run_finetune` trains, calibrates the best weights on validation data and exports an ArtModel
(`mode: finetune`, `backbone.*` tensors = the fine-tuned backbone). Its parts, one job each:

- `artlens.train.finetune_data`: manifest images (a bad file is skipped with its reason logged),
  the seeded per-epoch sampler and the loader whose position is saved in checkpoints; each
  sample's augmentation seeded by (seed, epoch, sample).
- `artlens.train.finetune_model`: `ArtClassifier`, backbone -> L2-normalised features ->
  `MultiTaskHeads`, its losses, metrics, freezing and optimizer.
- `artlens.train.finetune_checkpoints`: `last.ckpt` every epoch end and every
  `checkpoint_every_n_steps` optimizer steps with the process's random state, and the validation
  of a checkpoint before `--resume` loads it (`weights_only=True`: Lightning checkpoints are
  pickles, even ours). A run killed (even mid-epoch) and resumed ends with the weights of a run
  never stopped, bit for bit, on one device; with several (DDP), resuming is per epoch.
- `artlens.train.finetune_trainer`: the Lightning `Trainer`, its callbacks and loggers.

The public names of those modules stay importable from here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

import lightning as L

from artlens.train.finetune_checkpoints import (CheckpointError, LastCheckpoint, check_checkpoint,
                                                load_checkpoint_state)
from artlens.train.finetune_data import (EpochSampler, ManifestDataModule, ManifestImageDataset, ResumableLoader,
                                         collate_skip_bad)
from artlens.train.finetune_model import ArtClassifier, _create_backbone, _get_spec, predict_logits
from artlens.train.finetune_trainer import build_trainer, merge_csv_logs
from artlens.train.losses import class_weights

__all__ = ["ArtClassifier", "CheckpointError", "EpochSampler", "LastCheckpoint", "ManifestDataModule",
           "ManifestImageDataset", "ResumableLoader", "build_trainer", "check_checkpoint", "collate_skip_bad",
           "load_checkpoint_state", "merge_csv_logs", "predict_logits", "run_finetune"]

log = logging.getLogger(__name__)


def run_finetune(recipe: dict, out: Path, *, resume: bool = False, prepared=None, callbacks=()) -> dict:
    """Train, calibrate, export. Returns {"model_dir", "metrics", ...}."""
    from artlens.train.data import prepare
    from artlens.train.export import export_model
    from artlens.train.transforms import train_transform

    ft = recipe["finetune"]
    L.seed_everything(int(recipe["seed"]), workers=True, verbose=False)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint to resume from ({last} does not exist)")
    if resume:
        check_checkpoint(last)  # before Lightning loads it: its errors are tracebacks
    if not resume and last.is_file():
        raise FileExistsError(f"{out} already holds a run ({last}); continue it with --resume or choose another --out")
    prepared = prepared or prepare(recipe)
    tasks = prepared.tasks
    for t, rt in zip(tasks, recipe["tasks"]):
        t.setdefault("weight", rt.get("weight", 1.0))
    targets = np.stack([prepared.targets[t["name"]] for t in tasks], axis=1)
    for part in ("train", "val"):
        if not ((prepared.split == part)[:, None] & (targets >= 0)).any():
            raise ValueError(f"no labelled {part} rows: fine-tuning needs both (check data.split)")
    spec = _get_spec(recipe["backbone"]["name"])
    pre = spec.preprocessing.at_size(ft.get("image_size"))
    opts = dict(ft.get("augment_options") or {})
    opts["scale"] = tuple(opts.get("scale") or (0.6, 1.0))
    tf_train = train_transform(ft["augment"], pre, **opts)
    tf_eval = pre.eval_transform()
    dm = ManifestDataModule(prepared.df, targets, tf_train, tf_eval, batch_size=ft["batch_size"],
                            num_workers=ft["num_workers"], seed=recipe["seed"])
    cw = None
    if ft["loss"].get("class_weights"):
        train_rows = prepared.split == "train"
        cw = {t["name"]: class_weights(prepared.targets[t["name"]][train_rows], len(t["labels"]), ft["loss"]["class_weights"])
              for t in tasks}
    bb = recipe["backbone"]
    backbone = _create_backbone(bb["name"], bool(bb.get("pretrained", True)), bb.get("weights"))
    model = ArtClassifier(recipe, tasks, int(spec.feature_dim), cw, backbone=backbone)
    if model.frozen_info:
        log.info(model.frozen_info)
    trainer = build_trainer(recipe, out, extra_callbacks=callbacks, resume=resume)
    fit_kwargs: dict[str, Any] = {}
    if resume:
        fit_kwargs["ckpt_path"] = str(last)
        fit_kwargs["weights_only"] = True
    trainer.fit(model, datamodule=dm, **fit_kwargs)
    if not trainer.is_global_zero:
        return {}
    merge_csv_logs(out)

    best = ckpt_dir / "best.ckpt"
    if best.is_file():
        model.load_state_dict(load_checkpoint_state(best))
    model.cpu().eval()
    logits, ys = {}, {}
    for part in ("val", "test"):
        if dm.parts[part][0]:
            lg, y = predict_logits(model, dm._eval_loader(part))
            logits[part], ys[part] = lg, y
    state = {k: v for k, v in model.backbone.state_dict().items()}
    result = export_model(
        recipe, tasks, model.heads, logits, ys, out, mode="finetune", spec=spec, preprocessing=pre.to_config(),
        backbone_state=state, prepared=prepared,
        extra={"epochs_trained": int(trainer.current_epoch), "global_step": int(trainer.global_step),
               "best_checkpoint": str(best) if best.is_file() else None},
    )
    return result
