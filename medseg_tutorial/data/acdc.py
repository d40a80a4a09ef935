"""ACDC (Automated Cardiac Diagnosis Challenge) cine MRI: two layouts of the same 100 patients.

* The SSL4MIS HDF5 copy (registered as ``"acdc"``): ``patientNNN_frameMM.h5`` (a volume) and
  ``patientNNN_frameMM_slice_K.h5`` (a slice) hold ``image`` (scaled to [0, 1] per volume) and
  ``label``. It dropped the voxel spacing: distances computed from it are in pixels.
* The official NIfTI download (:func:`read_acdc_nifti`): raw intensities and the real spacing.

One :class:`Case` per patient and phase: ``patient_id="patientNNN"``, ``group="frameMM"``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from ._io import FileLayout, Item, Volume, as_labels, read_nifti_pair, reading, require_file
from .errors import DataError
from .registry import dataset_path, register_dataset
from .types import Case, DatasetInfo

ACDC = DatasetInfo(
    name="acdc", modality="MRI", class_names=("background", "RV", "myocardium", "LV"),
    channel_names=("cine",), licence="CC BY-NC-SA 4.0",
    citation=(
        "Bernard et al., 'Deep Learning Techniques for Automatic MRI Cardiac Multi-structures "
        "Segmentation and Diagnosis: Is the Problem Solved?', IEEE TMI 37(11):2514-2525 (2018)."
    ),
    url="https://www.creatis.insa-lyon.fr/Challenge/acdc/",
    description=(
        "ACDC training set (MICCAI 2017), cine cardiac MRI at end-diastole and end-systole, in the "
        "SSL4MIS HDF5 layout: intensities scaled to [0, 1] per volume and no voxel spacing."
    ),
    subdir="acdc/ACDC/data", patient_count=100,
)

_H5_NAME = re.compile(r"(patient\d+)_(frame\d+)(?:_slice_(\d+))?\.h5")
_NIFTI_NAME = re.compile(r"(patient\d+)_(frame\d+)\.nii(\.gz)?")


def acdc_h5_items(root: Path) -> list[Item]:
    """The ``.h5`` files directly in ``root`` (SSL4MIS keeps a second copy of slices in ``slices/``)."""
    if not Path(root).is_dir():
        raise DataError(root, "ACDC data folder does not exist", "missing_file")
    items = []
    for path in sorted(Path(root).glob("*.h5")):
        match = _H5_NAME.fullmatch(path.name)
        if match:
            patient, frame, k = match.groups()
            # slice_K counts from 1; store the 0-based position so both file kinds number alike
            items.append(Item(patient, path, path, frame, None if k is None else int(k) - 1))
    return items


def read_acdc_h5_item(item: Item) -> Volume:
    """One SSL4MIS ``.h5`` file: a volume (S, H, W) or a single slice (H, W) of image and label."""
    require_file(item.image, "HDF5 file")
    with reading(item.image, "HDF5 file"), h5py.File(item.image, "r") as f:
        missing = [key for key in ("image", "label") if key not in f]
        if missing:
            raise DataError(item.image, f"no dataset {missing} in the file (found {sorted(f)})", "invalid")
        image, label = f["image"][()], f["label"][()]
    if image.shape != label.shape:
        raise DataError(item.image, f"image shape {image.shape} != label shape {label.shape}", "shape_mismatch")
    if image.ndim == 2:  # single-slice file
        image, label = image[None], label[None]
    if image.ndim != 3:
        raise DataError(item.image, f"image has shape {image.shape}, expected (S, H, W) or (H, W)", "invalid")
    return Volume(image[:, None].astype(np.float32), as_labels(label, item.image))


def acdc_nifti_items(root: Path) -> list[Item]:
    """``patientNNN/patientNNN_frameMM.nii.gz`` images with their ``_gt`` masks (the 4-D cine is skipped)."""
    if not Path(root).is_dir():
        raise DataError(root, "ACDC folder does not exist", "missing_file")
    items = []
    for path in sorted(Path(root).glob("patient*/patient*_frame*.nii*")):
        match = _NIFTI_NAME.fullmatch(path.name)
        if match:
            gt = path.with_name(path.name.replace(match[2], f"{match[2]}_gt", 1))
            items.append(Item(match[1], path, gt, match[2]))
    return items


ACDC_H5_LAYOUT = FileLayout(acdc_h5_items, read_acdc_h5_item, ACDC.num_classes)
ACDC_NIFTI_LAYOUT = FileLayout(acdc_nifti_items, read_nifti_pair, ACDC.num_classes)

# Registered under "acdc"; to read the official download instead, register
# ``replace(ACDC, name="acdc_nifti", subdir="acdc/database/training")`` with :func:`read_acdc_nifti`.
register_dataset(ACDC)(ACDC_H5_LAYOUT)


def read_acdc_nifti(root: str | Path) -> Iterator[Case]:
    """Read the official NIfTI layout (``database/training``) with raw intensities and real spacing."""
    return ACDC_NIFTI_LAYOUT(Path(root))


def read_info_cfg(patient_dir: str | Path) -> dict[str, str]:
    """``Info.cfg`` of an official ACDC patient folder (ED, ES, Group, Height, NbFrame, Weight)."""
    path = Path(patient_dir) / "Info.cfg"
    require_file(path, "Info.cfg")
    with reading(path, "Info.cfg"):
        lines = path.read_text(encoding="utf-8").splitlines()
    return {key.strip(): value.strip() for key, _, value in (line.partition(":") for line in lines) if value}


def acdc_official_split(root: str | Path | None = None) -> dict[str, list[str]]:
    """The usual 70/10/20 patient split ``{"train": [...], "val": [...], "test": [...]}`` of SSL4MIS's lists.

    ``root`` holds ``train.list``, ``val.list`` and ``test.list`` or is their ``data/`` subfolder
    (default: the registered ``acdc`` folder).
    """
    root = Path(root) if root is not None else dataset_path(ACDC.name)
    folder = next((d for d in (root, root.parent) if (d / "train.list").is_file()), root)
    split = {}
    for part in ("train", "val", "test"):
        path = folder / f"{part}.list"
        require_file(path, "split list")
        with reading(path, "split list"):
            names = path.read_text(encoding="utf-8").split()
        # entries name volumes ("patient001_frame01"); a patient appears once per phase
        split[part] = list(dict.fromkeys(name.split("_")[0] for name in names))
    return split

