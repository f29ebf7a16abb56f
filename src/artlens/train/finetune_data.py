"""Fine-tune data: manifest images, a seeded sampler and a loader whose position is saved in checkpoints.

- `ManifestImageDataset`: images of the manifest rows (decoded with `artlens.data.images.load_image`;
  a bad file is skipped with its reason logged, the batch goes on).
- `EpochSampler` / `ResumableLoader`: a seeded permutation per epoch; the loader's
  `state_dict`/`load_state_dict` (saved by Lightning in every checkpoint) restart a run killed
  mid-epoch at the batch where the checkpoint was taken.
- `ManifestDataModule`: the train / val / test loaders of a prepared manifest.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

import lightning as L

log = logging.getLogger(__name__)


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
