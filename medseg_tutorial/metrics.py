"""Evaluation metrics on integer label maps (numpy or torch): Dice, IoU and HD95 per class, image, patient.

Results are numpy. For a binary task use ``num_classes=2``. Confusion counts for class ``c``::

    TP = pixels predicted c that are truly c
    FP = pixels predicted c that are truly something else   (over-segmentation)
    FN = pixels truly c that were predicted something else  (missed structure)
    TN = all the other pixels

    Dice = 2 TP / (2 TP + FP + FN)        IoU = TP / (TP + FP + FN)        Dice = 2 IoU / (1 + IoU)

**Empty policy.** A class absent from both truth and prediction gives 0/0: ``empty_score`` (NaN by
default, left out of means; ``1.0`` counts it as perfect, like ``smp.metrics`` with
``zero_division=1``). A class predicted but absent from the truth scores 0: a false alarm is a failure.

**Per patient, not per slice.** Dice of a patient's pooled slices is not the mean of slice Dices: a
tiny miss on one slice gives that slice Dice 0 but barely changes the volume Dice.
:func:`per_patient_scores` stacks slices into volumes first, as clinical papers report.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from scipy import ndimage

__all__ = ["confusion_counts", "dice_from_counts", "dice_per_class", "hd95", "iou_from_counts",
           "per_image_scores", "per_patient_scores", "summarize_scores"]

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(x: ArrayLike | Sequence) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


class Counts(NamedTuple):
    """Per-class confusion counts; unpack as ``tp, fp, fn, tn = counts``."""

    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    tn: np.ndarray


def _labels(pred: ArrayLike, target: ArrayLike, num_classes: int, ignore_index: int | None):
    """Validated integer arrays ``pred``, ``target`` and the boolean mask of pixels to count."""
    p, t = _to_numpy(pred), _to_numpy(target)
    if p.shape != t.shape:
        raise ValueError(f"pred and target shapes differ: {p.shape} vs {t.shape}")
    if np.issubdtype(p.dtype, np.floating) or np.issubdtype(t.dtype, np.floating):
        # a float map is usually probabilities or logits passed by mistake
        if not (np.array_equal(p, np.round(p)) and np.array_equal(t, np.round(t))):
            raise ValueError("metrics take integer label maps; decode logits/probabilities first")
    p, t = p.astype(np.int64), t.astype(np.int64)
    keep = np.ones(t.shape, bool) if ignore_index is None else t != ignore_index
    for name, a in (("pred", p), ("target", t)):
        bad = keep & ((a < 0) | (a >= num_classes))
        if bad.any():
            raise ValueError(f"{name} contains label {a[bad][0]} outside [0, {num_classes})")
    return p, t, keep


def _counts_from_matrix(cm: np.ndarray) -> Counts:
    """Counts from confusion matrices ``(..., K, K)`` with rows = truth, columns = prediction."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(axis=-2) - tp  # column total (predicted c) minus the correct ones
    fn = cm.sum(axis=-1) - tp  # row total (truly c) minus the found ones
    tn = cm.sum(axis=(-2, -1))[..., None] - tp - fp - fn
    return Counts(tp.copy(), fp, fn, tn)


