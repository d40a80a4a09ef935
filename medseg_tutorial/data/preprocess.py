"""Preprocessing of imported cases: intensity normalisation, resizing and empty-slice selection.

* Intensities: normalisers chosen by name (``data.normalizer``) or from the modality: CT in
  Hounsfield units is windowed, 8-bit CT scaled to [0, 1]; MRI has no absolute scale, so it (and any
  other modality) is clipped to its own 0.5-99.5 percentiles and z-scored, channel by channel.
* Size: ``"letterbox"`` keeps the aspect ratio (resize the longest side, then pad), ``"resize"``
  stretches, ``"pad"`` only pads (or centre-crops). Masks are resized nearest-neighbour, and spacing
  follows the resizing so that millimetre metrics (HD95) stay right.
"""

from __future__ import annotations

import dataclasses
import inspect
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..names import did_you_mean
from .types import Case, DatasetInfo

Normalizer = Callable[..., np.ndarray]  # (image (S, C, H, W), **params) -> float32, same shape

# Common CT windows as (level, width) in HU. Soft tissue is the default for abdominal organs.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft_tissue": (40.0, 400.0), "liver": (60.0, 160.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

RESIZE_MODES = ("letterbox", "resize", "pad")

_NORMALIZERS: dict[str, Normalizer] = {}


def register_normalizer(name: str) -> Callable[[Normalizer], Normalizer]:
    """Decorator: register an intensity normaliser under ``name``."""

    def deco(fn: Normalizer) -> Normalizer:
        if name in _NORMALIZERS:
            raise ValueError(f"normaliser {name!r} is already registered")
        _NORMALIZERS[name] = fn
        return fn

    return deco


def list_normalizers() -> list[str]:
    """Names of the registered intensity normalisers."""
    return sorted(_NORMALIZERS)


def resolve_window(window: str | tuple[float, float] | None) -> tuple[float, float]:
    """``None`` (soft tissue), a preset name from :data:`CT_WINDOWS`, or a ``(level, width)`` pair."""
    if window is None:
        return CT_WINDOWS["soft_tissue"]
    if isinstance(window, str):
        try:
            return CT_WINDOWS[window]
        except KeyError:
            raise ValueError(f"unknown CT window {window!r}; presets: {', '.join(CT_WINDOWS)}") from None
    level, width = (float(v) for v in window)
    if width <= 0:
        raise ValueError(f"CT window width must be positive, got {width}")
    return level, width


@register_normalizer("ct_window")
def ct_window(image: np.ndarray, window: str | tuple[float, float] | None = None) -> np.ndarray:
    """Map HU in ``[level - width/2, level + width/2]`` linearly to [0, 1]; clip outside. Used in chapter 3."""
    level, width = resolve_window(window)
    lo = level - width / 2
    return np.clip((image.astype(np.float32) - lo) / width, 0.0, 1.0)


@register_normalizer("scale_8bit")
def scale_8bit(image: np.ndarray) -> np.ndarray:
    """Scale 8-bit intensities (0-255) to [0, 1]; images already in [0, 1] are left as they are."""
    lo, hi = float(image.min()), float(image.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"8-bit image expected (values 0-255), got range [{lo:g}, {hi:g}]")
    # an importer may already have scaled to [0, 1]; dividing again would crush the contrast
    scale = 255.0 if hi > 1.0 else 1.0
    return (image.astype(np.float32) / scale).astype(np.float32)


