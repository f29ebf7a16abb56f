"""Fine-tune checkpoints: what a killed run needs to go on as if it had never stopped.

- `LastCheckpoint`: `last.ckpt` every N optimizer steps and at every epoch end, replaced
  atomically (a kill while it is written leaves the previous one).
- `RngState`: the process's random generators (torch CPU and GPU, numpy, python) saved in every
  checkpoint and put back when training starts again. With the loader's position
  (`finetune_data.ResumableLoader`) and Lightning's own state (weights, optimizer, schedule,
  loop counters) a run killed and resumed ends with the same weights, bit for bit, as one never
  stopped. (Lightning 2 dropped its experimental fault-tolerant mode, which did this: it restores
  the loop and stateful loaders, not random state.)
- `check_checkpoint`: a checkpoint validated before a resume loads it (Lightning checkpoints are
  pickles: loaded with `weights_only=True`), one line naming the file and the field otherwise.
"""

from __future__ import annotations

import json
import logging
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class LastCheckpoint(Callback):
    """`last.ckpt` every `every_n_steps` optimizer steps and at the end of every epoch (after
    validation), written beside it and renamed into place, so a killed run loses at most N steps
    and never its last checkpoint."""

    def __init__(self, dirpath: str | Path, every_n_steps: int = 50):
        self.path = Path(dirpath) / "last.ckpt"
        self.every = int(every_n_steps or 0)
        self._saved_at = -1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if self.every and step > 0 and step % self.every == 0 and step != self._saved_at:
            self._save(trainer)

    def on_train_epoch_end(self, trainer, pl_module):
        self._save(trainer)

    def _save(self, trainer) -> None:
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank; rank 0 writes, then a barrier
        if trainer.is_global_zero:
            os.replace(tmp, self.path)
        self._saved_at = trainer.global_step


# ----------------------------------------------------------------------------- random state
def rng_state() -> dict[str, Any]:
    """The process's generators as tensors and plain values (loadable with `weights_only=True`)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": str(name), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
    }


def check_rng_state(state: Any) -> None:
    """ValueError naming the first field of `state` that `set_rng_state` could not use."""
    def tensor(value, field: str, dtype, n: int | None = None) -> None:
        if not isinstance(value, torch.Tensor) or value.dtype != dtype or value.ndim != 1 or (n and value.numel() != n):
            raise ValueError(f"{field} is not a {dtype} vector" + (f" of {n}" if n else ""))

    if not isinstance(state, dict):
        raise ValueError("not a dict")
    tensor(state.get("torch"), "torch", torch.uint8, torch.get_rng_state().numel())
    if not isinstance(state.get("cuda", []), list):
        raise ValueError("cuda is not a list")
    for i, s in enumerate(state.get("cuda", [])):
        tensor(s, f"cuda[{i}]", torch.uint8)
    n, p = state.get("numpy"), state.get("python")
    if not isinstance(n, dict) or n.get("name") != "MT19937":
        raise ValueError("numpy is not an MT19937 state")
    tensor(n.get("keys"), "numpy.keys", torch.int64, 624)
    if not ((n["keys"] >= 0) & (n["keys"] < 2**32)).all():
        raise ValueError("numpy.keys are not 32-bit words")
    if not all(isinstance(n.get(k), t) for k, t in (("pos", int), ("has_gauss", int), ("cached_gaussian", float))):
        raise ValueError("numpy.pos / has_gauss / cached_gaussian have the wrong types")
    if not isinstance(p, dict) or not isinstance(p.get("version"), int) or not isinstance(p.get("gauss"), (float, type(None))):
        raise ValueError("python is not a random.getstate()")
    tensor(p.get("state"), "python.state", torch.int64, 625)


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back what `rng_state` returned (a GPU's generators only on as many GPUs as it had)."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda):
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        log.warning("resume: the checkpoint's GPU random state (%d GPUs) not restored on this machine; "
                    "dropout will differ from an uninterrupted run", len(cuda))
    n, p = state["numpy"], state["python"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate((p["version"], tuple(int(v) for v in p["state"].tolist()), p["gauss"]))


class RngState(Callback):
    """The random generators in every checkpoint (`state_dict`), put back (`load_state_dict`)
    when training starts again, after Lightning's setup, so that the draws that follow (dropout,
    the next epoch) are those of the run that was interrupted."""

    def __init__(self):
        self._restore: dict | None = None

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        check_rng_state(state_dict)
        self._restore = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        if self._restore is not None:
            set_rng_state(self._restore)
            self._restore = None


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
    callbacks = ckpt.get("callbacks", {})
    if not isinstance(callbacks, dict):
        raise bad("field 'callbacks' is not a dict")
    if RngState.__qualname__ in callbacks:
        try:
            check_rng_state(callbacks[RngState.__qualname__])
        except ValueError as exc:
            raise bad(f"field 'callbacks.{RngState.__qualname__}': {exc}") from None
    return ckpt


def load_checkpoint_state(path: str | Path) -> dict:
    """The model weights of a Lightning checkpoint, unpickled with `weights_only=True`."""
    ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    return ckpt["state_dict"]
