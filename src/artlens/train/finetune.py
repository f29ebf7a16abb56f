"""Fine-tune mode: a backbone from the registry plus task heads, trained end to end with Lightning.

- `ManifestDataModule`: images from the manifest rows (decoded with `artlens.data.images.load_image`;
  a bad file is skipped with its reason logged, the batch goes on), transform presets from
  `artlens.data.transforms`, a seeded sampler whose position is saved in checkpoints so a run
  killed mid-epoch resumes at the batch where it stopped.
- `ArtClassifier`: backbone -> L2-normalised features (the `artlens.embed` encoder contract) ->
  `MultiTaskHeads`. The heads' `norm` buffers scale the unit vectors by sqrt(dim) (mean 0, std
  1/sqrt(dim)), so every feature has unit RMS like standardised probe features, and the exported
  model predicts from the encoder's normalised embeddings unchanged.
- Losses with masked missing labels, class weights, label smoothing, focal loss, L1/L2; freezing
  by name, top N %, or two phases; SGD/Adam/AdamW/RMSprop; cosine/exponential/step schedules.
- Checkpoints: the best (ModelCheckpoint on the monitored validation metric) and `last.ckpt` at
  every epoch end and every `checkpoint_every_n_steps` optimizer steps. `--resume` restarts from
  `last.ckpt` (loaded with `weights_only=True`: Lightning checkpoints are pickles, even ours).
- At the end the best weights are calibrated on validation data and exported as an ArtModel
  (`mode: finetune`, `backbone.*` tensors = the fine-tuned backbone).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

import lightning as L
from lightning.pytorch.callbacks import Callback

from artlens.train.losses import IGNORE, MultiTaskLoss, build_loss, class_weights, weight_penalty

log = logging.getLogger(__name__)


# ============================================================================= data
class ManifestImageDataset(Dataset):
    """(image tensor, targets (n_tasks,) long) per row and view; None for an unreadable file."""

    def __init__(self, paths: list[str], targets: np.ndarray, transform, views: int = 1, part: str = ""):
        self.part = part
        self.paths = list(paths)
        targets = np.asarray(targets, dtype=np.int64)
        self.targets = torch.as_tensor(targets[:, None] if targets.ndim == 1 else targets)
        self.transform = transform
        self.views = int(views)
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths) * self.views

    def __getitem__(self, i: int):
        from artlens.data.images import ImageDecodeError, load_image

        row, view = divmod(int(i), self.views)
        path = self.paths[row]
        try:
            img = load_image(path)
        except ImageDecodeError as exc:
            if path not in self._reported:  # once per worker process
                self._reported.add(path)
                log.warning("skipped %s (%s set)", exc, self.part or "a")
            return None
        x = self.transform(img, view) if self.views > 1 else self.transform(img)
        return x, self.targets[row]


def collate_skip_bad(batch):
    """Drop the samples whose file could not be read; None when nothing is left."""
    good = [b for b in batch if b is not None]
    return default_collate(good) if good else None


class EpochSampler(Sampler):
    """A seeded permutation per epoch (`set_epoch`, called by Lightning); `skip` indices at the
    start of one epoch, for a run resumed mid-epoch."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.epoch = 0
        self._resume: tuple[int, int] | None = None  # (epoch, samples to skip)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def __iter__(self):
        idx = self.order(self.epoch)
        if self._resume is not None and self._resume[0] == self.epoch:
            idx = idx[self._resume[1]:]
        self._resume = None
        return iter(idx)

    def __len__(self) -> int:
        return self.n


