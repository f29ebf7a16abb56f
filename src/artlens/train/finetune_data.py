"""Fine-tune data: manifest images, a seeded sampler and a loader whose position is saved in checkpoints.

- `ManifestImageDataset`: images of the manifest rows (decoded with `artlens.data.images.load_image`;
  a bad file is skipped with its reason logged, the batch goes on).
- `EpochSampler` / `ResumableLoader`: a seeded permutation per epoch; the loader's
  `state_dict`/`load_state_dict` (saved by Lightning in every checkpoint) restart a run killed
  mid-epoch at the batch where the checkpoint was taken.
- Random augmentation is a function of (seed, epoch, sample) alone: the sampler hands out
  `(epoch, index)` pairs and each training sample is transformed under its own seed, with the
  process's torch / numpy / python generators saved and put back around it. So the images a
  batch holds do not depend on worker processes, prefetching or where a run was resumed, and
  loading data never moves the main process's generators (the model's dropout draws from them;
  `finetune_checkpoints.RngState` saves them in checkpoints). Loaders carry their own
  `torch.Generator` for the same reason.
- `ManifestDataModule`: the train / val / test loaders of a prepared manifest.
"""

from __future__ import annotations

import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

import lightning as L

log = logging.getLogger(__name__)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one sample's augmentation in one epoch."""
    state = np.random.SeedSequence([int(seed) % 2**63, int(epoch), int(index)]).generate_state(2, np.uint32)
    return int(state[0]) << 31 | int(state[1]) >> 1


@contextmanager
def seeded_rng(seed: int):
    """Run the block with torch's CPU generator, numpy's and python's seeded from `seed`, then put
    back what they held before (also on an exception)."""
    saved = torch.get_rng_state(), np.random.get_state(), random.getstate()
    try:
        torch.default_generator.manual_seed(seed)  # CPU only: a GPU's generator is the model's
        np.random.seed(seed % 2**32)
        random.seed(seed)
        yield
    finally:
        torch.set_rng_state(saved[0])
        np.random.set_state(saved[1])
        random.setstate(saved[2])


class ManifestImageDataset(Dataset):
    """(image tensor, targets (n_tasks,) long) per row and view; None for an unreadable file.

    An index is an int, or `(epoch, index)` from `EpochSampler`: then the transform runs under
    `sample_seed(seed, epoch, index)`.
    """

    def __init__(self, paths: list[str], targets: np.ndarray, transform, views: int = 1, part: str = "",
                 seed: int = 0):
        self.part = part
        self.seed = int(seed)
        self.paths = list(paths)
        targets = np.asarray(targets, dtype=np.int64)
        self.targets = torch.as_tensor(targets[:, None] if targets.ndim == 1 else targets)
        self.transform = transform
        self.views = int(views)
        self._reported: set[str] = set()

    def __len__(self) -> int:
        return len(self.paths) * self.views

    def __getitem__(self, i: int | tuple[int, int]):
        from artlens.data.images import ImageDecodeError, load_image

        epoch = None
        if isinstance(i, tuple):
            epoch, i = i
        row, view = divmod(int(i), self.views)
        path = self.paths[row]
        try:
            img = load_image(path)
        except ImageDecodeError as exc:
            if path not in self._reported:  # once per worker process
                self._reported.add(path)
                log.warning("skipped %s (%s set)", exc, self.part or "a")
            return None
        if epoch is None:
            x = self._transform(img, view)
        else:
            with seeded_rng(sample_seed(self.seed, epoch, i)):
                x = self._transform(img, view)
        return x, self.targets[row]

    def _transform(self, img, view: int):
        return self.transform(img, view) if self.views > 1 else self.transform(img)


def collate_skip_bad(batch):
    """Drop the samples whose file could not be read; None when nothing is left."""
    good = [b for b in batch if b is not None]
    return default_collate(good) if good else None


class EpochSampler(Sampler):
    """A seeded permutation per epoch (`set_epoch`, called by Lightning) as `(epoch, index)`
    pairs; the first samples of one epoch skipped, for a run resumed mid-epoch."""

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
        epoch = self.epoch
        return iter([(epoch, i) for i in idx])

    def __len__(self) -> int:
        return self.n


class _StartsAtFirstBatch:
    """An iterator that makes the loader's iterator at its first `next`."""

    def __init__(self, start):
        self._start, self._it = start, None

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = self._start()
        return next(self._it)


class ResumableLoader(DataLoader):
    """A DataLoader with `state_dict`/`load_state_dict` (Lightning saves them in checkpoints).

    The position is the number of batches Lightning has processed in the current epoch
    (`progress()`), not what the workers prefetched, so no batch is skipped or repeated.
    """

    def __init__(self, dataset, *, sampler: EpochSampler, progress=None, **kwargs):
        # Workers' base seed from the loader's own generator, not the process's (see the module doc).
        kwargs.setdefault("generator", torch.Generator().manual_seed(sampler.seed))
        super().__init__(dataset, sampler=sampler, **kwargs)
        self.progress = progress

    def __iter__(self):
        # Lightning makes the first epoch's iterator (FitLoop.setup_data) before it calls
        # `set_epoch`; worker processes would take their first indices from the sampler right
        # then, in a run resumed at an epoch's end from the epoch before. Start at the first batch.
        return _StartsAtFirstBatch(lambda: DataLoader.__iter__(self))

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
        ds = ManifestImageDataset(paths, y, self.train_transform, views, part="train", seed=self.seed)
        trainer = getattr(self, "trainer", None)
        if trainer is not None and trainer.world_size > 1:
            # Several processes: Lightning's DistributedSampler; resuming is then per epoch.
            return DataLoader(ds, shuffle=True, drop_last=False, **self._kw())
        return ResumableLoader(ds, sampler=EpochSampler(len(ds), self.seed), progress=self._progress, **self._kw())

    def _eval_loader(self, part: str):
        paths, y = self.parts[part]
        return DataLoader(ManifestImageDataset(paths, y, self.eval_transform, part=part), shuffle=False,
                          generator=torch.Generator().manual_seed(self.seed), **self._kw())

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")
