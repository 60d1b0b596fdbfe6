"""Torch datasets over 300W folders and CelebA roots, with resumable, seeded batch order.

* :func:`read_samples` reads a 300W folder (image + ``.pts``) or a CelebA root (``img/`` and the
  three lists, one partition); samples the readers reject are counted in their report.
* :class:`LandmarkDataset` crops and augments one sample per index with
  :class:`~landmarknet.data.transforms.SampleTransform`. An image that fails at load time
  (unreadable, points not finite after the warp) is replaced by the next good sample and
  reported in the item's ``"bad"`` list, so a run never crashes on a bad file; the trainer
  counts them.
* :class:`ResumableBatchSampler` is an infinite sampler: epoch ``e`` is a permutation seeded by
  ``(seed, e)``, split across DDP ranks as ``DistributedSampler`` does (``perm[rank::world]``),
  batches dropped at the epoch's end when incomplete; ``start_batch`` skips that many batches,
  so a resumed run sees exactly the batches (and, since augmentation is seeded by
  ``(seed, epoch, index)``, exactly the crops) an uninterrupted run would have seen.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, Optional, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from landmarknet.data.formats import ReadReport, Sample, read_300w_folder, read_celeba
from landmarknet.data.transforms import SampleTransform, sample_rng
from landmarknet.errors import DataError

CELEBA_LIST = "list_landmarks_celeba.txt"


def is_celeba(path: Path) -> bool:
    """A CelebA-layout root (img/ plus the landmark list)?"""
    return (Path(path) / CELEBA_LIST).is_file()


def read_samples(path, partition=None, n_points: Optional[int] = None,
                 ) -> tuple[list[Sample], ReadReport]:
    """Samples of a 300W folder or a CelebA root (``partition``: train/val/test or 0/1/2)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such data folder")
    if is_celeba(path):
        samples, report = read_celeba(path, partition, check_images=True)
    else:
        if not any(path.glob("*.pts")):
            raise DataError(f"{path}: neither a 300W folder (image + .pts) nor a CelebA root "
                            f"({CELEBA_LIST})")
        samples, report = read_300w_folder(path, n_points=n_points)
    if not samples:
        raise DataError(f"{path}: no usable samples ({report.summary()})")
    if n_points is not None and len(samples[0].points) != n_points:
        raise DataError(f"{path}: {len(samples[0].points)} points per face, expected {n_points}")
    return samples, report


class LandmarkDataset(Dataset):
    """Index -> {"image": uint8 (C, S, S), "points": float32 (K, 2) crop pixels, "index", "bad"}.

    Indices may exceed ``len(self)``: index ``i`` is sample ``i % n`` of epoch ``i // n``, which
    seeds its augmentation (``train=True``) together with ``seed``.
    """

    def __init__(self, samples: Sequence[Sample], transform: SampleTransform, *, seed: int = 0,
                 train: bool = True, max_retries: int = 16) -> None:
        if not samples:
            raise DataError("a data set needs at least one sample")
        self.samples = list(samples)
        self.transform = transform
        self.seed = int(seed)
        self.train = train
        self.max_retries = max_retries

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index: int, epoch: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Crop (S, S, C) uint8 and points (K, 2) of one sample; raises on a bad one."""
        s = self.samples[index]
        image = cv2.imread(str(s.image_path), cv2.IMREAD_COLOR)
        if image is None or image.size == 0:
            raise ValueError("image cannot be decoded")
        if not np.isfinite(s.points).all():
            raise ValueError("points are not finite")
        rng = sample_rng(self.seed, epoch, index) if self.train else None
        crop, pts, _ = self.transform(image, s.points, rng)
        if not np.isfinite(pts).all():
            raise ValueError("points not finite after the crop")
        return crop, pts

    def __getitem__(self, i: int) -> dict:
        n = len(self.samples)
        epoch, index = divmod(int(i), n)
        bad: list[str] = []
        for attempt in range(self.max_retries):
            j = (index + attempt) % n
            try:
                crop, pts = self.load(j, epoch)
            except Exception as exc:  # noqa: BLE001 - any bad file is reported, never fatal
                bad.append(f"{self.samples[j].image_path}: {exc}")
                continue
            return {"image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1))),
                    "points": torch.from_numpy(pts), "index": j, "bad": bad}
        raise DataError(f"{self.max_retries} bad samples in a row from #{index}: "
                        + "; ".join(bad[:3]))


def collate(items: list[dict]) -> dict:
    """Stack images and points; keep indices and the bad-sample messages as lists."""
    return {"image": torch.stack([it["image"] for it in items]),
            "points": torch.stack([it["points"] for it in items]),
            "index": [it["index"] for it in items],
            "bad": [b for it in items for b in it["bad"]]}


class ResumableBatchSampler(Sampler[list[int]]):
    """Infinite seeded batches of global indices ``epoch * n + i`` (see module doc)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, start_batch: int = 0,
                 rank: int = 0, world: int = 1, shuffle: bool = True) -> None:
        self.n, self.batch_size, self.seed = int(n), int(batch_size), int(seed)
        self.start_batch, self.rank, self.world, self.shuffle = int(start_batch), rank, world, shuffle
        per_rank = self.n // self.world
        self.batches_per_epoch = per_rank // self.batch_size
        if self.batches_per_epoch < 1:
            raise DataError(f"{n} samples over {world} process(es) do not fill one batch of "
                            f"{batch_size}")

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of one epoch for this rank."""
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            perm = torch.randperm(self.n, generator=g).tolist()
        else:
            perm = list(range(self.n))
        perm = perm[: (self.n // self.world) * self.world][self.rank::self.world]
        b = self.batch_size
        return [[epoch * self.n + i for i in perm[k * b:(k + 1) * b]]
                for k in range(self.batches_per_epoch)]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, skip = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            for batch in self.epoch_batches(epoch)[skip:]:
                yield batch
            skip = 0
            epoch += 1

    def __len__(self) -> int:  # infinite; DataLoader only needs it for len(loader)
        return 2 ** 62


def train_loader(dataset: LandmarkDataset, batch_size: int, *, seed: int, start_batch: int = 0,
                 rank: int = 0, world: int = 1, workers: int = 4, pin_memory: bool = False,
                 ) -> DataLoader:
    """The infinite, resumable training loader."""
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, start_batch, rank, world)
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate,
                      pin_memory=pin_memory, persistent_workers=False,
                      prefetch_factor=4 if workers > 0 else None)


def eval_loader(dataset: LandmarkDataset, batch_size: int, *, workers: int = 2,
                rank: int = 0, world: int = 1) -> DataLoader:
    """Every sample once, in order (this rank's share ``rank::world`` under DDP)."""
    idx = list(range(len(dataset)))[rank::world]
    batches = [idx[k:k + batch_size] for k in range(0, len(idx), batch_size)]
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate)
