"""The Lightning `Trainer` of a fine-tune: callbacks, loggers (CSV per resumed attempt, merged at
the end; TensorBoard; W&B), precision and progress bar from the recipe."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

import lightning as L

from artlens.train.finetune_checkpoints import LastCheckpoint, RngState

log = logging.getLogger(__name__)


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
        RngState(),
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
