"""The training data of a run: prepared slices, the patient split and the loader (chapters 3, 8 and 10).

For a 3-D model (``model.dims: 3``) the rows are native volumes and the loader yields random patches
of them (:class:`PatchDataset`), batched like slices, so the training loop does not change.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .config import Config, ConfigError
from .data.preprocess import select_slices
from .data.splits import Split, label_fraction, load_split, patient_split
from .data.torch_data import SegmentationDataset, eval_transform, seed_worker, train_transform
from .data.types import SliceTable
from .data.volumes import VolumeTable, pad_volume
from .device import select_device
from .distributed import DistInfo, barrier, train_sampler

__all__ = ["build_data"]

# data.augment_on -> the loader builder, by name: the GPU-resident loader is a tool, and the core
# never imports a tool (it is loaded only when a config asks for it)
AUGMENT_ON = {"cpu": f"{__name__}:cpu_loader", "device": "medseg_tutorial.tools.gpu_augment:device_loader"}


@dataclass
class TrainData:
    """The prepared table, the patient split and the training loader of this process."""

    table: SliceTable | VolumeTable  # slices (2-D, 2.5-D), or native volumes (3-D)
    split: Split
    train_rows: np.ndarray  # table rows (slices, or volumes) of the (label-fraction) training patients
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
    """Prepare (or load the cached) slices or volumes, split patients, and build the training loader.

    ``device`` (default: ``train.device``) is where ``data.augment_on: device`` keeps and augments the slices.
    """
    dc, tc = cfg.data, cfg.train
    dist_info = dist_info or DistInfo()
    volumes = cfg.model.dims == 3
    if not dist_info.is_main:
        barrier(dist_info)  # let rank 0 fill the cache first; the others then read it
    table = dc.volumes(progress=show) if volumes else dc.prepare(progress=show)
    if dist_info.is_main:
        barrier(dist_info)
    channels = table.images[0].shape[0] if volumes else table.images.shape[1]
    if channels != cfg.model.in_channels:
        raise ConfigError(f"model.in_channels: {cfg.model.in_channels}, but the {'volumes' if volumes else 'slices'} "
                          f"of {dc.dataset!r} have {channels} channels ({', '.join(table.info.channel_names)})")
    # the same patients as a 2-D run on the same data.seed: the ids are sorted before they are drawn
    split = load_split(dc.split_file) if dc.split_file else patient_split(table.patient_ids, dc.fractions, seed=dc.seed)
    missing = sorted(set(split.train + split.val) - set(table.patients))
    if missing:
        raise ValueError(f"data.split_file: patients not in dataset {dc.dataset!r}: {missing[:5]}")
    train_patients = label_fraction(split.train, dc.label_fraction, seed=dc.seed) if dc.label_fraction < 1 \
        else split.train
    train_rows, val_rows = table.rows_for(train_patients), table.rows_for(split.val)
    if dc.split_mode == "slice":
        train_rows, val_rows = leaky_slice_split(np.concatenate([train_rows, val_rows]), len(val_rows), dc.seed)
    if dc.keep_empty < 1 and not volumes:  # training rows only: validation and test score every slice
        train_rows = train_rows[select_slices(table.masks[train_rows], dc.keep_empty, dc.seed)[0]]
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"empty split: {len(train_rows)} training and {len(val_rows)} validation "
                         f"{'volumes' if volumes else 'slices'}")
    target = f"{__name__}:patch_loader" if volumes else AUGMENT_ON[dc.augment_on]  # 3-D: patches of volumes
    module, _, name = target.partition(":")
    make_loader = getattr(importlib.import_module(module), name)
    loader = make_loader(cfg, table, train_rows, dist_info, device if device is not None else select_device(tc.device))
    return TrainData(table, split, train_rows, val_rows, loader, seed=tc.seed, rank=dist_info.rank)


def cpu_loader(cfg: Config, table: SliceTable, rows: np.ndarray, dist_info: DistInfo,
               device: torch.device) -> DataLoader:
    """albumentations in a torch DataLoader (``data.augment_on: cpu``)."""
    dc = cfg.data
    transform = eval_transform() if dc.augment == "none" else train_transform(dc.size, strength=dc.augment)
    return _loader(SegmentationDataset(table, rows, transform), cfg, dist_info, device)


def _loader(dataset: Dataset, cfg: Config, dist_info: DistInfo, device: torch.device) -> DataLoader:
    tc = cfg.train
    sampler = train_sampler(dataset, dist_info, seed=tc.seed)
    return DataLoader(
        dataset, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
        pin_memory=device.type == "cuda", generator=torch.Generator(), worker_init_fn=seed_worker,
        # a last batch of a single slice would break BatchNorm: drop the remainder unless it is all we have
        drop_last=len(sampler) > tc.batch_size,
    )


# ==================================================================================================
# 3-D: random patches of whole volumes (chapter 10)
# ==================================================================================================


class PatchTransform:
    """MONAI's random crop to ``patch`` (D, H, W), then the 3-D version of ``data.train_transform``'s augmentations.

    On ``{"image": (C, D, H, W), "mask": (1, D, H, W)}``; ``"medium"`` flips along every axis and
    doubles light's ranges, ``"none"`` only crops. Used in chapter 10.
    """

    def __init__(self, patch: Sequence[int], strength: str = "light") -> None:
        from monai import transforms as mt  # MONAI takes seconds to import: only 3-D runs pay for it

        both = ("image", "mask")
        steps = [mt.RandSpatialCropd(both, roi_size=tuple(patch), random_size=False)]
        if strength != "none":
            k = 2.0 if strength == "medium" else 1.0  # medium: twice light's ranges
            axes = (0, 1, 2) if strength == "medium" else (2,)  # (D, H, W): W is left-right
            steps += [mt.RandFlipd(both, prob=0.5, spatial_axis=axis) for axis in axes]
            steps += [
                mt.RandAffined(both, prob=0.7, rotate_range=(math.radians(10 * k), 0.0, 0.0),  # about D: in-plane
                               scale_range=(0.1 * k,) * 3, mode=("bilinear", "nearest"), padding_mode="zeros"),
                mt.RandScaleIntensityd("image", factors=0.1 * k, prob=0.5),  # contrast: x (1 + f)
                mt.RandShiftIntensityd("image", offsets=0.1 * k, prob=0.5),  # brightness: x + b
            ]
        self.compose = mt.Compose(steps)

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        return self.compose(sample)

    def set_random_seed(self, seed: int) -> None:
        self.compose.set_random_state(seed=int(seed) % 2**32)


class PatchDataset(Dataset):
    """One random patch of each volume ``rows`` of a :class:`VolumeTable` per epoch (volumes smaller than
    the patch are padded first). Items: ``dict(image=(C, D, H, W), mask=(D, H, W), patient_id)``.
    Used in chapter 10.
    """

    def __init__(self, table: VolumeTable, rows: np.ndarray, patch: Sequence[int], strength: str = "light") -> None:
        self.table, self.rows, self.patch = table, np.asarray(rows, np.int64), tuple(int(p) for p in patch)
        self.transform = PatchTransform(self.patch, strength)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        image, mask, _ = pad_volume(self.table.images[row], self.table.masks[row], self.patch)
        out = self.transform({"image": image, "mask": mask[None]})
        # MONAI returns MetaTensors; the loop wants plain tensors
        return {"image": torch.as_tensor(out["image"]).as_subclass(torch.Tensor).float(),
                "mask": torch.as_tensor(out["mask"]).as_subclass(torch.Tensor)[0].round().long(),
                "patient_id": str(self.table.patient_ids[row])}


def patch_loader(cfg: Config, table: VolumeTable, rows: np.ndarray, dist_info: DistInfo,
                 device: torch.device) -> DataLoader:
    """Random patches of the training volumes in a torch DataLoader (``model.dims: 3``)."""
    return _loader(PatchDataset(table, rows, cfg.data.patch, cfg.data.augment), cfg, dist_info, device)


def leaky_slice_split(rows: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_val`` validation slices at random from ``rows``: the WRONG split of chapter 3 (neighbouring
    slices look alike, so validation scores near-copies of training images and the Dice is inflated)."""
    shuffled = np.random.default_rng(seed).permutation(rows)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def batches_per_epoch(n_batches: int, accumulate: int, max_steps: int | None) -> int:
    """Batches trained per epoch: whole optimizer steps only, at most ``max_steps`` of them."""
    steps = n_batches // accumulate if max_steps is None else min(n_batches // accumulate, max_steps)
    if steps == 0:
        raise ValueError(f"{n_batches} batches per epoch cannot fill one step of train.accumulate={accumulate}")
    return steps * accumulate

