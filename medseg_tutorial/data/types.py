"""The data records every importer produces and every later step consumes.

Arrays are channel-first (MONAI convention) and spacing is explicit, in millimetres.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is: its classes, modality, licence and citation."""

    name: str
    modality: str  # "MRI" or "CT"
    class_names: tuple[str, ...]  # index == label value; index 0 is background
    channel_names: tuple[str, ...]
    licence: str
    citation: str
    url: str
    description: str = ""
    subdir: str = ""  # folder under the data root holding the download layout
    patient_count: int | None = None  # expected number of patients/subjects when complete
    has_raw_hu: bool = False  # CT intensities are Hounsfield units (windowing applies)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return len(self.channel_names)


@dataclass
class Case:
    """One patient (or one volume) as a stack of 2-D slices in native intensities."""

    patient_id: str
    image: np.ndarray  # float32 (S, C, H, W)
    mask: np.ndarray | None  # integer (S, H, W), values index DatasetInfo.class_names
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (slice, row, col) mm
    slice_index: np.ndarray | None = None  # original slice numbers, (S,)
    source: str = ""  # file or folder the case was read from
    group: str = ""  # optional sub-group, e.g. ACDC cardiac phase "frame01"

    def __post_init__(self) -> None:
        if self.image.ndim != 4:
            raise ValueError(f"{self.source}: image must be (S, C, H, W), got shape {self.image.shape}")
        if self.mask is not None and self.mask.shape != (self.image.shape[0], *self.image.shape[2:]):
            raise ValueError(
                f"{self.source}: mask shape {self.mask.shape} does not match image shape {self.image.shape}"
            )
        if self.slice_index is None:
            self.slice_index = np.arange(self.image.shape[0])


class PatientRows:
    """Rows (slices or volumes) by patient, for the tables whose ``patient_ids`` has one entry a row."""

    patient_ids: np.ndarray

    @property
    def patients(self) -> list[str]:
        """Patient ids in order of first appearance."""
        return list(dict.fromkeys(self.patient_ids.tolist()))

    def rows_for(self, patients: list[str] | set[str]) -> np.ndarray:
        """Indices of the rows that belong to ``patients``."""
        return np.flatnonzero(np.isin(self.patient_ids, list(patients)))


@dataclass
class SliceTable(PatientRows):
    """Prepared 2-D samples of one dataset: what training and evaluation read."""

    images: np.ndarray  # float32 (N, C, H, W), normalised
    masks: np.ndarray  # uint8 (N, H, W)
    patient_ids: np.ndarray  # str (N,)
    slice_index: np.ndarray  # int (N,)
    spacing: np.ndarray  # float (N, 2): (row, col) mm after resizing
    info: DatasetInfo
    meta: dict = field(default_factory=dict)  # preprocessing parameters and provenance

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> SliceTable:
        """Rows ``indices`` as a new table (arrays are views or copies, info shared)."""
        return SliceTable(
            self.images[indices], self.masks[indices], self.patient_ids[indices],
            self.slice_index[indices], self.spacing[indices], self.info, dict(self.meta),
        )
