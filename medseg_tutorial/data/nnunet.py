"""nnU-Net v2 raw datasets: tell them from MSD tasks, read them, and export any dataset as one.

nnU-Net v2 (``documentation/dataset_format.md`` of MIC-DKFZ/nnUNet) keeps each dataset in
``nnUNet_raw/DatasetXXX_Name/`` (``XXX`` a three-digit id)::

    dataset.json
    imagesTr/{case}_{XXXX}{file_ending}   one file per input channel, XXXX its four-digit index
    labelsTr/{case}{file_ending}          the label map, same grid as the images
    imagesTs/                             optional, unlabelled: nnU-Net itself never reads it

``dataset.json`` holds ``channel_names`` ({"0": "T1"}; older v2 files call it ``modality``),
``labels`` as name -> value ({"background": 0, "anterior": 1}), ``numTraining`` and
``file_ending`` (".nii.gz", ".png", ...). An MSD task (:mod:`.msd`) looks alike but is another format:
``labels`` maps value -> name, ``training`` lists the image/label pairs, and a multi-channel image is
one 4-D NIfTI file. :func:`is_nnunet_raw` and :func:`is_msd_task` tell the two apart.

Reading (:func:`read_nnunet`, :func:`nnunet_layout`) gives the same :class:`Case` records as every
other importer: float32 (S, C, H, W) with the channel files stacked in index order, uint8 masks,
(slice, row, col) spacing in mm from the NIfTI header (1 mm for 2-D PNG/TIFF/BMP files).

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

import glob
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from ..errors import ConfigError
from ._io import (
    FileLayout,
    Item,
    Volume,
    as_labels,
    read_nifti_image,
    read_nifti_labels,
    reading,
    require_mask,
)
from .errors import DataError
from .paired import read_image_file
from .registry import register_dataset
from .splits import Split
from .types import Case, DatasetInfo

DATASET_JSON = "dataset.json"
SPLIT_FILE = "medseg_split.json"  # nnU-Net's splits_final.json format; it belongs in nnUNet_preprocessed
VOLUME_ENDINGS = (".nii.gz", ".nii")
PLANE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")  # 2-D files, as nnU-Net's NaturalImage2DIO reads them
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
# the exported folders and files: all that overwrite=True may replace
_EXPORTED = ("imagesTr", "labelsTr", "imagesTs", "labelsTs", DATASET_JSON, SPLIT_FILE)


# --- telling the layouts apart ------------------------------------------------------------------


def _json_or_none(folder: Path) -> dict | None:
    """``dataset.json`` of ``folder`` if it parses as an object; detection never raises."""
    try:
        meta = json.loads((Path(folder) / DATASET_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _labels_by_name(labels: Any) -> bool:
    """nnU-Net v2 labels: name -> int (or a tuple of ints for a region); MSD's are "0" -> name."""
    return isinstance(labels, dict) and bool(labels) and all(
        isinstance(v, int) or (isinstance(v, list) and all(isinstance(i, int) for i in v)) for v in labels.values()
    )


def is_nnunet_raw(path: str | os.PathLike) -> bool:
    """True if ``path`` is an nnU-Net v2 raw dataset folder: ``dataset.json`` with ``file_ending``,
    ``channel_names`` and name -> value ``labels``, next to ``imagesTr/`` whose images are named
    ``CASE_XXXX<file_ending>``."""
    folder = Path(path)
    meta = _json_or_none(folder)
    if not (
        meta is not None
        and isinstance(meta.get("file_ending"), str)
        and isinstance(meta.get("channel_names", meta.get("modality")), dict)
        and _labels_by_name(meta.get("labels"))
        and (folder / "imagesTr").is_dir()
    ):
        return False
    ending = meta["file_ending"]
    # and the file naming: images end in a four-digit channel index (MSD's never do)
    first = next((p.name for p in (folder / "imagesTr").iterdir() if p.name.endswith(ending)
                  and not p.name.startswith(".")), None)
    return first is None or _CHANNEL_FILE.match(first[: -len(ending)]) is not None


