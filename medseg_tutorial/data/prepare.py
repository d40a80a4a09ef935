"""Turn a registered dataset into a cached :class:`SliceTable` of normalised, equally sized 2-D slices.

``prepare_dataset("msd_hippocampus")`` reads every case once, normalises intensities, resizes the
slices, selects empty slices, and stores the result as one ``.npz`` file in
``<cache dir>/prepared/``. The file name carries a hash of everything that shapes the result (the
parameters, the source folder and the code of this data package), so changing any of them prepares
afresh, and the second call with the same arguments loads the file without touching the raw data.

The cache is written to a temporary file and then renamed, so an interrupted run never leaves a
half-written cache behind; a damaged cache file is detected, reported with a warning and rebuilt.

Storage format. Images are stored as float16 in an *uncompressed* ``.npz``. Measured on MSD
Hippocampus at 128 x 128 (9270 slices, 2 CPU cores): float32 uncompressed 760 MB, loads in 0.7 s;
float16 uncompressed 456 MB, 0.9 s; zlib-compressed float32 394 MB, 5.7 s (26 s to write);
compressed float16 191 MB, 3.4 s. float16 keeps about 3 significant digits: the error is at most
2**-11 of a value, i.e. < 0.0005 on [0, 1] intensities (an eighth of an 8-bit grey level) and
< 0.004 on z-scores below 8. Freshly prepared tables go through the same float16 rounding, so a
table is bit-identical whether it was just prepared or loaded from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
import zipfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .._version import __version__
from ..files import atomic_write
from ..paths import cache_dir as _cache_dir
from .preprocess import (
    RESIZE_MODES,
    default_normalizer,
    normalize_case,
    resize_slices,
    resolve_window,
    select_slices,
)
from .registry import dataset_info, dataset_path, iter_cases
from .types import SliceTable

CACHE_FORMAT = 1  # bump when the layout of the .npz changes
_ARRAYS = ("images", "masks", "patient_ids", "slice_index", "spacing")


def _code_version() -> str:
    """Package version plus a hash of the data package's source, so code edits invalidate caches."""
    digest = hashlib.sha256()
    for py in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(py.name.encode())
        digest.update(py.read_bytes())
    return f"{__version__}+{digest.hexdigest()[:12]}"


def _source(name: str, root: str | os.PathLike | None) -> str:
    if not dataset_info(name).subdir:  # generated datasets (the phantom) read nothing
        return f"<generated:{name}>"
    return str(dataset_path(name, root).expanduser().resolve())


