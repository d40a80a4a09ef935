"""What a dataset holds, counted through its importer (chapter 3's table; the data checker counts the same way)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .registry import dataset_info, iter_cases


class DatasetTally:
    """Counts of what was read: cases, patients, slices, shapes, pixels per class."""

    def __init__(self, class_names: tuple[str, ...] = ()) -> None:
        self.class_names = class_names
        self.cases, self.slices, self.empty = 0, 0, 0
        self.patients: set[str] = set()
        self.channels: set[int] = set()
        self.shapes: Counter[str] = Counter()
        self.voxels = np.zeros(len(class_names), dtype=np.int64)
        self.spacings: list[tuple[float, float, float]] = []

    def add(self, patient_id: str, image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]) -> None:
        s, c, h, w = image.shape
        self.cases += 1
        self.patients.add(patient_id)
        self.slices += s
        self.channels.add(c)
        self.shapes[f"{h}x{w}"] += s
        self.spacings.append(spacing)
        counts = np.bincount(mask.ravel(), minlength=len(self.voxels))
        self.voxels = np.pad(self.voxels, (0, len(counts) - len(self.voxels))) + counts
        self.empty += int((mask.reshape(s, -1).max(axis=1) == 0).sum()) if mask.size else 0

    def summary(self) -> dict:
        names = [*self.class_names, *(f"label {i}" for i in range(len(self.class_names), len(self.voxels)))]
        spacing = np.array(self.spacings) if self.spacings else np.zeros((0, 3))
        return {
            "cases": self.cases,
            "patients": len(self.patients),
            "slices": self.slices,
            "channels": sorted(self.channels),
            "slice_shapes": dict(self.shapes.most_common()),
            "class_voxels": {name: int(n) for name, n in zip(names, self.voxels)},
            "empty_slices": self.empty,
            "spacing_min": spacing.min(axis=0).tolist() if len(spacing) else None,
            "spacing_max": spacing.max(axis=0).tolist() if len(spacing) else None,
        }


def summarize_dataset(name: str, root: str | Path | None = None) -> dict:
    """Counts of a registered dataset through its importer: cases, patients, slices, shapes, pixels per class.

    Used in chapter 3.
    """
    info = dataset_info(name)
    tally = DatasetTally(info.class_names)
    for case in iter_cases(name, root):
        mask = case.mask if case.mask is not None else np.zeros((0,), dtype=np.uint8)
        tally.add(case.patient_id, case.image, mask, case.spacing)
    return {
        "name": name,
        "modality": info.modality,
        "classes": list(info.class_names),
        "channel_names": list(info.channel_names),
        "expected_patients": info.patient_count,
        **tally.summary(),
    }
