"""Plumbing shared by the importers and the checker: file items, safe reading of NIfTI and 2-D image
files, stacking slices.

A download layout is a :class:`FileLayout`: list the files as :class:`Item` records, read one into a
:class:`Volume`, stack a patient's items into a :class:`~.types.Case`. Importers and :mod:`.check`
run the same code, so the checker sees exactly what training will read.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import nibabel as nib
import numpy as np
import tifffile
from PIL import Image

from .errors import DataError
from .types import Case


@dataclass(frozen=True)
class Item:
    """One file of a dataset (an image and its mask): a whole volume or a single 2-D slice."""

    patient_id: str
    image: Path
    mask: Path  # equals ``image`` when both arrays live in one file (HDF5)
    group: str = ""  # e.g. ACDC phase "frame01" or the official "train"/"test" part
    slice: int | None = None  # slice number of a single-slice file; None for a whole volume
    extra_masks: tuple[Path, ...] = ()  # more mask files merged into ``mask`` (one file per object instance)
    spacing: tuple[float, float] | None = None  # in-plane (row, col) mm known from outside the file (a CSV)


class Volume(NamedTuple):
    """One item read into memory."""

    image: np.ndarray  # float32 (S, C, H, W)
    mask: np.ndarray  # uint8 (S, H, W)
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)  # (slice, row, col) mm


ReadItem = Callable[[Item], Volume]
ListItems = Callable[[Path], list[Item]]


@contextlib.contextmanager
def reading(path: str | Path, what: str = "file") -> Iterator[None]:
    """Turn any failure while reading ``path`` into a :class:`DataError` that names the file."""
    try:
        yield
    except (DataError, MemoryError):
        raise
    except Exception as exc:  # gzip, HDF5 and PIL errors often omit the file name
        raise DataError(path, f"cannot read {what}: {type(exc).__name__}: {exc}", "unreadable") from exc


def require_file(path: Path, what: str = "file") -> None:
    """Raise a ``missing_file`` :class:`DataError` unless ``path`` is a file."""
    if not path.is_file():
        raise DataError(path, f"{what} does not exist", "missing_file")


def require_mask(item: Item) -> None:
    """Raise a ``missing_mask`` :class:`DataError` (naming the image) unless the mask file exists."""
    require_file(item.image, "image file")
    if not item.mask.is_file():
        raise DataError(item.image, f"no mask for this image (expected {item.mask})", "missing_mask")


def as_labels(values: np.ndarray, path: str | Path) -> np.ndarray:
    """Label array as uint8, refusing fractional, negative or > 255 values."""
    if values.size and (values.min() < 0 or values.max() > 255):
        raise DataError(path, f"label values span {values.min()}..{values.max()}, expected 0..255", "bad_labels")
    if np.issubdtype(values.dtype, np.floating) and not np.array_equal(values, np.round(values)):
        raise DataError(path, "label values are not whole numbers", "bad_labels")
    return values.astype(np.uint8)


def check_labels(mask: np.ndarray, num_classes: int, path: str | Path) -> None:
    """Raise a ``bad_labels`` :class:`DataError` if ``mask`` holds values >= ``num_classes``."""
    if mask.size and mask.max() >= num_classes:
        bad = np.unique(mask[mask >= num_classes]).tolist()
        raise DataError(path, f"label values {bad} outside the {num_classes} declared classes", "bad_labels")


# --- 2-D image files (PNG, JPEG, TIFF, BMP) -------------------------------------------------------


def _read_pil(path: Path, colours: bool) -> np.ndarray:
    with Image.open(path) as im:
        if colours and im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            im = im.convert("RGB")
        return np.array(im)  # mode "P" gives palette indices, not colours


def _read_tiff(path: Path, colours: bool) -> np.ndarray:
    return tifffile.imread(path)


# tifffile reads what PIL cannot (16-bit multi-sample, float, multi-page TIFF)
READERS: dict[str, Callable[[Path, bool], np.ndarray]] = {
    **dict.fromkeys((".png", ".jpg", ".jpeg", ".bmp"), _read_pil),
    **dict.fromkeys((".tif", ".tiff"), _read_tiff),
}


def read_image_file(path: Path, colours: bool = False) -> np.ndarray:
    """Pixels of one 2-D image file, through the reader registered for its suffix.

    A palette PNG gives its indices, which is what a mask's palette holds; ``colours=True`` (for an image to
    segment) gives its colours instead, as RGB, and so for CMYK and other colour spaces.
    """
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        raise DataError(path, f"unsupported file type {path.suffix!r}; known: {sorted(READERS)}", "invalid")
    with reading(path, "image file"):
        return reader(path, colours)


def channels_first(pixels: np.ndarray, path: Path) -> np.ndarray:
    """An image file's pixels as (C, H, W): (H, W) and (H, W, C) as most files give them, (C, H, W) planar TIFF."""
    if pixels.size == 0 or pixels.ndim < 2:
        raise DataError(path, f"holds no image (shape {pixels.shape}): an empty or damaged image file", "unreadable")
    if pixels.ndim == 2:
        return pixels[None]
    if pixels.ndim == 3 and pixels.shape[-1] <= 4:  # (H, W, C) as PIL and most TIFFs give it
        return pixels.transpose(2, 0, 1)
    if pixels.ndim == 3 and pixels.shape[0] <= 4:  # (C, H, W) planar TIFF
        return pixels
    raise DataError(path, f"cannot tell the channel axis of an image with shape {pixels.shape}", "invalid")