def cache_path(name: str, params: dict, source: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the prepared table for ``name`` with ``params`` from ``source`` is (or will be) cached."""
    blob = json.dumps(
        {"name": name, "params": params, "source": source, "code": _code_version(), "format": CACHE_FORMAT},
        sort_keys=True,
    )
    key = hashlib.sha256(blob.encode()).hexdigest()[:16]
    return _cache_dir(cache_dir) / "prepared" / f"{name}-{key}.npz"


def _save(table: SliceTable, path: Path) -> None:
    """Write ``table`` to ``path`` atomically (:func:`medseg_tutorial.files.atomic_write`)."""
    with atomic_write(path) as f:
        # uncompressed: loading is a plain read (timings in the module docstring)
        np.savez(
            f, images=table.images.astype(np.float16), masks=table.masks, patient_ids=table.patient_ids.astype(str),
            slice_index=table.slice_index, spacing=table.spacing, meta=np.array(json.dumps(table.meta)),
        )


def _load(path: Path, name: str) -> SliceTable:
    """Read a cached table; raises ``ValueError`` if the file is damaged or inconsistent."""
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in (*_ARRAYS, "meta") if k not in z.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            arrays = {k: z[k] for k in _ARRAYS}  # reading each array checks its CRC
            arrays["images"] = arrays["images"].astype(np.float32)
            meta = json.loads(str(z["meta"]))
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, json.JSONDecodeError) as err:
        raise ValueError(f"unreadable cache file: {err}") from err
    n = len(arrays["images"])
    if any(len(a) != n for a in arrays.values()) or arrays["images"].ndim != 4 or arrays["masks"].ndim != 3:
        raise ValueError(f"inconsistent array shapes {[a.shape for a in arrays.values()]}")
    if meta.get("dataset") != name:
        raise ValueError(f"cache holds dataset {meta.get('dataset')!r}, expected {name!r}")
    meta["cache"] = {"path": str(path), "loaded_from_cache": True}
    return SliceTable(info=dataset_info(name), meta=meta, **arrays)


def _read_slices(name: str, root: str | os.PathLike | None, normalizer: str, params: dict, crop: tuple[int, int] | None,
                 progress: bool) -> tuple[dict[str, list], int]:
    """Read, check, normalise and resize every case: per-case arrays of the table's fields, and the case count."""
    info = dataset_info(name)
    norm_kw = {"window": tuple(params["window"])} if params["window"] else {}
    parts: dict[str, list] = {k: [] for k in _ARRAYS}
    n_cases = 0
    for case in tqdm(iter_cases(name, root), desc=f"prepare {name}", unit="case", disable=not progress):
        if case.mask is None:
            raise ValueError(f"{name}: case {case.patient_id} ({case.source}) has no mask; only labelled cases can be prepared")
        if case.mask.min() < 0 or case.mask.max() >= info.num_classes:
            raise ValueError(
                f"{name}: case {case.patient_id} ({case.source}) has labels outside 0..{info.num_classes - 1}"
            )
        if case.image.shape[1] != info.in_channels:
            raise ValueError(f"{case.source}: case {case.patient_id} has {case.image.shape[1]} channels, dataset "
                             f"{name!r} has {info.in_channels} ({', '.join(info.channel_names)})")
        case = normalize_case(case, info, normalizer, **norm_kw)
        image, mask, spacing = resize_slices(case.image, case.mask.astype(np.uint8), params["size"],
                                             mode=params["resize_mode"], spacing=case.spacing[1:], crop=crop)
        n = len(image)
        parts["images"].append(image.astype(np.float16))  # the cache's precision, see the module docstring
        parts["masks"].append(mask)
        parts["patient_ids"].append(np.full(n, case.patient_id))
        parts["slice_index"].append(np.asarray(case.slice_index, np.int64))
        parts["spacing"].append(np.tile(np.asarray(spacing, np.float32), (n, 1)))
        n_cases += 1
    return parts, n_cases


def prepare_dataset(
    name: str,
    root: str | os.PathLike | None = None,
    size: tuple[int, int] = (128, 128),
    keep_empty: float = 1.0,
    cache_dir: str | os.PathLike | None = None,
    seed: int = 0,
    resize_mode: str = "letterbox",
    window: str | tuple[float, float] | None = None,
    progress: bool = True,
    rebuild: bool = False,
    crop: tuple[int, int] | None = None,
) -> SliceTable:
    """Prepare dataset ``name`` as a :class:`SliceTable` of normalised ``size`` slices, cached on disk.

    Args:
        name: a registered dataset (see ``list_datasets()``).
        root: data root holding the download layouts (default ``$MEDSEG_DATA_ROOT``).
        size: (H, W) of every slice after :func:`resize_slices` with ``resize_mode``.
        keep_empty: fraction of slices without foreground to keep (all foreground slices are kept).
        cache_dir: cache folder (default ``$MEDSEG_CACHE_DIR`` or the OS cache).
        seed: seeds the choice of empty slices.
        window: CT window, a preset name or ``(level, width)``; only for CT in Hounsfield units.
        progress: show a progress bar while reading cases.
        rebuild: ignore an existing cache file and prepare afresh.
        crop: first centre-crop (or pad) the native slices to ``(H, W)`` pixels, which zooms in on an
            organ in the middle of the field of view (the heart in ACDC) before the resize to ``size``.

    Used in chapters 1, 3, 4, 6, 7 and 8.
    """
    info = dataset_info(name)
    # check cheap arguments now rather than after minutes of reading
    if not 0.0 <= keep_empty <= 1.0:
        raise ValueError(f"keep_empty must be a fraction in [0, 1], got {keep_empty}")
    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {resize_mode!r}; use one of {RESIZE_MODES}")
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"size must be (H, W) with positive sides, got {size}")
    if crop is not None and (len(crop) != 2 or min(crop) < 1):
        raise ValueError(f"crop must be (H, W) with positive sides, got {crop}")
    normalizer = default_normalizer(info)
    if window is not None and normalizer != "ct_window":
        raise ValueError(f"dataset {name!r} ({info.modality}) is not CT in Hounsfield units; drop `window`")
    params = {
        "size": [int(size[0]), int(size[1])],
        "keep_empty": float(keep_empty),
        "seed": int(seed),
        "resize_mode": resize_mode,
        "normalizer": normalizer,
        "window": list(resolve_window(window)) if normalizer == "ct_window" else None,
    }
    if crop is not None:  # only when set, so that existing caches keep their keys
        params["crop"] = [int(crop[0]), int(crop[1])]
    source = _source(name, root)
    path = cache_path(name, params, source, cache_dir)
    if path.exists() and not rebuild:
        try:
            return _load(path, name)
        except ValueError as err:
            warnings.warn(f"prepared cache {path} is damaged ({err}); rebuilding it", RuntimeWarning, stacklevel=2)
            path.unlink(missing_ok=True)

    start = time.perf_counter()
    parts, n_cases = _read_slices(name, root, normalizer, params, crop, progress)
    if n_cases == 0:
        raise ValueError(f"{name}: no cases found under {source}")
    arrays = {k: np.concatenate(parts.pop(k)) for k in _ARRAYS}
    keep, stats = select_slices(arrays["masks"], keep_empty, seed)
    if len(keep) < len(arrays["masks"]):
        arrays = {k: v[keep] for k, v in arrays.items()}
    arrays["images"] = arrays["images"].astype(np.float32)
    arrays["patient_ids"] = arrays["patient_ids"].astype(str)

    meta = {
        "dataset": name,
        "params": params,
        "source": source,
        "counts": {"cases": n_cases, "patients": len(np.unique(arrays["patient_ids"])), **stats},
        "package_version": __version__,
        "code_version": _code_version(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "prepare_seconds": round(time.perf_counter() - start, 3),
        "cache_format": CACHE_FORMAT,
    }
    table = SliceTable(info=info, meta=meta, **arrays)
    _save(table, path)
    table.meta["cache"] = {"path": str(path), "loaded_from_cache": False}
    return table
