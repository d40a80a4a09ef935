"""Whole volumes for 3-D training (chapter 10): the arrays, no torch.

A :class:`VolumeTable` holds every labelled volume at its **native grid**, channel-first
``(C, S, H, W)`` as MONAI lays volumes out, normalised as the 2-D slices are. Nothing is resized: a
3-D network trains on patches and predicts with a sliding window, so it is scored on the voxels the
labels were drawn on. Not cached: MSD Hippocampus (18 MB) reads in a few seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from .prepare import checked_case
from .registry import Dataset
from .types import DatasetInfo, PatientRows


@dataclass
class VolumeTable(PatientRows):
    """Normalised native volumes of one dataset: what 3-D training and validation read. Used in chapter 10."""

    images: list[np.ndarray]  # float32 (C, S, H, W) each; sizes differ from volume to volume
    masks: list[np.ndarray]  # uint8 (S, H, W) each
    patient_ids: np.ndarray  # str (V,): the subject, what splits keep apart
    volume_ids: np.ndarray  # str (V,): "patient" or "patient/group" (one ACDC phase)
    spacing: np.ndarray  # float (V, 3): (slice, row, col) mm
    info: DatasetInfo

    def __len__(self) -> int:
        return len(self.images)


def read_volumes(dataset: Dataset, normalizer: str, normalizer_params: dict | None = None,
                 progress: bool = False) -> VolumeTable:
    """Read, check and normalise every case of ``dataset`` into a :class:`VolumeTable` (no resizing)."""
    images, masks, patients, volumes, spacing = [], [], [], [], []
    for case in tqdm(dataset.cases(), desc=f"read {dataset.info.name}", unit="volume", disable=not progress):
        case = checked_case(case, dataset.info, normalizer, dict(normalizer_params or {}))
        images.append(np.ascontiguousarray(case.image.transpose(1, 0, 2, 3), np.float32))  # (S, C, ..) -> (C, S, ..)
        masks.append(case.mask.astype(np.uint8))
        patients.append(case.patient_id)
        volumes.append(f"{case.patient_id}/{case.group}" if case.group else case.patient_id)
        spacing.append(case.spacing)
    if not images:
        raise ValueError(f"{dataset.info.name}: no cases found under {dataset.source}")
    return VolumeTable(images, masks, np.array(patients, dtype=str), np.array(volumes, dtype=str),
                       np.asarray(spacing, np.float64).reshape(-1, 3), dataset.info)


def pad_volume(image: np.ndarray, mask: np.ndarray | None, size: Sequence[int]
               ) -> tuple[np.ndarray, np.ndarray | None, tuple[slice, slice, slice]]:
    """Pad ``image`` (C, S, H, W) and ``mask`` (S, H, W) to at least ``size`` = (D, H, W), centred.

    The image is padded with each channel's minimum, the mask with 0. Returns the padded arrays and
    the slices that cut the original back out of a padded (..., D, H, W) array.
    """
    before = [max(int(want) - have, 0) // 2 for want, have in zip(size, image.shape[1:])]
    after = [max(int(want) - have, 0) - b for want, have, b in zip(size, image.shape[1:], before)]
    inner = tuple(slice(b, b + have) for b, have in zip(before, image.shape[1:]))
    if not any(before) and not any(after):
        return image, mask, inner
    fill = image.reshape(len(image), -1).min(axis=1)
    out = np.empty((len(image), *(b + have + a for b, have, a in zip(before, image.shape[1:], after))), image.dtype)
    out[...] = fill.reshape(-1, 1, 1, 1)
    out[(slice(None), *inner)] = image
    if mask is not None:
        padded = np.zeros(out.shape[1:], mask.dtype)
        padded[inner] = mask
        mask = padded
    return out, mask, inner