def is_msd_task(path: str | os.PathLike) -> bool:
    """True if ``path`` is a Medical Segmentation Decathlon task folder (read by :mod:`.msd`).

    MSD's ``dataset.json`` lists the ``training`` pairs, maps label values to names and has no
    ``file_ending``; its listed images exist under their own names (an nnU-Net v1 task keeps MSD's
    ``dataset.json`` but renames the images ``case_0000.nii.gz``, so it is not an MSD task).
    """
    folder = Path(path)
    meta = _json_or_none(folder)
    if meta is None or "file_ending" in meta or not isinstance(meta.get("modality"), dict):
        return False
    labels, training = meta.get("labels"), meta.get("training")
    if not isinstance(labels, dict) or not all(str(k).isdigit() for k in labels) or not isinstance(training, list):
        return False
    first = training[0] if training else None
    return first is None or (isinstance(first, dict) and (folder / str(first.get("image", ""))).is_file())


# --- reading --------------------------------------------------------------------------------------


def _dataset_json(folder: Path) -> dict:
    """The checked ``dataset.json`` of an nnU-Net v2 raw dataset (one-line DataError otherwise)."""
    path = folder / DATASET_JSON
    if not path.is_file():
        raise DataError(path, "dataset.json does not exist (not an nnU-Net raw dataset folder?)", "missing_file")
    with reading(path, "dataset.json"):
        meta = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(meta, dict):
        raise DataError(path, "dataset.json is not a JSON object", "invalid")
    if "file_ending" not in meta and "training" in meta:
        raise DataError(path, "this is an MSD task's dataset.json (value -> name labels, a 'training' list), not "
                        "nnU-Net v2: read it with the MSD importer (medseg_tutorial.data.msd)", "invalid")
    for key in ("labels", "file_ending"):
        if key not in meta:
            raise DataError(path, f"dataset.json has no {key!r} field (nnU-Net v2 needs it)", "invalid")
    if not isinstance(meta.get("channel_names", meta.get("modality")), dict):
        raise DataError(path, "dataset.json has no 'channel_names' object ({\"0\": \"T1\", ...})", "invalid")
    ending = meta["file_ending"]
    known = VOLUME_ENDINGS + PLANE_ENDINGS
    if ending not in known:
        raise DataError(path, f"file_ending {ending!r} is not read here (known: {', '.join(known)}; convert "
                        ".nrrd/.mha files to .nii.gz first)", "invalid")
    return meta


def _class_names(meta: dict, path: Path) -> tuple[str, ...]:
    labels = meta["labels"]
    if not _labels_by_name(labels):
        raise DataError(path, "labels must map each class name to its value, e.g. {\"background\": 0, \"tumour\": 1}",
                        "invalid")
    if any(isinstance(v, list) for v in labels.values()):
        raise DataError(path, "region-based labels (a class made of several values) are not supported; "
                        "give one value per class", "invalid")
    by_value = {v: k for k, v in labels.items()}
    if sorted(by_value) != list(range(len(labels))):
        raise DataError(path, f"label values {sorted(labels.values())} must be consecutive from 0 (background)",
                        "invalid")
    return tuple(str(by_value[v]) for v in range(len(by_value)))


def _channel_names(meta: dict) -> tuple[str, ...]:
    channels = meta.get("channel_names", meta.get("modality"))
    return tuple(str(channels[k]) for k in sorted(channels, key=int))