class ResumableLoader(DataLoader):
    """A DataLoader with `state_dict`/`load_state_dict` (Lightning saves them in checkpoints).

    The position is the number of batches Lightning has processed in the current epoch
    (`progress()`), not what the workers prefetched, so no batch is skipped or repeated.
    """

    def __init__(self, dataset, *, sampler: EpochSampler, progress=None, **kwargs):
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.progress = progress

    def state_dict(self) -> dict:
        done, finished = self.progress() if self.progress is not None else (0, False)
        return {"epoch": int(self.sampler.epoch), "batches_done": int(done), "batch_size": int(self.batch_size),
                "epoch_finished": bool(finished or done >= len(self))}

    def load_state_dict(self, state: dict) -> None:
        epoch, done = int(state.get("epoch", 0)), int(state.get("batches_done", 0))
        if state.get("epoch_finished") or done >= len(self):  # saved at an epoch's end: the next starts fresh
            self.sampler.set_epoch(epoch + 1)
            return
        self.sampler.set_epoch(epoch)
        self.sampler._resume = (epoch, done * int(state.get("batch_size", self.batch_size)))


class ManifestDataModule(L.LightningDataModule):
    def __init__(self, df, targets: np.ndarray, train_transform, eval_transform, *, batch_size: int = 32,
                 num_workers: int = 2, seed: int = 0):
        super().__init__()
        split = df["split"].astype(str).to_numpy()
        paths = df["path"].astype(str).to_numpy()
        targets = np.asarray(targets, dtype=np.int64)
        self.parts = {s: (paths[split == s].tolist(), targets[split == s]) for s in ("train", "val", "test")}
        self.train_transform, self.eval_transform = train_transform, eval_transform
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)

    def _kw(self) -> dict:
        kw = {"batch_size": self.batch_size, "num_workers": self.num_workers, "collate_fn": collate_skip_bad}
        if self.num_workers > 0:
            kw["persistent_workers"] = False
        return kw

    def _progress(self) -> tuple[int, bool]:
        """(batches processed in this epoch, whether that is the whole epoch) from Lightning's loop."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0, False
        done = int(trainer.fit_loop.epoch_loop.batch_progress.current.processed)
        return done, done >= trainer.num_training_batches

    def train_dataloader(self):
        paths, y = self.parts["train"]
        views = getattr(self.train_transform, "views", 1)
        ds = ManifestImageDataset(paths, y, self.train_transform, views, part="train")
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # Several processes: Lightning's DistributedSampler; resuming is then per epoch.
            return DataLoader(ds, shuffle=True, drop_last=False, **self._kw())
        return ResumableLoader(ds, sampler=EpochSampler(len(ds), self.seed), progress=self._progress, **self._kw())

    def _eval_loader(self, part: str):
        paths, y = self.parts[part]
        return DataLoader(ManifestImageDataset(paths, y, self.eval_transform, part=part), shuffle=False, **self._kw())

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")


# ============================================================================= model
def _create_backbone(name: str, pretrained: bool, weights=None):
    from artlens.models.backbones import create_backbone

    return create_backbone(name, pretrained=pretrained, weights=weights) if weights else create_backbone(name, pretrained=pretrained)


def _get_spec(name: str):
    from artlens.models.backbones import get_spec

    return get_spec(name)


class ArtClassifier(L.LightningModule):
    def __init__(self, recipe: dict, tasks: list[dict], feature_dim: int, class_weight: dict[str, Any] | None = None):
        super().__init__()
        from artlens.models.heads import MultiTaskHeads
        from artlens.train.freezing import freeze_named, freeze_top_fraction

        self.recipe = recipe
        self.task_defs = [{"name": t["name"], "labels": list(t["labels"]), "column": t["column"],
                           "hidden": list(t.get("hidden") or []), "dropout": float(t.get("dropout") or 0.0)}
                          for t in tasks]
        bb = recipe["backbone"]
        # the registry builds backbones in eval mode; Lightning keeps a module's mode as it is
        self.backbone = _create_backbone(bb["name"], bool(bb.get("pretrained", True)), bb.get("weights")).train()
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


class LastCheckpoint(Callback):
    """`last.ckpt` every `every_n_steps` optimizer steps and at the end of every epoch (after
    validation), written atomically by Lightning, so a killed run loses at most N steps."""

    def __init__(self, dirpath: str | Path, every_n_steps: int = 50):
        self.path = Path(dirpath) / "last.ckpt"
        self.every = int(every_n_steps or 0)
        self._saved_at = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and step != self._saved_at:
            trainer.save_checkpoint(self.path, weights_only=False)
            self._saved_at = step

    def on_train_epoch_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path, weights_only=False)
        self._saved_at = trainer.global_step


# ============================================================================= running
def _precision(value: str) -> str:
    if value and value != "auto":
        return value
    if torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _progress_callback(kind: str):
    import sys

    from lightning.pytorch.callbacks import RichProgressBar, TQDMProgressBar

    if kind == "none":
        return None
    if kind == "rich" or (kind == "auto" and sys.stderr.isatty()):
        return RichProgressBar()
    return TQDMProgressBar(refresh_rate=10)


def _csv_attempts(out: Path) -> list[Path]:
    """CSV log folders of a run's attempts, in order (`csv`, `csv-resume1`, `csv-resume2`, ...)."""
    logs = out / "logs"
    found = [p for p in logs.glob("csv*") if p.is_dir()]
    return sorted(found, key=lambda p: int(p.name[len("csv-resume"):]) if p.name.startswith("csv-resume") else 0)