def read_image_slice(path: Path) -> np.ndarray:
    """A 2-D image file to segment as float32 (1, C, H, W): one slice, colours kept, alpha not yet dropped."""
    return channels_first(read_image_file(path, colours=True), path).astype(np.float32)[None]


# ITU-R 601 weights, as PIL's "L" mode
LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def luma(image: np.ndarray) -> np.ndarray:
    """Grey (S, 1, H, W) from colour (S, C >= 3, H, W): the ITU-R 601 luma of the first three channels."""
    return np.tensordot(image[:, :3], LUMA, axes=([1], [0]))[:, None]


# --- NIfTI --------------------------------------------------------------------------------------
# NIfTI stores voxels as (x, y, z[, channel]). We slice along z and put rows = y, cols = x, which
# is the order SimpleITK and nnU-Net use, so the official ACDC files and its SSL4MIS HDF5 copy agree.

# A header may claim any shape: more voxels are refused before reading (the book's largest has ~20 M)
MAX_VOXELS = 2_000_000_000


def _nifti(path: Path, what: str) -> nib.Nifti1Image:
    require_file(path, what)
    with reading(path, what):
        img = nib.load(path)
    if len(img.shape) not in (3, 4):
        raise DataError(path, f"{what} has {len(img.shape)} dimensions {img.shape}, expected 3 or 4", "invalid")
    voxels = int(np.prod(img.shape, dtype=np.int64))
    if voxels > MAX_VOXELS:
        raise DataError(path, f"{what} header claims {img.shape} = {voxels:,} voxels, more than the "
                        f"{MAX_VOXELS:,} this reader accepts (a damaged or hostile header?)", "invalid")
    if not str(path).endswith(".gz"):  # uncompressed: the file must hold what the header promises
        needed = int(img.dataobj.offset) + voxels * img.get_data_dtype().itemsize
        if path.stat().st_size < needed:
            raise DataError(path, f"{what} is truncated: the header promises {needed:,} bytes, the file has "
                            f"{path.stat().st_size:,}", "unreadable")
    return img


def read_nifti_image(path: Path) -> tuple[np.ndarray, tuple[float, float, float]]:
    """NIfTI image as float32 (S, C, H, W) plus its (slice, row, col) spacing; 4-D images give channels."""
    img = _nifti(path, "image")
    with reading(path, "image"):
        data = img.get_fdata(dtype=np.float32)  # applies the header's intensity scaling
    data = data[..., None] if data.ndim == 3 else data
    bad = int((~np.isfinite(data)).sum())
    if bad:  # one NaN would turn the whole volume's normalisation into NaN, then silently into zeros
        raise DataError(path, f"image has {bad:,} NaN or infinite voxels", "invalid")
    sx, sy, sz = (float(z) for z in img.header.get_zooms()[:3])
    return np.ascontiguousarray(data.transpose(2, 3, 1, 0)), (sz, sy, sx)