def nnunet_info(path: str | os.PathLike, name: str | None = None, subdir: str | None = None) -> DatasetInfo:
    """A :class:`DatasetInfo` for an nnU-Net v2 raw dataset folder, from its ``dataset.json`` alone.

    Classes, channels, licence (``licence``), citation (``reference``) and description come from
    the file, modality and URL from the ``medseg`` block :func:`export_nnunet` adds (else CT when a
    channel is named CT). ``name`` defaults to ``nnunet_<name>``, ``subdir`` to ``nnUNet_raw/<folder>``.
    """
    folder = Path(path)
    meta = _dataset_json(folder)
    extra = meta.get("medseg") if isinstance(meta.get("medseg"), dict) else {}
    channels = _channel_names(meta)
    title = str(meta.get("name") or re.sub(r"^Dataset\d+_", "", folder.name))
    modality = extra.get("modality") or ("CT" if any(c.upper() == "CT" for c in channels) else "MRI")
    return DatasetInfo(
        name=name or f"nnunet_{title.lower()}",
        modality=str(modality),
        class_names=_class_names(meta, folder / DATASET_JSON),
        channel_names=channels,
        licence=str(meta.get("licence", meta.get("license", "unknown"))),
        citation=str(meta.get("reference", "")),
        url=str(extra.get("url", "")),
        description=str(meta.get("description", f"nnU-Net v2 raw dataset {folder.name}")),
        subdir=subdir if subdir is not None else f"nnUNet_raw/{folder.name}",
        patient_count=int(meta["numTraining"]) if isinstance(meta.get("numTraining"), int) else None,
        has_raw_hu=bool(extra.get("has_raw_hu", modality == "CT")),
    )