def merge_csv_logs(out: Path) -> Path | None:
    """`logs/metrics.csv`: every attempt's rows; steps an attempt redid after a resume replace the
    killed attempt's rows from that step on."""
    import pandas as pd

    frames = []
    for d in _csv_attempts(out):
        f = d / "metrics.csv"
        if f.is_file() and f.stat().st_size:
            frames.append(pd.read_csv(f))
    if not frames:
        return None
    merged = frames[-1]
    for earlier in reversed(frames[:-1]):
        start = merged["step"].min() if len(merged) else np.inf
        merged = pd.concat([earlier[earlier["step"] < start], merged], ignore_index=True)
    path = out / "logs" / "metrics.csv"
    merged.to_csv(path, index=False)
    return path


def _loggers(out: Path, ft: dict, resume: bool = False):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    loggers = []
    names = [str(n).lower() for n in (ft.get("loggers") or [])]
    if "csv" in names:
        # Lightning's CSVLogger starts its file afresh: each resumed attempt gets its own folder,
        # merged into logs/metrics.csv at the end.
        version = f"csv-resume{len(_csv_attempts(out))}" if resume and _csv_attempts(out) else "csv"
        loggers.append(CSVLogger(save_dir=str(out), name="logs", version=version))
    if "tensorboard" in names:
        try:
            loggers.append(TensorBoardLogger(save_dir=str(out), name="logs", version="tensorboard"))
        except ModuleNotFoundError as exc:
            log.warning("TensorBoard logging off: %s", exc)
    wandb = ft.get("wandb")
    if wandb:
        try:
            from lightning.pytorch.loggers import WandbLogger

            opts = wandb if isinstance(wandb, dict) else {}
            loggers.append(WandbLogger(save_dir=str(out), **opts))
        except ModuleNotFoundError:
            raise RuntimeError("W&B logging asked for (finetune.wandb) but wandb is not installed: pip install wandb") from None
    return loggers


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


