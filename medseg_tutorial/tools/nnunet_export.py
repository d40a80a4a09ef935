"""Export any dataset as an nnU-Net v2 raw dataset (``medseg data export-nnunet``).

Exporting (:func:`export_nnunet`) writes any dataset's cases as an nnU-Net v2 raw dataset, so that
the field's standard baseline can be trained on exactly the patients of a ``medseg`` run. In Python,
``export_nnunet(iter_cases("msd_hippocampus"), dataset_info("msd_hippocampus"), os.environ["nnUNet_raw"],
504, "Hippocampus", split=load_split("runs/RUN/split.json"))``; then, in a shell with nnU-Net v2 installed::

    nnUNetv2_plan_and_preprocess -d 504 --verify_dataset_integrity
    # fold 0 = our train/val patients (nnU-Net creates its own 5 folds when no splits_final.json exists)
    cp $nnUNet_raw/Dataset504_Hippocampus/medseg_split.json \\
       $nnUNet_preprocessed/Dataset504_Hippocampus/splits_final.json
    nnUNetv2_train 504 2d 0
    nnUNetv2_predict -i $nnUNet_raw/Dataset504_Hippocampus/imagesTs -o pred504 -d 504 -c 2d -f 0
    nnUNetv2_evaluate_folder $nnUNet_raw/Dataset504_Hippocampus/labelsTs pred504 \\
       -djfile $nnUNet_raw/Dataset504_Hippocampus/dataset.json \\
       -pfile $nnUNet_preprocessed/Dataset504_Hippocampus/nnUNetPlans.json
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..data.errors import DataError
from ..data.nnunet import DATASET_JSON, SPLIT_FILE, is_nnunet_raw
from ..data.splits import Split
from ..data.types import Case, DatasetInfo
from ..errors import ConfigError

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# the files and folders an export writes; on overwrite only these are replaced
_EXPORTED = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", DATASET_JSON, SPLIT_FILE)



def _case_id(patient_id: str, group: str, taken: set[str]) -> str:
    """A file-safe, unique nnU-Net case id for one case (``taken`` holds the ids used, lower case)."""
    base = _UNSAFE.sub("_", f"{patient_id}_{group}" if group else patient_id).strip("_") or "case"
    # an id ending in _NNNN reads like a channel suffix to anyone splitting file names by eye or regex
    base = re.sub(r"_(\d{4})$", r"-\1", base)
    case_id, n = base, 2
    while case_id.lower() in taken:  # lower case: "P1" and "p1" are one file on macOS and Windows
        case_id, n = f"{base}-{n}", n + 1
    taken.add(case_id.lower())
    return case_id


def _save_nifti(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    """(S, H, W) -> NIfTI (x=col, y=row, z=slice) with the spacing on the affine's diagonal, in mm."""
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)),
                          np.diag([spacing[2], spacing[1], spacing[0], 1.0]))
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _storage(image: np.ndarray) -> np.ndarray:
    """Whole numbers that fit int16 are stored as int16 (exact, half the size); the rest as float32."""
    if image.size and image.min() >= -32768 and image.max() <= 32767 and np.array_equal(image, np.round(image)):
        return image.astype(np.int16)
    return image.astype(np.float32)


def _target(out_dir: Path, dataset_id: int, name: str, overwrite: bool) -> Path:
    if not isinstance(dataset_id, int) or not 1 <= dataset_id <= 999:
        raise ConfigError(f"nnU-Net dataset id must be an integer from 1 to 999, got {dataset_id!r}")
    folder = out_dir / f"Dataset{dataset_id:03d}_{name}"
    for other in out_dir.glob(f"Dataset{dataset_id:03d}_*") if out_dir.is_dir() else ():
        if other.name != folder.name and not other.name.startswith("."):  # nnU-Net refuses two names per id
            raise DataError(other, f"dataset id {dataset_id} is already taken by this folder; choose another id",
                            "duplicate")
    if folder.exists() and any(folder.iterdir()):
        if not overwrite:
            raise DataError(folder, "folder is not empty; choose another id or name, or overwrite it "
                            "(overwrite=True, --overwrite)", "invalid")
        if not is_nnunet_raw(folder):
            raise DataError(folder, "folder is not an nnU-Net raw dataset; refusing to replace it even with overwrite",
                            "invalid")
    return folder