def read_nifti_labels(path: Path) -> np.ndarray:
    """NIfTI label volume as uint8 (S, H, W)."""
    img = _nifti(path, "label")
    if len(img.shape) == 4 and img.shape[3] == 1:  # a trailing singleton axis is harmless
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise DataError(path, f"label volume has shape {img.shape}, expected 3-D", "invalid")
    with reading(path, "label"):
        data = np.asanyarray(img.dataobj)
    return np.ascontiguousarray(as_labels(data, path).transpose(2, 1, 0))


def same_grid(item: Item, image: np.ndarray, mask: np.ndarray, spacing: tuple[float, float, float]) -> Volume:
    """``Volume(image, mask, spacing)`` once the label volume is checked to share the image's grid."""
    expected = (image.shape[0], *image.shape[2:])
    if mask.shape != expected:
        raise DataError(item.mask, f"label shape {mask.shape} does not match image shape {expected} of "
                        f"{item.image.name} (slices, rows, cols)", "shape_mismatch")
    return Volume(image, mask, spacing)


def read_nifti_pair(item: Item) -> Volume:
    """Read an image NIfTI and its label NIfTI (MSD, official ACDC) and check they share a grid."""
    require_mask(item)
    image, spacing = read_nifti_image(item.image)
    return same_grid(item, image, read_nifti_labels(item.mask), spacing)


# --- from items to cases ------------------------------------------------------------------------


def group_items(items: Iterable[Item]) -> dict[tuple[str, str], list[Item]]:
    """Items per (patient, group) in order of first appearance, slices sorted by number."""
    groups: dict[tuple[str, str], list[Item]] = {}
    for item in items:
        groups.setdefault((item.patient_id, item.group), []).append(item)
    for members in groups.values():
        if len(members) > 1 and any(m.slice is None for m in members):
            names = ", ".join(m.image.name for m in members[:3])
            raise DataError(members[0].image.parent, f"one case stored in several volume files: {names}", "duplicate")
        members.sort(key=lambda m: (m.slice, m.image.name))
    return groups


def stack_slices(items: list[Item], volumes: list[Volume]) -> Volume:
    """Concatenate the slices of one case, refusing slices whose shape differs from the first."""
    first = volumes[0].image.shape[1:]
    for item, vol in zip(items, volumes):
        if vol.image.shape[1:] != first:
            raise DataError(item.image, f"slice shape {vol.image.shape[1:]} (channels, rows, cols) differs "
                            f"from {first} of {items[0].image.name} in the same case", "shape_mismatch")
    return Volume(np.concatenate([v.image for v in volumes]), np.concatenate([v.mask for v in volumes]),
                  volumes[0].spacing)


@dataclass(frozen=True)
class FileLayout:
    """A download layout: how to list its files and read one; calling it yields the cases (an importer)."""

    list_items: ListItems
    read_item: ReadItem
    num_classes: int | None = None  # when known, masks are checked against it

    def read(self, item: Item) -> Volume:
        """Read one item and check its labels."""
        vol = self.read_item(item)
        if self.num_classes is not None:
            check_labels(vol.mask, self.num_classes, item.mask)
        return vol

    def __call__(self, root: Path) -> Iterator[Case]:
        # list eagerly so that a wrong root fails at the call, not at the first next()
        return self._cases(group_items(self.list_items(Path(root))))

    def _cases(self, groups: dict[tuple[str, str], list[Item]]) -> Iterator[Case]:
        for (patient_id, group), members in groups.items():
            volumes = [self.read(item) for item in members]
            vol = stack_slices(members, volumes) if len(volumes) > 1 else volumes[0]
            single = len(members) == 1
            source = members[0].image if single else Path(os.path.commonpath([m.image for m in members]))
            slices = None if members[0].slice is None else np.array([m.slice for m in members])
            yield Case(patient_id, vol.image, vol.mask, vol.spacing, slices, str(source), group)
