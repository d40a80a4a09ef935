"""The training data of a run: prepared slices, the patient split and the loader (chapter 3 and 8).

:func:`build_data` reads ``data.*`` and ``train.*`` of a config and returns a :class:`TrainData`,
whose :meth:`~TrainData.start_epoch` makes each epoch's order and augmentation a function of
(seed, epoch, rank) alone, which is what makes a resumed run repeat an interrupted epoch exactly.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import Config, ConfigError
from .data.preprocess import select_slices
from .data.splits import Split, label_fraction, load_split, patient_split
from .data.torch_data import SegmentationDataset, eval_transform, seed_worker, train_transform
from .data.types import SliceTable
from .device import select_device
from .distributed import DistInfo, barrier, train_sampler

__all__ = ["build_data"]

# data.augment_on -> the loader builder, by name: the GPU-resident loader is a tool, and the core
# never imports a tool (it is loaded only when a config asks for it)
AUGMENT_ON = {"cpu": f"{__name__}:cpu_loader", "device": "medseg_tutorial.tools.gpu_augment:device_loader"}


@dataclass
class TrainData:
    """The prepared table, the patient split and the training loader of this process."""

    table: SliceTable
    split: Split
    train_rows: np.ndarray  # table rows of the (label-fraction) training patients
    val_rows: np.ndarray
    loader: Iterable[dict[str, Any]]  # a DataLoader, or the device-resident iterator of tools.gpu_augment
    seed: int
    rank: int

    def __len__(self) -> int:
        return len(self.loader)

    def start_epoch(self, epoch: int) -> None:
        """Make the shuffle order and augmentations of ``epoch`` a function of (seed, epoch, rank) alone."""
        if not isinstance(self.loader, DataLoader):
            self.loader.set_epoch(epoch)  # the same sampler permutation; a device generator for augmentation
            return
        self.loader.sampler.set_epoch(epoch)  # same permutation on every rank; each takes its share
        epoch_seed = int(np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(1)[0])
        self.loader.generator.manual_seed(epoch_seed)  # seeds the loader's worker processes
        transform = self.loader.dataset.transform
        if self.loader.num_workers == 0 and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(epoch_seed)  # with workers, seed_worker does this per worker


def build_data(cfg: Config, dist_info: DistInfo | None = None, show: bool = False,
               device: torch.device | None = None) -> TrainData:
    """Prepare (or load the cached) slices, split patients, and build the training loader.

    With ``data.augment_on=device`` the loader keeps the training slices on ``device`` (default:
    ``select_device(train.device)``) and augments them there (``tools.gpu_augment``).
    """
    dc, tc = cfg.data, cfg.train
    dist_info = dist_info or DistInfo()
    if not dist_info.is_main:
        barrier(dist_info)  # let rank 0 fill the cache first; the others then read it
    table = dc.prepare(progress=show)
    if dist_info.is_main:
        barrier(dist_info)
    if table.images.shape[1] != cfg.model.in_channels:
        raise ConfigError(f"model.in_channels: {cfg.model.in_channels}, but the slices of {dc.dataset!r} have "
                          f"{table.images.shape[1]} channels ({', '.join(table.info.channel_names)})")
    split = load_split(dc.split_file) if dc.split_file else patient_split(table, dc.fractions, seed=dc.seed)
    missing = sorted(set(split.train + split.val) - set(table.patients))
    if missing:
        raise ValueError(f"data.split_file: patients not in dataset {dc.dataset!r}: {missing[:5]}")
    train_patients = label_fraction(split.train, dc.label_fraction, seed=dc.seed) if dc.label_fraction < 1 \
        else split.train
    train_rows, val_rows = table.rows_for(train_patients), table.rows_for(split.val)
    if dc.split_mode == "slice":
        train_rows, val_rows = leaky_slice_split(np.concatenate([train_rows, val_rows]), len(val_rows), dc.seed)
    if dc.keep_empty < 1:  # training rows only: validation and test score every slice
        train_rows = train_rows[select_slices(table.masks[train_rows], dc.keep_empty, dc.seed)[0]]
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"empty split: {len(train_rows)} training and {len(val_rows)} validation slices")
    module, _, name = AUGMENT_ON[dc.augment_on].partition(":")
    make_loader = getattr(importlib.import_module(module), name)
    loader = make_loader(cfg, table, train_rows, dist_info, device if device is not None else select_device(tc.device))
    return TrainData(table, split, train_rows, val_rows, loader, seed=tc.seed, rank=dist_info.rank)


def cpu_loader(cfg: Config, table: SliceTable, rows: np.ndarray, dist_info: DistInfo,
               device: torch.device) -> DataLoader:
    """albumentations in a torch DataLoader (``data.augment_on: cpu``)."""
    dc, tc = cfg.data, cfg.train
    transform = eval_transform() if dc.augment == "none" else train_transform(dc.size, strength=dc.augment)
    dataset = SegmentationDataset(table, rows, transform)
    sampler = train_sampler(dataset, dist_info, seed=tc.seed)
    return DataLoader(
        dataset, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(), worker_init_fn=seed_worker,
        # a last batch of a single slice would break BatchNorm: drop the remainder unless it is all we have
        drop_last=len(sampler) > tc.batch_size,
    )


def leaky_slice_split(rows: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_val`` validation slices at random from ``rows``: the WRONG split of chapter 3.

    Neighbouring slices of one volume look alike, so a model validated this way is scored on
    near-copies of its training images and the validation Dice is inflated.
    """
    shuffled = np.random.default_rng(seed).permutation(rows)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def batches_per_epoch(n_batches: int, accumulate: int, max_steps: int | None) -> int:
    """Batches trained per epoch: whole optimizer steps only, at most ``max_steps`` of them."""
    steps = n_batches // accumulate if max_steps is None else min(n_batches // accumulate, max_steps)
    if steps == 0:
        raise ValueError(f"{n_batches} batches per epoch cannot fill one step of train.accumulate={accumulate}")
    return steps * accumulate