def export_nnunet(
    cases: Iterable[Case],
    info: DatasetInfo,
    out_dir: str | os.PathLike,
    dataset_id: int,
    name: str | None = None,
    *,
    split: Split | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``cases`` as the nnU-Net v2 raw dataset ``out_dir/DatasetXXX_<name>`` and return that folder.

    ``out_dir`` is the ``nnUNet_raw`` folder; ``cases`` is e.g. ``iter_cases("msd_hippocampus")``.
    Each channel becomes ``imagesTr/<case>_<XXXX>.nii.gz`` and each mask ``labelsTr/<case>.nii.gz``
    (uint8) with the case's spacing on the NIfTI affine; case ids are the patient ids (plus the
    group, e.g. ACDC's phase) made file-safe and unique, and ``dataset.json``'s ``medseg`` block maps
    them back to the original patients (:func:`read_nnunet` uses it). Cases without a mask go to
    ``imagesTs/``. ``name`` defaults to ``info.name`` without its ``msd_`` prefix.

    With ``split`` (e.g. ``load_split("runs/RUN/split.json")``) the test patients go to
    ``imagesTs/`` and ``labelsTs/`` (for ``nnUNetv2_evaluate_folder``), the train and val patients to
    ``imagesTr/``, and ``medseg_split.json`` holds nnU-Net's ``splits_final.json`` with fold 0 = our
    train/val patients: copy it to ``$nnUNet_preprocessed/DatasetXXX_<name>/splits_final.json``
    after ``nnUNetv2_plan_and_preprocess -d XXX`` and before ``nnUNetv2_train XXX 2d 0`` (the module
    docstring has the full recipe). A non-empty target folder is refused unless ``overwrite``.
    The export is written beside the target and renamed into place, so a crash leaves no half dataset.
    """
    out_dir = Path(out_dir)
    name = _UNSAFE.sub("_", name or info.name.removeprefix("msd_")).strip("_")
    if not name:
        raise ConfigError("nnU-Net dataset name is empty after keeping only letters, digits, '_' and '-'")
    target = _target(out_dir, dataset_id, name, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial_dir = out_dir / f".{target.name}.partial-{os.getpid()}"
    shutil.rmtree(partial_dir, ignore_errors=True)
    try:
        meta, folds = _write_cases(cases, info, partial_dir, split)
        dataset_json = {
            "channel_names": {str(i): c for i, c in enumerate(info.channel_names)},
            "labels": {c: i for i, c in enumerate(info.class_names)},
            "numTraining": len(meta["training"]),
            "file_ending": ".nii.gz",
            "name": name,
            "description": info.description,
            "reference": info.citation,
            "licence": info.licence,
            "medseg": {"dataset": info.name, "modality": info.modality, "url": info.url,
                       "has_raw_hu": info.has_raw_hu, "cases": meta["cases"], "test": meta["test"]},
        }
        (partial_dir / DATASET_JSON).write_text(json.dumps(dataset_json, indent=2) + "\n", encoding="utf-8")
        if split is not None:
            (partial_dir / SPLIT_FILE).write_text(json.dumps([folds], indent=2) + "\n", encoding="utf-8")
        _swap_in(partial_dir, target)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    return target


def _write_cases(cases: Iterable[Case], info: DatasetInfo, folder: Path, split: Split | None) -> tuple[dict, dict]:
    """Write every case under ``folder``; returns (case records, fold 0 of the splits file)."""
    for sub in ("imagesTr", "labelsTr") + (("imagesTs", "labelsTs") if split is not None else ()):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    subset = {p: s for s in ("train", "val", "test") for p in (getattr(split, s) if split is not None else ())}
    taken: set[str] = set()
    meta: dict[str, Any] = {"cases": {}, "training": [], "test": []}
    folds: dict[str, list[str]] = {"train": [], "val": []}
    n_channels, n_classes = len(info.channel_names), info.num_classes
    for case in cases:
        if case.image.shape[1] != n_channels:
            raise DataError(case.source or case.patient_id, f"has {case.image.shape[1]} channels, {info.name} "
                            f"declares {n_channels} ({', '.join(info.channel_names)})", "invalid")
        if split is not None and case.patient_id not in subset:
            raise DataError(case.source or case.patient_id, f"patient {case.patient_id!r} is in none of the "
                            "split's train/val/test lists (a split of another dataset?)", "invalid")
        if case.mask is not None and case.mask.size and int(case.mask.max()) >= n_classes:
            raise DataError(case.source or case.patient_id, f"mask value {int(case.mask.max())} outside the "
                            f"{n_classes} classes of {info.name}", "bad_labels")
        case_id = _case_id(case.patient_id, case.group, taken)
        part = subset.get(case.patient_id, "train")
        test = part == "test" or case.mask is None
        images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
        (folder / images).mkdir(exist_ok=True)
        for c in range(n_channels):
            _save_nifti(_storage(case.image[:, c]), case.spacing, folder / images / f"{case_id}_{c:04d}.nii.gz")
        if case.mask is not None:
            (folder / labels).mkdir(exist_ok=True)
            _save_nifti(case.mask.astype(np.uint8), case.spacing, folder / labels / f"{case_id}.nii.gz")
        # the original patient (and group) of each case: what the patient split keeps apart on re-import
        meta["cases"][case_id] = {"patient_id": case.patient_id, "group": case.group}
        meta["test" if test else "training"].append(case_id)
        if not test:
            folds["val" if part == "val" else "train"].append(case_id)
    if not meta["training"]:
        raise DataError(folder.parent, "no labelled training case to export (every case is a test case or "
                        "has no mask)", "empty")
    return meta, folds


def _swap_in(new: Path, target: Path) -> None:
    """Rename the finished export into place; a previous export there is replaced only once the new one is whole."""
    if not target.exists():
        new.rename(target)
        return
    if not any(target.iterdir()):
        target.rmdir()
        new.rename(target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    target.rename(old)
    new.rename(target)
    for entry in _EXPORTED:  # the old export's files; anything else the user left there is kept
        path = old / entry
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    leftovers = list(old.iterdir())
    for path in leftovers:
        path.rename(target / path.name)
    old.rmdir()
