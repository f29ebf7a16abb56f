"""Fine-tune checkpoints: `last.ckpt` every N steps and epoch, and validation of a checkpoint
before a resume loads it (Lightning checkpoints are pickles: loaded with `weights_only=True`)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback


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
