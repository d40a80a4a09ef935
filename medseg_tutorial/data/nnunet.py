"""nnU-Net v2 raw datasets: tell them from MSD tasks and read them.

nnU-Net v2 (``documentation/dataset_format.md`` of MIC-DKFZ/nnUNet) keeps a dataset in
``nnUNet_raw/DatasetXXX_Name/``: ``dataset.json`` (``channel_names``, name -> value ``labels``,
``numTraining``, ``file_ending``), ``imagesTr/{case}_{XXXX}{file_ending}`` (one file per channel)
and ``labelsTr/{case}{file_ending}``. An MSD task (:mod:`.msd`) looks alike, but its ``labels`` map
value -> name, ``training`` lists the pairs and a multi-channel image is one 4-D NIfTI file.
Exporting as nnU-Net raw data is a tool: :mod:`medseg_tutorial.tools.nnunet_export`.
"""

from __future__ import annotations

import glob
import json
import os
import re
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from ._io import (
    FileLayout,
    Item,
    Volume,
    as_labels,
    read_image_file,
    read_nifti_image,
    read_nifti_labels,
    reading,
    require_mask,
    same_grid,
)
from .errors import DataError
from .registry import register_dataset
from .types import Case, DatasetInfo

DATASET_JSON = "dataset.json"
SPLIT_FILE = "medseg_split.json"  # nnU-Net's splits_final.json format; it belongs in nnUNet_preprocessed
VOLUME_ENDINGS = (".nii.gz", ".nii")
PLANE_ENDINGS = (".png", ".bmp", ".tif", ".tiff")  # 2-D files, as nnU-Net's NaturalImage2DIO reads them
_CHANNEL_FILE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


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
    """True if ``path`` holds an nnU-Net v2 ``dataset.json`` and ``imagesTr/CASE_XXXX<file_ending>`` files."""
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

    Its listed images must exist under their own names: an nnU-Net v1 task keeps MSD's ``dataset.json``
    but renames the images ``case_0000.nii.gz``, so it is not an MSD task.
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

    Modality and URL come from the ``medseg`` block the export tool adds (else CT when a channel is
    named CT). ``name`` defaults to ``nnunet_<name>``, ``subdir`` to ``nnUNet_raw/<folder>``.
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
    return same_grid(item, image, mask, spacing)


def nnunet_layout(path: str | os.PathLike) -> FileLayout:
    """The :class:`FileLayout` of an nnU-Net v2 raw dataset: ``imagesTr``/``labelsTr`` (no ``imagesTs``)."""
    folder = Path(path)
    meta = _dataset_json(folder)
    n_classes = len(_class_names(meta, folder / DATASET_JSON))
    reader = partial(_read_nnunet_item, ending=meta["file_ending"], n_channels=len(_channel_names(meta)))
    return FileLayout(partial(_nnunet_items, meta=meta), reader, n_classes)


def read_nnunet(path: str | os.PathLike, name: str | None = None) -> tuple[DatasetInfo, Iterator[Case]]:
    """Read an nnU-Net v2 raw dataset: its :class:`DatasetInfo` and its training cases, one :class:`Case` each.

    Channel files are stacked by index, spacing comes from the NIfTI header (1 mm for 2-D files);
    ``patient_id`` is the case id, or the original patient id when the export tool wrote the folder.
    """
    folder = Path(path)
    info = nnunet_info(folder, name)
    return info, nnunet_layout(folder)(folder)


def register_nnunet_dataset(path: str | os.PathLike, name: str | None = None, subdir: str | None = None) -> DatasetInfo:
    """Register an nnU-Net v2 raw dataset so ``iter_cases(name)`` (and training configs) can read it."""
    info = nnunet_info(Path(path), name, subdir)
    register_dataset(info)(nnunet_layout(path))
    return info