def confusion_matrix(pred: ArrayLike, target: ArrayLike, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """``(K, K)`` matrix, ``cm[i, j]`` = number of pixels of true class ``i`` predicted as ``j``."""
    p, t, keep = _labels(pred, target, num_classes, ignore_index)
    # Encode each (truth, prediction) pair as one integer and count them all at once.
    pairs = t[keep] * num_classes + p[keep]
    return np.bincount(pairs, minlength=num_classes**2).reshape(num_classes, num_classes)


def confusion_counts(pred: ArrayLike, target: ArrayLike, num_classes: int,
                     ignore_index: int | None = None) -> Counts:
    """``(tp, fp, fn, tn)``, each ``(num_classes,)``, over all pixels: a slice, a volume or a batch.

    Used in chapter 4.
    """
    return _counts_from_matrix(confusion_matrix(pred, target, num_classes, ignore_index))


def confusion_counts_per_image(preds: ArrayLike, targets: ArrayLike, num_classes: int,
                               ignore_index: int | None = None) -> Counts:
    """Counts for each image of a batch ``(N, *spatial)``; each array has shape ``(N, num_classes)``."""
    p, t, keep = _labels(preds, targets, num_classes, ignore_index)
    n, k = p.shape[0], num_classes
    image = np.broadcast_to(np.arange(n).reshape(-1, *([1] * (p.ndim - 1))), p.shape)
    codes = (image * k + t) * k + p  # (image, truth, prediction) -> one integer
    cm = np.bincount(codes[keep], minlength=n * k * k).reshape(n, k, k)
    return _counts_from_matrix(cm)


def _safe_ratio(num: np.ndarray, den: np.ndarray, empty_score: float) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    out = np.full(np.broadcast(num, den).shape, empty_score, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def dice_from_counts(tp, fp, fn, empty_score: float = math.nan) -> np.ndarray:
    """``2TP / (2TP + FP + FN)``; ``empty_score`` where truth and prediction both lack the class.

    Used in chapter 4.
    """
    tp = np.asarray(tp)
    return _safe_ratio(2 * tp, 2 * tp + np.asarray(fp) + np.asarray(fn), empty_score)


def iou_from_counts(tp, fp, fn, empty_score: float = math.nan) -> np.ndarray:
    """``TP / (TP + FP + FN)``; ``empty_score`` where truth and prediction both lack the class.

    Used in chapter 4.
    """
    tp = np.asarray(tp)
    return _safe_ratio(tp, tp + np.asarray(fp) + np.asarray(fn), empty_score)


def dice_per_class(pred: ArrayLike, target: ArrayLike, num_classes: int, empty_score: float = math.nan,
                   ignore_index: int | None = None) -> np.ndarray:
    """Dice of every class (background included, index = label) for one image or volume. Used in chapters 3 and 4."""
    tp, fp, fn, _ = confusion_counts(pred, target, num_classes, ignore_index)
    return dice_from_counts(tp, fp, fn, empty_score)


def iou_per_class(pred: ArrayLike, target: ArrayLike, num_classes: int, empty_score: float = math.nan,
                  ignore_index: int | None = None) -> np.ndarray:
    """IoU (Jaccard) of every class for one image or volume; see :func:`dice_per_class`."""
    tp, fp, fn, _ = confusion_counts(pred, target, num_classes, ignore_index)
    return iou_from_counts(tp, fp, fn, empty_score)


def _surface(mask: np.ndarray) -> np.ndarray:
    """Boundary voxels: in the mask, with a face-neighbour outside it (or on the image border)."""
    structure = ndimage.generate_binary_structure(mask.ndim, 1)
    return mask & ~ndimage.binary_erosion(mask, structure=structure, border_value=0)


def _spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    if spacing is None:
        return (1.0,) * ndim
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != ndim:
        raise ValueError(f"spacing {spacing} has {len(spacing)} entries for a {ndim}-D mask")
    return spacing


def surface_distances(a: ArrayLike, b: ArrayLike, spacing: Sequence[float] | None = None) -> np.ndarray:
    """Distance (in units of ``spacing``, usually mm) from each surface voxel of ``a`` to the
    nearest surface voxel of ``b``. Both masks must be non-empty."""
    a, b = _to_numpy(a).astype(bool), _to_numpy(b).astype(bool)
    # Euclidean distance transform of "not on b's surface": every voxel gets its distance to the
    # closest surface voxel of b; `sampling` makes the steps anisotropic (e.g. 5 mm between slices).
    dist_to_b = ndimage.distance_transform_edt(~_surface(b), sampling=_spacing(spacing, a.ndim))
    return dist_to_b[_surface(a)]


def hausdorff_distance(pred_mask: ArrayLike, true_mask: ArrayLike, spacing: Sequence[float] | None = None,
                       percentile: float = 100.0, one_empty: float = math.inf) -> float:
    """Percentile of the symmetric surface distances between two binary masks (2-D or 3-D).

    Both directions' distances are pooled (100 = Hausdorff distance; 95 = HD95 as in MedPy's
    ``hd95``; MONAI takes the larger of the two directed percentiles, which can be slightly larger).
    Both masks empty -> ``0.0``; exactly one empty -> ``one_empty`` (``inf``: the distance to an empty
    set is undefined; ``math.nan`` drops such cases from means).
    """
    pred, true = _to_numpy(pred_mask).astype(bool), _to_numpy(true_mask).astype(bool)
    if pred.shape != true.shape:
        raise ValueError(f"mask shapes differ: {pred.shape} vs {true.shape}")
    spacing = _spacing(spacing, pred.ndim)
    if not pred.any() and not true.any():
        return 0.0
    if not pred.any() or not true.any():
        return float(one_empty)
    # Crop to the bounding box of both masks (+1 voxel so borders stay borders): distances between
    # the surfaces do not change, but the distance transforms get much cheaper.
    box = ndimage.find_objects((pred | true).astype(np.int8))[0]
    box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in box)
    pred, true = pred[box], true[box]
    distances = np.concatenate([surface_distances(pred, true, spacing), surface_distances(true, pred, spacing)])
    return float(np.percentile(distances, percentile))


def hd95(pred_mask: ArrayLike, true_mask: ArrayLike, spacing: Sequence[float] | None = None,
         one_empty: float = math.inf) -> float:
    """95th percentile Hausdorff distance (:func:`hausdorff_distance`) in mm, or voxels without ``spacing``.

    ``spacing`` is ``(row, col)`` in 2-D, ``(slice, row, col)`` in 3-D. Used in chapter 4.
    """
    return hausdorff_distance(pred_mask, true_mask, spacing, percentile=95.0, one_empty=one_empty)


def _class_columns(classes: np.ndarray, class_names: Sequence[str] | None) -> dict:
    cols = {"class": classes}
    if class_names is not None:
        cols["class_name"] = [class_names[c] for c in classes]
    return cols


def per_image_scores(preds: ArrayLike, targets: ArrayLike, num_classes: int, include_background: bool = False,
                     empty_score: float = math.nan, class_names: Sequence[str] | None = None) -> pd.DataFrame:
    """Dice and IoU of each image ``(N, *spatial)`` and class: columns ``image, class, [class_name], dice,
    iou, tp, fp, fn``. Used in chapter 4.
    """
    tp, fp, fn, _ = confusion_counts_per_image(preds, targets, num_classes)
    classes = np.arange(0 if include_background else 1, num_classes)
    n = tp.shape[0]
    sel = (slice(None), classes)
    return pd.DataFrame({
        "image": np.repeat(np.arange(n), len(classes)),
        **_class_columns(np.tile(classes, n), class_names),
        "dice": dice_from_counts(tp, fp, fn, empty_score)[sel].ravel(),
        "iou": iou_from_counts(tp, fp, fn, empty_score)[sel].ravel(),
        "tp": tp[sel].ravel(),
        "fp": fp[sel].ravel(),
        "fn": fn[sel].ravel(),
    })


def _volume_spacing(spacing: ArrayLike | Sequence[float], rows: np.ndarray,
                    slice_spacing: float | None) -> tuple[float, float, float]:
    """(slice, row, col) spacing of one patient from a global or per-slice spacing."""
    arr = np.asarray(_to_numpy(spacing), dtype=np.float64)
    values = arr[rows[0]] if arr.ndim == 2 else arr  # per-slice table: use the patient's first slice
    if values.shape == (3,):
        return tuple(values.tolist())
    if values.shape == (2,):
        if slice_spacing is None:
            raise ValueError("spacing gives only (row, col); pass slice_spacing (mm between slices) "
                             "for the 3-D HD95")
        return (float(slice_spacing), *values.tolist())
    raise ValueError(f"spacing must be (slice, row, col), (row, col) or one such row per slice, got {arr.shape}")


def per_patient_scores(preds: ArrayLike, targets: ArrayLike, patient_ids: Sequence[str] | np.ndarray,
                       num_classes: int, spacing: ArrayLike | Sequence[float] | None = None,
                       slice_index: Sequence[int] | np.ndarray | None = None,
                       include_background: bool = False, class_names: Sequence[str] | None = None,
                       empty_score: float = math.nan, slice_spacing: float | None = None,
                       one_empty: float = math.inf) -> pd.DataFrame:
    """Dice, IoU and (if ``spacing`` is given) HD95 per patient and class.

    Each patient's slices (``(N, H, W)`` label maps) are sorted by ``slice_index`` (default: array
    order) and stacked into a volume the metrics are computed on. HD95 depends on that order: missing
    slices (e.g. dropped empty ones) are stacked as if contiguous. ``spacing`` in mm: ``(slice, row,
    col)``, ``(N, 3)`` per slice, or in-plane (``(row, col)``, ``(N, 2)`` as ``SliceTable.spacing``)
    with ``slice_spacing``; ``None`` skips HD95 (the slowest part).

    Returns one row per patient x class, patients in order of first appearance: ``patient_id, class,
    [class_name], dice, iou, [hd95], tp, fp, fn``. Used in chapters 4, 5 and 8.
    """
    p, t = _to_numpy(preds), _to_numpy(targets)
    ids = np.asarray(_to_numpy(patient_ids)).astype(str)
    if not (len(p) == len(t) == len(ids)):
        raise ValueError(f"preds, targets and patient_ids lengths differ: {len(p)}, {len(t)}, {len(ids)}")
    order_key = np.arange(len(ids)) if slice_index is None else np.asarray(_to_numpy(slice_index))
    classes = np.arange(0 if include_background else 1, num_classes)

    rows = []
    for patient in dict.fromkeys(ids.tolist()):  # first-appearance order
        idx = np.flatnonzero(ids == patient)
        idx = idx[np.argsort(order_key[idx], kind="stable")]
        vol_pred, vol_true = p[idx], t[idx]
        tp, fp, fn, _ = confusion_counts(vol_pred, vol_true, num_classes)
        dice = dice_from_counts(tp, fp, fn, empty_score)
        iou = iou_from_counts(tp, fp, fn, empty_score)
        vox = None if spacing is None else _volume_spacing(spacing, idx, slice_spacing)
        for c in classes:
            row = {"patient_id": patient, "class": int(c)}
            if class_names is not None:
                row["class_name"] = class_names[c]
            row.update(dice=dice[c], iou=iou[c])
            if vox is not None:
                row["hd95"] = hd95(vol_pred == c, vol_true == c, vox, one_empty=one_empty)
            row.update(tp=int(tp[c]), fp=int(fp[c]), fn=int(fn[c]))
            rows.append(row)
    return pd.DataFrame(rows)


def summarize_scores(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation of each metric per class, plus a final ``"mean"`` row.

    NaN scores are skipped; ``n`` counts the defined Dice values. The last row averages the per-class
    means (macro average); its ``dice_mean`` is also ``result.attrs["mean_dice"]``. An ``inf`` HD95
    makes that class's ``hd95_mean`` infinite, on purpose: it is a failure to report.
    Used in chapters 4 and 8.
    """
    metrics = [m for m in ("dice", "iou", "hd95") if m in df.columns]
    keys = ["class", "class_name"] if "class_name" in df.columns else ["class"]
    grouped = df.groupby(keys, sort=True)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{metric}_{stat}" for metric, stat in out.columns]
    out.insert(0, "n", grouped["dice"].count())
    out = out.reset_index()
    overall = {col: out[col].mean() for col in out.columns if col.endswith("_mean")}
    last = {"class": "mean", **({"class_name": "mean over classes"} if "class_name" in keys else {})}
    out = pd.concat([out.astype({"class": object}), pd.DataFrame([{**last, "n": int(out["n"].sum()), **overall}])],
                    ignore_index=True)
    out.attrs["mean_dice"] = float(overall["dice_mean"])
    return out
