"""PyTorch side of the data layer: a Dataset over a :class:`SliceTable`, augmentations and loaders.

Albumentations transforms an image and its mask *together*, channel-last (H, W, C), so the Dataset
transposes on the way in and out. Its brightness/contrast transforms *clip* float images to [0, 1],
which would erase half of a z-scored MRI slice: :class:`ScaleShiftIntensity` is used instead.
"""

from __future__ import annotations

import os
import random
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .types import SliceTable


class ScaleShiftIntensity(A.ImageOnlyTransform):
    """Random contrast and brightness for images of any value range (no clipping).

    ``x -> (x - mean) * (1 + c) + mean + b`` with ``c ~ U(-contrast, contrast)`` and
    ``b ~ U(-brightness, brightness)``, in the image's own units (a fraction of the [0, 1] range
    for CT windows, standard deviations for z-scored MRI).
    """

    def __init__(self, contrast: float = 0.1, brightness: float = 0.1, p: float = 0.5):
        super().__init__(p=p)
        if contrast < 0 or brightness < 0:
            raise ValueError(f"contrast and brightness must be >= 0, got {contrast}, {brightness}")
        self.contrast = contrast
        self.brightness = brightness

    def get_params(self) -> dict[str, float]:
        # self.py_random is seeded by A.Compose(seed=...), which keeps pipelines reproducible
        return {"factor": 1.0 + self.py_random.uniform(-self.contrast, self.contrast),
                "shift": self.py_random.uniform(-self.brightness, self.brightness)}

    def apply(self, img: np.ndarray, factor: float = 1.0, shift: float = 0.0, **params: Any) -> np.ndarray:
        mean = img.mean(axis=(0, 1), keepdims=True)
        return ((img - mean) * factor + mean + shift).astype(img.dtype, copy=False)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("contrast", "brightness")


# Augmentation strength presets: (flips, max rotation in degrees, scale range, translation, intensity change)
AUGMENT_STRENGTHS = {
    "light": dict(vflip=False, rotate=10.0, scale=(0.9, 1.1), translate=0.0, intensity=0.1),
    "medium": dict(vflip=True, rotate=20.0, scale=(0.85, 1.2), translate=0.06, intensity=0.2),
}


def train_transform(
    size: tuple[int, int], strength: str = "light", fill: float = 0.0, seed: int | None = None
) -> A.Compose:
    """Training augmentations for slices of ``size`` = (H, W).

    Pad/randomly crop to ``size`` (a no-op after prepare), flips, a small random affine and a
    contrast/brightness change. The mask is resampled nearest-neighbour; uncovered pixels get
    ``fill`` in the image and background (0) in the mask. :func:`make_loader` reseeds the pipeline
    per worker. Used in chapter 8.
    """
    if strength not in AUGMENT_STRENGTHS:
        raise ValueError(f"unknown augmentation strength {strength!r}; use one of {sorted(AUGMENT_STRENGTHS)}")
    s = AUGMENT_STRENGTHS[strength]
    h, w = int(size[0]), int(size[1])
    transforms = [
        A.RandomCrop(height=h, width=w, pad_if_needed=True, border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=0),
        A.HorizontalFlip(p=0.5),
    ]
    if s["vflip"]:
        transforms.append(A.VerticalFlip(p=0.5))
    transforms += [
        A.Affine(rotate=(-s["rotate"], s["rotate"]), scale=s["scale"],
                 translate_percent=(-s["translate"], s["translate"]) if s["translate"] else None,
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=cv2.BORDER_CONSTANT, fill=fill, fill_mask=0, p=0.7),
        ScaleShiftIntensity(contrast=s["intensity"], brightness=s["intensity"], p=0.5),
    ]
    return A.Compose(transforms, seed=seed)


def eval_transform() -> A.Compose:
    """Evaluation transform: a no-op, since prepare already fixed size and intensities."""
    return A.Compose([A.NoOp()])


class SegmentationDataset(Dataset):
    """Rows ``indices`` of a :class:`SliceTable` as tensors, through an albumentations ``transform``.

    Each item is ``dict(image=FloatTensor (C, H, W), mask=LongTensor (H, W), patient_id=str,
    slice_index=int)``. Used in chapters 6 and 8.
    """

    def __init__(self, table: SliceTable, indices: np.ndarray | list[int] | None = None, transform=None):
        self.table = table
        self.indices = np.arange(len(table)) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= len(table)):
            raise IndexError(f"indices must lie in [0, {len(table)}), got range "
                             f"[{self.indices.min()}, {self.indices.max()}]")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.indices[i])
        image = self.table.images[row]  # (C, H, W) float32
        mask = self.table.masks[row]  # (H, W) uint8
        if self.transform is not None:
            out = self.transform(image=np.ascontiguousarray(image.transpose(1, 2, 0)), mask=mask)
            image, mask = out["image"].transpose(2, 0, 1), out["mask"]
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(mask)).long(),
            "patient_id": str(self.table.patient_ids[row]),
            "slice_index": int(self.table.slice_index[row]),
        }


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # respects container and taskset limits
    except AttributeError:  # macOS and Windows
        return os.cpu_count() or 1


def default_num_workers() -> int:
    """Loader workers: 0 on machines with <= 2 cores, else ``min(4, cores - 1)``.

    The table sits in memory and 2-D augmentation costs well under a millisecond per slice, so a few
    workers keep a GPU fed; on 2 cores they would only compete with the training process.
    """
    n = _available_cpus()
    return 0 if n <= 2 else min(4, n - 1)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn``: seed numpy, ``random`` and the dataset's albumentations pipeline per worker.

    PyTorch gives each worker the seed ``base_seed + worker_id``, with ``base_seed`` drawn from the
    loader's generator; without reseeding, every worker would repeat the same augmentations.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)  # noqa: NPY002  (the legacy global state is what third-party code draws from)
    random.seed(seed)
    info = torch.utils.data.get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    shuffle: bool,
    num_workers: int | None = None,
    pin_memory: bool | None = None,
    drop_last: bool = False,
    seed: int = 0,
    persistent_workers: bool = False,
) -> DataLoader:
    """A reproducible :class:`DataLoader`: seeded shuffling and seeded augmentation per worker.

    ``num_workers=None`` picks :func:`default_num_workers`; ``pin_memory=None`` pins when CUDA is
    available. With ``num_workers=0`` the pipeline is reseeded from ``seed`` here. Used in chapters 6 and 8.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    num_workers = default_num_workers() if num_workers is None else int(num_workers)
    pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
    generator = torch.Generator().manual_seed(seed)
    transform = getattr(dataset, "transform", None)
    if num_workers == 0 and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      pin_memory=pin_memory, drop_last=drop_last, generator=generator,
                      worker_init_fn=seed_worker, persistent_workers=persistent_workers and num_workers > 0)
