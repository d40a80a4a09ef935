"""Paired 2-D image and mask files (PNG, JPEG, TIFF): the layout of most Kaggle-style datasets.

A mask sits in a separate folder under the image's relative name (``Imgs/12.jpg`` -> ``GT/12.png``) or
beside it with a suffix (``scan_7.tif`` -> ``scan_7_mask.tif``); a patient's slices are ordered by the
number that ends the file name. A palette PNG already stores class indices, a 0/255 mask becomes 0/1.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ._io import FileLayout, Item, Volume, as_labels, reading, require_mask
from .errors import DataError
from .registry import register_dataset
from .types import Case, DatasetInfo


def _read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.array(im)  # mode "P" gives palette indices, not colours


# tifffile reads what PIL cannot (16-bit multi-sample, float, multi-page TIFF)
READERS: dict[str, Callable[[Path], np.ndarray]] = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp"), _read_pil),
    **dict.fromkeys((".tif", ".tiff"), tifffile.imread),
}
_TRAILING_NUMBER = re.compile(r"(\d+)$")


def read_image_file(path: Path) -> np.ndarray:
    """Pixels of one 2-D image file, through the reader registered for its suffix."""
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(path, f"unsupported file type {path.suffix!r}; known: {sorted(READERS)}", "invalid")
    with reading(path, "image file"):
        return reader(path)


def _patient_id(rel: Path, rule: str | None, image: Path) -> str:
    """The patient of image ``rel`` (relative to the image folder) under ``rule``."""
    if rule in (None, "stem"):  # every image is its own patient
        return rel.stem
    if rule == "folder":  # one folder per patient (LGG)
        return rel.parent.name or rel.stem
    match = re.search(rule, rel.stem)  # any other rule is a regex whose first group is the id
    if match is None or not match.groups():
        raise DataError(image, f"file name does not match patient_rule {rule!r} (needs one group)", "invalid")
    return match[1]


def _files(folder: Path) -> list[Path]:
    # hidden files skipped: macOS leaves "._name.png" resource forks in archives
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in READERS and not p.name.startswith("."))


def _by_stem(files: list[Path], folder: Path) -> dict[Path, Path]:
    return {p.relative_to(folder).with_suffix(""): p for p in files}


def paired_items(images_dir: Path, masks_dir: Path | None = None, mask_suffix: str = "_mask",
                 patient_rule: str | None = None, *, group: str = "", patient_prefix: str = "") -> list[Item]:
    """One item per image file, with the path its mask has (or should have)."""
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise DataError(images_dir, "image folder does not exist", "missing_file")
    files = _files(images_dir)
    if masks_dir is None:  # masks beside the images, told apart by their suffix
        images = [p for p in files if not p.stem.endswith(mask_suffix)]
        masks_root, masks = images_dir, _by_stem([p for p in files if p.stem.endswith(mask_suffix)], images_dir)
    else:
        masks_root = Path(masks_dir)
        if not masks_root.is_dir():
            raise DataError(masks_root, "mask folder does not exist", "missing_file")
        images, masks, mask_suffix = files, _by_stem(_files(masks_root), masks_root), ""

    # a missing mask is reported under the file extension the other masks use
    common = Counter(p.suffix for p in masks.values()).most_common(1)
    items: list[Item] = []
    unnumbered: Counter[str] = Counter()
    for image in images:
        rel = image.relative_to(images_dir)
        key = rel.with_name(rel.stem + mask_suffix)
        patient = patient_prefix + _patient_id(rel, patient_rule, image)
        number = _TRAILING_NUMBER.search(rel.stem)
        index = int(number[1]) if number else unnumbered[patient]  # no number in the name: keep name order
        unnumbered[patient] += not number
        ext = common[0][0] if common else image.suffix
        mask = masks.get(key, masks_root / f"{key}{ext}")
        items.append(Item(patient, image, mask, group, index))
    return items


def _channels_first(pixels: np.ndarray, path: Path) -> np.ndarray:
    if pixels.size == 0 or pixels.ndim < 2:
        raise DataError(path, f"holds no image (shape {pixels.shape}): an empty or damaged image file", "unreadable")
    if pixels.ndim == 2:
        return pixels[None]
    if pixels.ndim == 3 and pixels.shape[-1] <= 4:  # (H, W, C) as PIL and most TIFFs give it
        return pixels.transpose(2, 0, 1)
    if pixels.ndim == 3 and pixels.shape[0] <= 4:  # (C, H, W) planar TIFF
        return pixels
    raise DataError(path, f"cannot tell the channel axis of an image with shape {pixels.shape}", "invalid")


def _grayscale(image: np.ndarray) -> np.ndarray:
    if image.shape[0] < 3:
        return image[:1]
    r, g, b = image[:3]  # alpha, if any, is dropped; weights are ITU-R 601, as PIL's "L" mode
    return (0.299 * r + 0.587 * g + 0.114 * b)[None]


def _labels(pixels: np.ndarray, path: Path, mapping: dict[int, int] | None) -> np.ndarray:
    if pixels.ndim == 3:  # RGB(A) masks usually repeat one grey value in every channel
        if not all(np.array_equal(pixels[..., 0], pixels[..., c]) for c in range(1, pixels.shape[-1])):
            raise DataError(path, "colour mask with different channels; give mask_mapping or save indices", "invalid")
        pixels = pixels[..., 0]
    values, inverse = np.unique(pixels, return_inverse=True)
    if mapping is None:
        if values.max(initial=0) == 255 and set(values.tolist()) <= {0, 255}:
            mapping = {0: 0, 255: 1}  # binary mask saved as black/white
        else:
            return as_labels(pixels, path)
    unknown = [v for v in values.tolist() if v not in mapping]
    if unknown:
        raise DataError(path, f"mask values {unknown} are not in mask_mapping {mapping}", "bad_labels")
    return as_labels(np.array([mapping[v] for v in values.tolist()])[inverse].reshape(pixels.shape), path)


def read_paired_item(item: Item, mask_mapping: dict[int, int] | None = None, grayscale: bool = False) -> Volume:
    """One image file and its mask file as a single-slice volume: image (1, C, H, W), mask (1, H, W)."""
    require_mask(item)
    image = _channels_first(read_image_file(item.image), item.image).astype(np.float32)
    if grayscale:
        image = _grayscale(image)
    mask = _labels(read_image_file(item.mask), item.mask, mask_mapping)
    if mask.shape != image.shape[1:]:
        raise DataError(item.mask, f"mask shape {mask.shape} differs from image shape {image.shape[1:]} of "
                        f"{item.image.name}", "shape_mismatch")
    return Volume(image[None], mask[None])


def paired_layout(masks_dir: str | Path | None = None, mask_suffix: str = "_mask",
                  patient_rule: str | None = None, mask_mapping: dict[int, int] | None = None,
                  grayscale: bool = False, num_classes: int | None = None) -> FileLayout:
    """The :class:`FileLayout` of a paired folder; the folder itself is the root it is called with."""
    return FileLayout(
        partial(paired_items, masks_dir=masks_dir, mask_suffix=mask_suffix, patient_rule=patient_rule),
        partial(read_paired_item, mask_mapping=mask_mapping, grayscale=grayscale), num_classes)


def read_paired_folder(images_dir: str | Path, masks_dir: str | Path | None = None,
                       mask_suffix: str = "_mask", patient_rule: str | None = None,
                       mask_mapping: dict[int, int] | None = None, grayscale: bool = False) -> Iterator[Case]:
    """Read 2-D image/mask pairs under ``images_dir`` (searched recursively) as patient cases.

    ``masks_dir=None``: masks beside the images, named ``<stem><mask_suffix>.<ext>``. ``patient_rule``:
    ``"stem"`` (each image), ``"folder"`` (the parent folder) or a regex whose first group, searched in
    the file stem, is the id. ``mask_mapping``: pixel value -> class. Spacing is unknown: (1, 1, 1).
    """
    layout = paired_layout(masks_dir, mask_suffix, patient_rule, mask_mapping, grayscale)
    return layout(Path(images_dir))


# --- registered datasets ------------------------------------------------------------------------

LGG = DatasetInfo(
    name="lgg", modality="MRI", class_names=("background", "abnormality"),
    channel_names=("pre-contrast", "FLAIR", "post-contrast"), licence="CC BY-NC-SA 4.0",
    citation=(
        "Buda et al., 'Association of genomic subtypes of lower-grade gliomas with shape features "
        "automatically extracted by a deep learning algorithm', Computers in Biology and Medicine "
        "109 (2019); images from TCIA, TCGA-LGG collection."
    ),
    url="https://www.kaggle.com/datasets/mateuszbuda/lgg-mri-segmentation",
    description=(
        "Lower-grade glioma brain MRI (TCGA-LGG), 256 x 256 slices with 3 channels (pre-contrast, "
        "FLAIR, post-contrast; a missing sequence is replaced by FLAIR) and a binary FLAIR "
        "abnormality mask; one folder per patient."
    ),
    subdir="lgg-mri-segmentation/kaggle_3m", patient_count=110,
)

_COVID_COMMON = {
    "modality": "CT", "channel_names": ("CT",), "licence": "non-commercial research and education use only",
    "citation": (
        "Fan et al., 'Inf-Net: Automatic COVID-19 Lung Infection Segmentation from CT Images', "
        "IEEE TMI 39(8):2626-2637 (2020); slices from the COVID-19 CT segmentation dataset of "
        "medicalsegmentation.com (Italian Society of Medical and Interventional Radiology)."
    ),
    "url": "https://github.com/DengPingFan/Inf-Net", "subdir": "covid19-ct-semiseg",
    # no patient ids are published: each of the 50 + 48 slices counts as its own "patient",
    # although they come from about 40 people, so a split by image can leak a person across sets
    "patient_count": 98,
}

COVID_CT = DatasetInfo(
    name="covid_ct",
    class_names=("background", "infection"),
    description="COVID-SemiSeg labelled axial CT slices (8-bit) with binary lung infection masks.",
    **_COVID_COMMON,
)

COVID_CT_MULTICLASS = DatasetInfo(
    name="covid_ct_multiclass",
    class_names=("background", "ground-glass", "consolidation"),
    description="COVID-SemiSeg labelled axial CT slices (8-bit) with ground-glass and consolidation masks.",
    **_COVID_COMMON,
)

# (images, masks) folders of the official train and test parts
_COVID_PARTS = {
    COVID_CT.name: {
        "train": ("TrainingSet/LungInfection-Train/Doctor-label/Imgs", "TrainingSet/LungInfection-Train/Doctor-label/GT"),
        "test": ("TestingSet/LungInfection-Test/Imgs", "TestingSet/LungInfection-Test/GT"),
    },
    COVID_CT_MULTICLASS.name: {
        "train": ("TrainingSet/MultiClassInfection-Train/Imgs", "TrainingSet/MultiClassInfection-Train/GT"),
        "test": ("TestingSet/MultiClassInfection-Test/Imgs", "TestingSet/MultiClassInfection-Test/GT"),
    },
}


def _covid_items(root: Path, name: str) -> list[Item]:
    """Items of both official parts; ids are ``train_<n>`` / ``test_<n>`` and ``group`` the part."""
    return [item for part, (images, masks) in _COVID_PARTS[name].items()
            for item in paired_items(root / images, root / masks, group=part, patient_prefix=f"{part}_")]


register_dataset(LGG)(paired_layout(patient_rule="folder", num_classes=LGG.num_classes))
for _info in (COVID_CT, COVID_CT_MULTICLASS):
    register_dataset(_info)(
        FileLayout(partial(_covid_items, name=_info.name), partial(read_paired_item, grayscale=True), _info.num_classes)
    )