def build_trainer(recipe: dict, out: Path, *, extra_callbacks=(), monitor_mode: str = "max", resume: bool = False):
    from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

    from artlens.train.freezing import TwoPhaseFinetuning

    ft = recipe["finetune"]
    ckpt_dir = out / "checkpoints"
    monitor = ft.get("monitor") or "val/macro_f1"
    mode = "min" if monitor.endswith("loss") else monitor_mode
    callbacks: list = [
        ModelCheckpoint(dirpath=str(ckpt_dir), filename="best", monitor=monitor, mode=mode, save_top_k=1,
                        enable_version_counter=False, save_on_train_epoch_end=False),
        LastCheckpoint(ckpt_dir, ft.get("checkpoint_every_n_steps") or 0),
        *extra_callbacks,
    ]
    es = ft.get("early_stopping") or {}
    if es.get("patience") is not None:
        callbacks.append(EarlyStopping(monitor=es.get("monitor") or monitor, mode=es.get("mode") or mode,
                                       patience=int(es["patience"]), check_on_train_epoch_end=False))
    if ft["freeze"]["strategy"] == "two_phase":
        callbacks.append(TwoPhaseFinetuning(int(ft["freeze"]["milestone"]), train_bn=bool(ft["freeze"].get("train_bn"))))
    loggers = _loggers(out, ft, resume)
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    bar = _progress_callback(ft.get("progress", "auto"))
    if bar is not None:
        callbacks.append(bar)
    kwargs = dict(
        max_epochs=int(ft["epochs"]), accelerator=ft.get("accelerator") or "auto", devices=ft.get("devices") or "auto",
        strategy=ft.get("strategy") or "auto", num_nodes=int(ft.get("num_nodes") or 1),
        precision=_precision(ft.get("precision", "auto")), deterministic="warn" if ft.get("deterministic", True) else False,
        callbacks=callbacks, logger=loggers or False, enable_progress_bar=bar is not None,
        val_check_interval=ft.get("val_check_interval") or 1.0,
        check_val_every_n_epoch=int(ft.get("check_val_every_n_epoch") or 1),
        accumulate_grad_batches=int(ft.get("accumulate_grad_batches") or 1),
        gradient_clip_val=ft.get("gradient_clip_val"), log_every_n_steps=int(ft.get("log_every_n_steps") or 10),
        default_root_dir=str(out), enable_model_summary=False, num_sanity_val_steps=0,
    )
    for key in ("limit_train_batches", "limit_val_batches"):
        if ft.get(key) is not None:
            kwargs[key] = ft[key]
    return L.Trainer(**kwargs)


class CheckpointError(ValueError):
    """A checkpoint file that is unreadable or not a Lightning checkpoint of this trainer."""


def _unpickling_reason(exc: Exception) -> str:
    # torch's message is mostly advice to retry with weights_only=False, which would run the
    # file's code: keep only the line that says what was refused.
    for line in str(exc).splitlines():
        line = line.strip()
        if line.startswith("Trying to load unsupported") or "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:")[-1].strip()[:200]
    return "it holds objects other than tensors and plain data"


def check_checkpoint(path: str | Path) -> dict:
    """Load a checkpoint as `weights_only=True` (memory-mapped: tensors are not read) and check
    the fields a resume needs; `CheckpointError` otherwise, one line naming the file."""
    import pickle
    import zipfile

    def bad(reason: str) -> CheckpointError:
        return CheckpointError(f"{path}: not a valid checkpoint ({reason})")

    try:
        if not zipfile.is_zipfile(path):
            raise bad("not a torch.save archive")
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except CheckpointError:
        raise
    except pickle.UnpicklingError as exc:
        raise bad(_unpickling_reason(exc)) from None
    except (RecursionError, MemoryError) as exc:
        raise bad(f"{type(exc).__name__}") from None
    except Exception as exc:  # torch and zipfile raise many types for damaged archives
        raise bad(f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}") from None
    if not isinstance(ckpt, dict):
        raise bad(f"holds a {type(ckpt).__name__}, not a dict")
    if not isinstance(ckpt.get("state_dict"), dict):
        raise bad("field 'state_dict' is missing or not a dict")
    for field in ("epoch", "global_step"):
        if not isinstance(ckpt.get(field), int) or isinstance(ckpt.get(field), bool) or ckpt[field] < 0:
            raise bad(f"field {field!r} is missing or not a non-negative integer")
    info = ckpt.get("artlens", "{}") or "{}"
    try:
        if not isinstance(info, str) or not isinstance(json.loads(info), dict):
            raise ValueError
    except (ValueError, RecursionError):
        raise bad("field 'artlens' is not a JSON object") from None
    return ckpt


def load_checkpoint_state(path: str | Path) -> dict:
    """The model weights of a Lightning checkpoint, unpickled with `weights_only=True`."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    return ckpt["state_dict"]


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
    model = ArtClassifier(recipe, tasks, int(spec.feature_dim), cw)
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