def _nnunet_items(root: Path, meta: dict) -> list[Item]:
    """One item per training case: ``image`` is its channel-0 file, the reader finds the others."""
    root, ending = Path(root), meta["file_ending"]
    images = root / "imagesTr"
    if not images.is_dir():
        raise DataError(images, "imagesTr/ does not exist", "missing_file")
    channels: dict[str, list[int]] = {}
    for path in sorted(images.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(ending):
            continue  # macOS "._x" forks and stray files are not cases
        match = _CHANNEL_FILE.match(path.name[: -len(ending)])
        if match is None:
            raise DataError(path, f"not named CASE_XXXX{ending} (nnU-Net stores each channel in its own file, "
                            "XXXX = 0000, 0001, ...)", "invalid")
        channels.setdefault(match["case"], []).append(int(match["channel"]))
    if not channels:
        raise DataError(images, f"no *_0000{ending} files", "empty")
    expected = len(next(iter(channels.values())))
    cases = (meta.get("medseg") or {}).get("cases", {}) if isinstance(meta.get("medseg"), dict) else {}
    items = []
    for case, found in channels.items():
        if sorted(found) != list(range(expected)):  # nnU-Net needs the same channels, in the same order, everywhere
            raise DataError(images / f"{case}_{min(found):04d}{ending}", f"case {case!r} has channel files "
                            f"{sorted(found)}, expected {list(range(expected))} like the first case", "invalid")
        known = cases.get(case, {})
        items.append(Item(str(known.get("patient_id", case)), images / f"{case}_0000{ending}",
                          root / "labelsTr" / f"{case}{ending}", str(known.get("group", ""))))
    declared = meta.get("numTraining")
    if isinstance(declared, int) and declared != len(items):
        raise DataError(root / DATASET_JSON, f"numTraining is {declared} but imagesTr holds {len(items)} cases",
                        "invalid")
    return items


def _plane(path: Path, what: str) -> np.ndarray:
    """A 2-D file as (C, H, W): grey gives one channel, RGB(A) one per colour (as nnU-Net reads them)."""
    pixels = read_image_file(path)
    if pixels.ndim == 2:
        return pixels[None]
    if pixels.ndim == 3 and pixels.shape[-1] in (3, 4):
        return np.moveaxis(pixels, -1, 0)
    raise DataError(path, f"{what} has shape {pixels.shape}, expected (H, W) or (H, W, 3)", "invalid")


def _read_nnunet_item(item: Item, ending: str, n_channels: int) -> Volume:
    """Read every channel file of one case and its label map, checking they share one grid."""
    require_mask(item)
    stem = item.image.name[: -len(ending) - 5]  # drop "_0000" and the ending
    files = sorted(item.image.parent.glob(f"{glob.escape(stem)}_[0-9][0-9][0-9][0-9]{ending}"))
    if ending in VOLUME_ENDINGS:
        parts, spacing = [], None
        for path in files:
            image, sp = read_nifti_image(path)
            if image.shape[1] != 1:
                raise DataError(path, f"holds {image.shape[1]} channels in a 4-D volume; nnU-Net stores one "
                                "channel per file (CASE_0000, CASE_0001, ...)", "invalid")
            if parts and (image.shape != parts[0].shape or not np.allclose(sp, spacing, rtol=1e-4)):
                raise DataError(path, f"grid {image.shape[2:]} x{image.shape[0]} at {sp} mm differs from "
                                f"{files[0].name}'s {parts[0].shape[2:]} x{parts[0].shape[0]} at {spacing} mm",
                                "shape_mismatch")
            parts.append(image)
            spacing = spacing or sp
        image = np.concatenate(parts, axis=1)
        mask = read_nifti_labels(item.mask)
    else:
        planes = [_plane(path, "image") for path in files]
        for path, plane in zip(files, planes):
            if plane.shape[1:] != planes[0].shape[1:]:
                raise DataError(path, f"size {plane.shape[1:]} differs from {files[0].name}'s {planes[0].shape[1:]}",
                                "shape_mismatch")
        image = np.concatenate(planes)[None].astype(np.float32)
        label = _plane(item.mask, "label")
        if not all(np.array_equal(label[0], c) for c in label[1:]):
            raise DataError(item.mask, "colour label map: save one class value per pixel (grey or palette)", "invalid")
        mask, spacing = as_labels(label[:1], item.mask), (1.0, 1.0, 1.0)
    if image.shape[1] != n_channels:
        raise DataError(item.image, f"{image.shape[1]} channels in {len(files)} file(s), dataset.json "
                        f"declares {n_channels} in channel_names", "invalid")
    expected = (image.shape[0], *image.shape[2:])
    if mask.shape != expected:
        raise DataError(item.mask, f"label shape {mask.shape} does not match image shape {expected} of "
                        f"{item.image.name} (slices, rows, cols)", "shape_mismatch")
    return Volume(image, mask, spacing)


def nnunet_layout(path: str | os.PathLike) -> FileLayout:
    """The :class:`FileLayout` (registry importer, checker walk) of one nnU-Net v2 raw dataset folder.

    Only ``imagesTr``/``labelsTr`` are read: they are nnU-Net's training cases (``imagesTs`` has no labels).
    """
    folder = Path(path)
    meta = _dataset_json(folder)
    n_classes = len(_class_names(meta, folder / DATASET_JSON))
    reader = partial(_read_nnunet_item, ending=meta["file_ending"], n_channels=len(_channel_names(meta)))
    return FileLayout(partial(_nnunet_items, meta=meta), reader, n_classes)


def read_nnunet(path: str | os.PathLike, name: str | None = None) -> tuple[DatasetInfo, Iterator[Case]]:
    """Read an nnU-Net v2 raw dataset: its :class:`DatasetInfo` and its training cases, one :class:`Case` each.

    Cases are float32 (S, C, H, W) native intensities (channel files stacked by index), uint8 masks
    checked against ``labels``, spacing from the NIfTI header; ``patient_id`` is the case id, or the
    original patient id when the folder was written by :func:`export_nnunet`. ``name`` defaults to
    ``nnunet_<dataset name>``. A missing or broken file raises one :class:`DataError` naming it.
    """
    folder = Path(path)
    info = nnunet_info(folder, name)
    return info, nnunet_layout(folder)(folder)


def register_nnunet_dataset(path: str | os.PathLike, name: str | None = None, subdir: str | None = None) -> DatasetInfo:
    """Register an nnU-Net v2 raw dataset so ``iter_cases(name)`` (and training configs) can read it.

    ``subdir`` (under the data root) defaults to ``nnUNet_raw/<folder name>``.
    """
    info = nnunet_info(Path(path), name, subdir)
    register_dataset(info)(nnunet_layout(path))
    return info


# --- writing --------------------------------------------------------------------------------------


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