@register_normalizer("percentile_zscore")
def percentile_zscore(image: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    """Per channel over the whole volume: clip to the ``low``/``high`` percentiles, then z-score.

    Clipping first stops a few hot voxels (flow artefacts, fat) from dominating mean and std.
    Used in chapter 3.
    """
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got ({low}, {high})")
    out = np.empty(image.shape, np.float32)
    for c in range(image.shape[1]):
        v = image[:, c].astype(np.float32)
        p_lo, p_hi = np.percentile(v, [low, high])
        v = np.clip(v, p_lo, p_hi)
        if not np.isfinite(v).all():  # a NaN would make every percentile NaN and the volume zeros
            raise ValueError(f"channel {c} has {int((~np.isfinite(v)).sum())} NaN or infinite voxels")
        std = float(v.std())
        if std <= 1e-8:  # a constant channel (e.g. an empty sequence) becomes zeros instead of NaN
            warnings.warn(f"channel {c} is constant ({float(v.mean()):g}); it normalises to zeros",
                          RuntimeWarning, stacklevel=2)
        out[:, c] = (v - v.mean()) / std if std > 1e-8 else 0.0
    return out


@register_normalizer("minmax")
def minmax(image: np.ndarray) -> np.ndarray:
    """Per channel over the whole volume: map the minimum to 0 and the maximum to 1 (16-bit microscopy, X-ray)."""
    out = np.zeros(image.shape, np.float32)
    for c in range(image.shape[1]):
        v = image[:, c].astype(np.float32)
        lo, hi = float(v.min()), float(v.max())
        if hi > lo:  # a constant channel stays zeros instead of dividing by zero
            out[:, c] = (v - lo) / (hi - lo)
    return out


@register_normalizer("none")
def no_normalization(image: np.ndarray) -> np.ndarray:
    """Intensities as stored (already normalised data), as float32."""
    return image.astype(np.float32)


# the fallback for a modality without a rule of its own: it needs no known intensity range
FALLBACK_NORMALIZER = "percentile_zscore"


def default_normalizer(info: DatasetInfo) -> str:
    """The normaliser when none is named: CT windowed (HU) or scaled (8-bit), else the fallback."""
    if info.modality == "CT":
        return "ct_window" if info.has_raw_hu else "scale_8bit"
    return FALLBACK_NORMALIZER


def check_normalizer(method: str, params: dict | None = None) -> None:
    """Raise ``ValueError`` unless ``method`` is registered and accepts ``params`` (tried on a tiny image)."""
    if method not in _NORMALIZERS:
        raise ValueError(f"unknown normaliser {method!r}{did_you_mean(method, _NORMALIZERS)} "
                         f"(known: {', '.join(list_normalizers())})")
    fn = _NORMALIZERS[method]
    try:
        inspect.signature(fn).bind(None, **(params or {}))
    except TypeError:
        known = list(inspect.signature(fn).parameters)[1:]
        raise ValueError(f"normaliser {method!r} takes no option {sorted(set(params or {}) - set(known))[0]!r} "
                         f"(its options: {', '.join(known) or 'none'})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the probe image is tiny; only a wrong value should fail
            fn(np.linspace(0.0, 1.0, 16, dtype=np.float32).reshape(1, 1, 4, 4), **(params or {}))
    except (TypeError, ValueError) as err:
        raise ValueError(f"normaliser {method!r}: {err}") from None


def normalize_case(case: Case, info: DatasetInfo, method: str | None = None, **params) -> Case:
    """A copy of ``case`` with float32 intensities normalised by ``method`` (default: the modality's)."""
    method = method or default_normalizer(info)
    if method not in _NORMALIZERS:
        raise ValueError(f"unknown normaliser {method!r}; known: {', '.join(list_normalizers())}")
    if "window" in params and method != "ct_window":
        raise ValueError(f"dataset {info.name!r}: a CT window applies only to CT in Hounsfield units "
                         f"(normaliser 'ct_window'), not to {method!r}")
    return dataclasses.replace(case, image=_NORMALIZERS[method](case.image, **params))


def pad_or_crop(arr: np.ndarray, size: tuple[int, int], fill: np.ndarray | float) -> np.ndarray:
    """Centre ``arr`` (..., H, W) in a ``size`` canvas filled with ``fill``; centre-crop what is larger."""
    h, w = arr.shape[-2:]
    out = np.empty((*arr.shape[:-2], *size), arr.dtype)
    out[...] = fill
    ch, cw = min(h, size[0]), min(w, size[1])
    sy, sx = (h - ch) // 2, (w - cw) // 2  # crop offsets in the source
    dy, dx = (size[0] - ch) // 2, (size[1] - cw) // 2  # paste offsets in the canvas
    out[..., dy : dy + ch, dx : dx + cw] = arr[..., sy : sy + ch, sx : sx + cw]
    return out


def _interpolate(image: np.ndarray, mask: np.ndarray | None, size: tuple[int, int]):
    """Bilinear (antialiased) for intensities, nearest for labels."""
    if image.shape[-2:] == tuple(size):
        return image, mask
    img = F.interpolate(torch.from_numpy(np.ascontiguousarray(image, np.float32)), size=size,
                        mode="bilinear", align_corners=False, antialias=True).numpy()
    if mask is None:
        return img, None
    # "nearest-exact" samples pixel centres like bilinear does; plain "nearest" shifts by half a pixel
    m = F.interpolate(torch.from_numpy(np.ascontiguousarray(mask[:, None], np.uint8)), size=size, mode="nearest-exact")
    return img, m[:, 0].numpy().astype(mask.dtype, copy=False)


def resized_shape(hw: tuple[int, int], size: tuple[int, int], mode: str) -> tuple[int, int]:
    """Shape a ``hw`` slice is interpolated to before padding/cropping to ``size`` under ``mode``."""
    h, w = int(hw[0]), int(hw[1])
    if mode == "resize":
        return tuple(size)
    if mode == "letterbox":
        scale = min(size[0] / h, size[1] / w)
        return (min(size[0], max(1, round(h * scale))), min(size[1], max(1, round(w * scale))))
    if mode == "pad":
        return (h, w)
    raise ValueError(f"unknown resize mode {mode!r}; use one of {RESIZE_MODES}")


def resize_slices(
    image: np.ndarray,
    mask: np.ndarray | None,
    size: tuple[int, int],
    mode: str = "letterbox",
    spacing: tuple[float, float] = (1.0, 1.0),
    fill: float | None = None,
    crop: tuple[int, int] | None = None,
) -> tuple[np.ndarray, np.ndarray | None, tuple[float, float]]:
    """Bring slices ``image`` (S, C, H, W) and ``mask`` (S, H, W) to ``size``; spacing becomes (row, col) mm.

    Padding uses ``fill`` for images (default: each channel's minimum, the background after
    normalisation) and 0 for masks. ``crop`` first centre-crops (or pads) the native slices to
    ``(H, W)`` pixels, zooming in on an organ in the middle of the field of view. Used in chapter 10.
    """
    if crop is not None:
        image, mask, spacing = resize_slices(image, mask, crop, mode="pad", spacing=spacing, fill=fill)
    if image.ndim != 4:
        raise ValueError(f"image must be (S, C, H, W), got shape {image.shape}")
    if mask is not None and mask.shape != (image.shape[0], *image.shape[2:]):
        raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    if mask is not None and mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(f"mask labels must lie in 0..255, got [{mask.min()}, {mask.max()}]")
    size = (int(size[0]), int(size[1]))
    if min(size) < 1:
        raise ValueError(f"size must be positive, got {size}")
    h, w = image.shape[-2:]
    new_hw = resized_shape((h, w), size, mode)
    image, mask = _interpolate(image, mask, new_hw)
    # a pixel now covers (old extent / new extent) times as many millimetres
    new_spacing = (float(spacing[0]) * h / new_hw[0], float(spacing[1]) * w / new_hw[1])
    if new_hw != size:
        fills = np.asarray(fill if fill is not None else image.min(axis=(0, 2, 3)), np.float32)
        image = pad_or_crop(image, size, fills.reshape(-1, 1, 1) if fills.ndim else fills)
        if mask is not None:
            mask = pad_or_crop(mask, size, 0)
    return image.astype(np.float32, copy=False), mask, new_spacing


def stack_context(image: np.ndarray, k: int) -> np.ndarray:
    """Slices ``(S, C, H, W)`` of ONE volume -> ``(S, (2k + 1) C, H, W)``: each slice with its ``k`` neighbours.

    Channel ``j * C + c`` of slice ``s`` is channel ``c`` of slice ``s + j - k`` (``j = 0 .. 2k``), so
    the centre block is the slice itself; past the first and last slice the edge slice is repeated.
    With 1-channel MRI and ``k = 1`` the three channels fit an ImageNet first conv as it is. Used in chapter 10.
    """
    if k < 0:
        raise ValueError(f"context must be >= 0 slices, got {k}")
    if k == 0:
        return image
    s, c, h, w = image.shape
    neighbours = np.clip(np.arange(s)[:, None] + np.arange(-k, k + 1)[None, :], 0, s - 1)  # (S, 2k + 1)
    return np.ascontiguousarray(image[neighbours].reshape(s, (2 * k + 1) * c, h, w))


def select_slices(masks: np.ndarray, keep_empty: float = 1.0, seed: int = 0) -> tuple[np.ndarray, dict]:
    """Indices of the slices to keep: all with foreground plus ``keep_empty`` (0..1) of the empty ones.

    ``round(keep_empty * n_empty)`` empty slices are drawn (seeded). Returns ``(sorted indices, stats)``
    with the counts, so a chapter can state exactly what was dropped. Used in chapter 8.
    """
    if not 0.0 <= keep_empty <= 1.0:
        raise ValueError(f"keep_empty must be a fraction in [0, 1], got {keep_empty}")
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    has_fg = masks.reshape(len(masks), -1).any(axis=1)
    fg, empty = np.flatnonzero(has_fg), np.flatnonzero(~has_fg)
    n_keep = round(keep_empty * len(empty))
    kept_empty = np.random.default_rng(seed).choice(empty, size=n_keep, replace=False)
    indices = np.sort(np.concatenate([fg, kept_empty])).astype(np.int64)
    stats = {"slices": len(masks), "foreground": len(fg), "empty": len(empty), "kept_empty": int(n_keep),
             "dropped": len(empty) - int(n_keep), "kept": len(indices), "keep_empty": float(keep_empty)}
    return indices, stats
