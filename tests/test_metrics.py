"""Dice / IoU / HD95 by hand, against smp.metrics, against brute force, and per patient."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch
from scipy.spatial.distance import cdist

from medseg_tutorial.metrics import (
    confusion_counts,
    confusion_counts_per_image,
    confusion_matrix,
    dice_from_counts,
    dice_per_class,
    hausdorff_distance,
    hd95,
    iou_from_counts,
    iou_per_class,
    per_image_scores,
    per_patient_scores,
    summarize_scores,
    surface_distances,
)

# ---------------------------------------------------------------------------------------------
# Confusion counts, Dice, IoU by hand
# ---------------------------------------------------------------------------------------------

#                     truth           prediction
TARGET = np.array([[0, 1, 1], [2, 2, 0]])
PRED = np.array([[0, 1, 0], [2, 1, 1]])
# class 0: truth at (0,0),(1,2); predicted at (0,0),(0,2)     -> TP 1, FP 1 (0,2), FN 1 (1,2), TN 3
# class 1: truth at (0,1),(0,2); predicted (0,1),(1,1),(1,2)  -> TP 1, FP 2, FN 1, TN 2
# class 2: truth at (1,0),(1,1); predicted (1,0)              -> TP 1, FP 0, FN 1, TN 4


def test_confusion_counts_by_hand():
    tp, fp, fn, tn = confusion_counts(PRED, TARGET, 3)
    np.testing.assert_array_equal(tp, [1, 1, 1])
    np.testing.assert_array_equal(fp, [1, 2, 0])
    np.testing.assert_array_equal(fn, [1, 1, 1])
    np.testing.assert_array_equal(tn, [3, 2, 4])
    cm = confusion_matrix(PRED, TARGET, 3)  # rows = truth, columns = prediction
    np.testing.assert_array_equal(cm, [[1, 1, 0], [1, 1, 0], [0, 1, 1]])
    assert cm.sum() == PRED.size


def test_dice_and_iou_by_hand():
    np.testing.assert_allclose(dice_per_class(PRED, TARGET, 3), [2 / 4, 2 / 5, 2 / 3])
    np.testing.assert_allclose(iou_per_class(PRED, TARGET, 3), [1 / 3, 1 / 4, 1 / 2])
    d, j = dice_per_class(PRED, TARGET, 3), iou_per_class(PRED, TARGET, 3)
    np.testing.assert_allclose(d, 2 * j / (1 + j))


def test_empty_policy():
    target = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 3], [1, 0]])
    # class 2: in neither -> NaN (or empty_score); class 3: predicted only -> 0
    d = dice_per_class(pred, target, 4)
    assert math.isnan(d[2]) and d[3] == 0.0
    assert d[1] == pytest.approx(2 / 3)
    assert dice_per_class(pred, target, 4, empty_score=1.0)[2] == 1.0
    assert math.isnan(iou_per_class(pred, target, 4)[2])
    # class present in truth but never predicted -> 0
    assert dice_per_class(np.zeros_like(target), target, 2)[1] == 0.0
    # NaN is left out of nanmean: the empty class says nothing about quality
    assert np.nanmean(d[1:]) == pytest.approx((2 / 3 + 0.0) / 2)
    np.testing.assert_array_equal(dice_from_counts(0, 0, 0, empty_score=1.0), 1.0)
    assert math.isnan(float(iou_from_counts(0, 0, 0)))


def test_torch_and_numpy_inputs_agree_and_validation():
    a = dice_per_class(torch.tensor(PRED), torch.tensor(TARGET), 3)
    np.testing.assert_array_equal(a, dice_per_class(PRED, TARGET, 3))
    assert isinstance(a, np.ndarray)
    # integral floats are accepted (masks saved as float), probabilities are not
    np.testing.assert_array_equal(dice_per_class(PRED.astype(float), TARGET, 3), a)
    with pytest.raises(ValueError, match="integer label maps"):
        dice_per_class(np.full(TARGET.shape, 0.7), TARGET, 3)
    with pytest.raises(ValueError, match="outside"):
        dice_per_class(PRED, TARGET, 2)
    with pytest.raises(ValueError, match="shapes differ"):
        dice_per_class(PRED[:, :2], TARGET, 3)


def test_ignore_index_drops_pixels():
    target = TARGET.copy()
    target[0, 2] = 255
    keep = target != 255
    tp, fp, fn, tn = confusion_counts(PRED, target, 3, ignore_index=255)
    assert (tp + fp + fn + tn).tolist() == [keep.sum()] * 3
    np.testing.assert_array_equal(tp, confusion_counts(PRED[keep], target[keep], 3).tp)


def test_counts_per_image_match_loop():
    rng = np.random.default_rng(0)
    preds, targets = rng.integers(0, 4, (5, 7, 6)), rng.integers(0, 4, (5, 7, 6))
    batched = confusion_counts_per_image(preds, targets, 4)
    for i in range(5):
        single = confusion_counts(preds[i], targets[i], 4)
        for b, s in zip(batched, single):
            np.testing.assert_array_equal(b[i], s)


# ---------------------------------------------------------------------------------------------
# Against smp.metrics
# ---------------------------------------------------------------------------------------------


def random_label_maps(seed: int, n: int = 8, k: int = 4, shape=(16, 16)):
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, k, (n, *shape))
    preds = np.where(rng.random((n, *shape)) < 0.6, targets, rng.integers(0, k, (n, *shape)))
    # make some classes absent from truth and/or prediction to exercise the empty policy
    targets[0][targets[0] == 3] = 0
    preds[0][preds[0] == 3] = 1  # image 0: class 3 in neither
    targets[1][targets[1] == 2] = 0  # image 1: class 2 only predicted
    preds[2][preds[2] == 1] = 0  # image 2: class 1 only in truth
    return preds, targets


@pytest.mark.parametrize("seed", range(4))
def test_per_image_dice_iou_match_smp(seed):
    k = 4
    preds, targets = random_label_maps(seed, k=k)
    stats = smp.metrics.get_stats(torch.from_numpy(preds), torch.from_numpy(targets), mode="multiclass", num_classes=k)
    ours = confusion_counts_per_image(preds, targets, k)
    for a, b in zip(ours, stats):
        np.testing.assert_array_equal(a, b.numpy())
    # smp's zero_division plays the role of our empty_score
    for empty in (1.0, math.nan):
        df = per_image_scores(preds, targets, k, include_background=True, empty_score=empty)
        dice = df["dice"].to_numpy().reshape(len(preds), k)
        iou = df["iou"].to_numpy().reshape(len(preds), k)
        f1 = smp.metrics.f1_score(*stats, reduction="none", zero_division=empty).numpy()
        jac = smp.metrics.iou_score(*stats, reduction="none", zero_division=empty).numpy()
        np.testing.assert_allclose(dice, f1, atol=1e-7, equal_nan=True)
        np.testing.assert_allclose(iou, jac, atol=1e-7, equal_nan=True)
        for i in range(len(preds)):
            np.testing.assert_allclose(dice_per_class(preds[i], targets[i], k, empty), f1[i], atol=1e-7, equal_nan=True)
    assert np.isnan(dice[0, 3]) and dice[1, 2] == 0.0 and dice[2, 1] == 0.0
    # smp's macro-imagewise reduction = mean over images and classes with empty -> 1
    df = per_image_scores(preds, targets, k, include_background=True, empty_score=1.0)
    expected = smp.metrics.f1_score(*stats, reduction="macro-imagewise", zero_division=1.0).item()
    assert df["dice"].mean() == pytest.approx(expected, abs=1e-7)


def test_binary_maps_match_smp_binary_mode():
    preds, targets = random_label_maps(9, k=2)
    stats = smp.metrics.get_stats(
        torch.from_numpy(preds[:, None]), torch.from_numpy(targets[:, None]), mode="binary"
    )
    df = per_image_scores(preds, targets, 2)  # background left out: class 1 only
    np.testing.assert_allclose(df["dice"], smp.metrics.f1_score(*stats).numpy()[:, 0], atol=1e-7)
    np.testing.assert_allclose(df["iou"], smp.metrics.iou_score(*stats).numpy()[:, 0], atol=1e-7)


# ---------------------------------------------------------------------------------------------
# HD95
# ---------------------------------------------------------------------------------------------


def square(shape=(40, 40), top=10, left=10, size=10) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[top : top + size, left : left + size] = True
    return m


def test_hd95_lines_known_distance_and_anisotropy():
    a = np.zeros((30, 30), bool)
    a[10, 5:25] = True
    b = np.roll(a, 3, axis=0)  # every point of each line is exactly 3 rows from the other line
    assert hd95(a, b, spacing=(2.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, b, spacing=(2.0, 0.5)) == pytest.approx(6.0)  # rows are 2 mm apart
    vertical = a.T
    assert hd95(vertical, np.roll(vertical, 3, axis=1), spacing=(2.0, 0.5)) == pytest.approx(1.5)  # cols 0.5 mm
    assert hd95(a, b) == pytest.approx(3.0)  # default spacing: voxel units


def test_hausdorff_of_shifted_squares_and_discs():
    a, b = square(), square(top=13)
    assert hausdorff_distance(a, b, spacing=(2.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, b, spacing=(2.0, 2.0)) == pytest.approx(6.0)
    assert hd95(a, b, spacing=(2.0, 7.0)) == pytest.approx(6.0)  # the shift is along rows only
    assert hd95(a, a, spacing=(2.0, 2.0)) == 0.0
    yy, xx = np.mgrid[:60, :60]
    d1 = (yy - 30) ** 2 + (xx - 30) ** 2 <= 100
    d2 = (yy - 30) ** 2 + (xx - 34) ** 2 <= 100
    assert hausdorff_distance(d1, d2, spacing=(0.5, 0.5)) == pytest.approx(2.0)


def test_hd95_ignores_a_stray_pixel_hausdorff_does_not():
    truth = square(shape=(60, 60))
    pred = truth.copy()
    pred[50, 50] = True  # one false-positive pixel far away
    assert hausdorff_distance(pred, truth) > 30
    assert hd95(pred, truth) == pytest.approx(0.0)


def test_hd95_3d_and_anisotropic_spacing():
    a = np.zeros((12, 20, 20), bool)
    a[2:6, 5:15, 5:15] = True
    b = np.roll(a, 2, axis=0)  # shifted by 2 slices
    assert hausdorff_distance(a, b, spacing=(5.0, 1.0, 1.0)) == pytest.approx(10.0)
    assert hd95(a, b, spacing=(5.0, 1.0, 1.0)) == pytest.approx(10.0)
    assert hausdorff_distance(a, b, spacing=(1.5, 0.7, 0.7)) == pytest.approx(3.0)
    c = np.roll(a, 3, axis=2)  # shifted by 3 columns of 0.8 mm
    assert hausdorff_distance(a, c, spacing=(5.0, 1.0, 0.8)) == pytest.approx(2.4)


def test_hd95_empty_cases():
    empty = np.zeros((10, 10), bool)
    assert hd95(empty, empty) == 0.0
    assert hd95(square((10, 10), 2, 2, 3), empty) == math.inf
    assert hd95(empty, square((10, 10), 2, 2, 3)) == math.inf
    assert math.isnan(hd95(empty, square((10, 10), 2, 2, 3), one_empty=math.nan))
    with pytest.raises(ValueError, match="spacing"):
        hd95(square(), square(), spacing=(1.0, 1.0, 1.0))


def test_masks_touching_the_border():
    truth = np.zeros((20, 20), bool)
    truth[0:5] = True
    pred = np.zeros((20, 20), bool)
    pred[0:7] = True
    assert hausdorff_distance(pred, truth) == pytest.approx(2.0)


def brute_force_hausdorff(a: np.ndarray, b: np.ndarray, spacing, q: float) -> float:
    """Surface = voxel with a face neighbour outside the mask (outside the image counts as outside),
    distances between all pairs of surface voxels."""

    def surface_points(m):
        padded = np.pad(m, 1)
        interior = np.ones_like(m)
        for axis in range(m.ndim):
            for shift in (-1, 1):
                interior &= np.roll(padded, shift, axis=axis)[tuple(slice(1, -1) for _ in range(m.ndim))]
        return np.argwhere(m & ~interior) * np.asarray(spacing)

    pa, pb = surface_points(a), surface_points(b)
    d = cdist(pa, pb)
    return float(np.percentile(np.concatenate([d.min(axis=1), d.min(axis=0)]), q))


@pytest.mark.parametrize("seed", range(4))
def test_hausdorff_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    shape, spacing = ((6, 14, 12), (2.5, 0.8, 1.1)) if seed % 2 else ((24, 20), (1.3, 0.6))
    a = rng.random(shape) < 0.15
    b = rng.random(shape) < 0.15
    a[(slice(1, 4),) * len(shape)] = True  # a solid block so there are interior voxels too
    for q in (95.0, 100.0, 50.0):
        expected = brute_force_hausdorff(a, b, spacing, q)
        assert hausdorff_distance(a, b, spacing, percentile=q) == pytest.approx(expected)
    assert surface_distances(a, b, spacing).min() >= 0


# ---------------------------------------------------------------------------------------------
# Per patient
# ---------------------------------------------------------------------------------------------


def test_per_patient_differs_from_mean_of_slices():
    """A tiny structure missed on one slice: slice Dices (1, 0) average 0.5, the patient Dice is ~1."""
    truth = np.zeros((3, 12, 12), int)
    truth[0, 1:11, 1:11] = 1  # 100 pixels, segmented perfectly
    truth[1, 5, 5] = 1  # 1 pixel, missed
    pred = truth.copy()
    pred[1, 5, 5] = 0
    # slice 2: empty in both -> NaN per slice (left out), 1.0 if empty_score=1 (inflates the mean)
    per_slice = per_image_scores(pred, truth, 2)["dice"].to_numpy()
    np.testing.assert_allclose(per_slice[:2], [1.0, 0.0])
    assert np.isnan(per_slice[2])
    assert np.nanmean(per_slice) == pytest.approx(0.5)
    assert per_image_scores(pred, truth, 2, empty_score=1.0)["dice"].mean() == pytest.approx(2 / 3)

    df = per_patient_scores(pred, truth, ["p1"] * 3, num_classes=2)
    assert len(df) == 1 and df.loc[0, "class"] == 1
    assert df.loc[0, "dice"] == pytest.approx(200 / 201)
    assert df.loc[0, "iou"] == pytest.approx(100 / 101)
    assert (df.loc[0, "tp"], df.loc[0, "fp"], df.loc[0, "fn"]) == (100, 0, 1)
    assert "hd95" not in df.columns  # no spacing -> no HD95


def make_patients(seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.array(["b", "a", "b", "a", "b", "c", "a", "c"])  # interleaved, as after shuffling
    slice_index = np.array([2, 1, 0, 0, 1, 5, 2, 3])
    truth = np.zeros((8, 16, 16), int)
    for i in range(8):
        r, c = rng.integers(2, 8, 2)
        truth[i, r : r + 6, c : c + 6] = 1 + (i % 2)
    pred = np.where(rng.random(truth.shape) < 0.9, truth, rng.integers(0, 3, truth.shape))
    return pred, truth, ids, slice_index


def test_per_patient_stacking_order_and_columns():
    pred, truth, ids, slice_index = make_patients()
    df = per_patient_scores(
        pred, truth, ids, 3, spacing=(3.0, 1.0, 1.0), slice_index=slice_index, class_names=["bg", "lv", "myo"]
    )
    assert df["patient_id"].tolist() == ["b", "b", "a", "a", "c", "c"]  # first-appearance order
    assert list(df.columns) == ["patient_id", "class", "class_name", "dice", "iou", "hd95", "tp", "fp", "fn"]
    assert df["class_name"].tolist() == ["lv", "myo"] * 3
    for patient in "abc":
        rows = np.flatnonzero(ids == patient)
        rows = rows[np.argsort(slice_index[rows])]
        vol_pred, vol_true = pred[rows], truth[rows]
        sub = df[df["patient_id"] == patient]
        np.testing.assert_allclose(sub["dice"], dice_per_class(vol_pred, vol_true, 3)[1:])
        np.testing.assert_allclose(sub["iou"], iou_per_class(vol_pred, vol_true, 3)[1:])
        expected_hd = [hd95(vol_pred == c, vol_true == c, (3.0, 1.0, 1.0)) for c in (1, 2)]
        np.testing.assert_allclose(sub["hd95"], expected_hd)
    with_bg = per_patient_scores(pred, truth, ids, 3, include_background=True)
    assert with_bg["class"].tolist() == [0, 1, 2] * 3


def test_slice_order_matters_for_hd95_only():
    truth = np.zeros((6, 10, 10), int)
    truth[0:2, 2:8, 2:8] = 1  # slices 0, 1
    pred = np.zeros_like(truth)
    pred[1:3, 2:8, 2:8] = 1  # slices 1, 2: one slice off
    order = np.array([0, 3, 4, 5, 1, 2])  # the same patient stored out of order
    ids = ["p"] * 6
    spacing = (4.0, 1.0, 1.0)
    sorted_df = per_patient_scores(pred, truth, ids, 2, spacing=spacing)
    restored = per_patient_scores(pred[order], truth[order], ids, 2, spacing=spacing, slice_index=order)
    scrambled = per_patient_scores(pred[order], truth[order], ids, 2, spacing=spacing)
    pd.testing.assert_frame_equal(sorted_df, restored)
    assert sorted_df.loc[0, "hd95"] == pytest.approx(4.0)  # one slice of 4 mm
    assert scrambled.loc[0, "hd95"] == pytest.approx(16.0)  # slice 0 now sits 4 rows from its neighbour
    assert scrambled.loc[0, "dice"] == pytest.approx(sorted_df.loc[0, "dice"])


def test_per_patient_spacing_forms():
    pred, truth, ids, _ = make_patients(1)
    base = per_patient_scores(pred, truth, ids, 3, spacing=(3.0, 0.5, 0.5))
    per_slice_3 = np.tile([3.0, 0.5, 0.5], (len(ids), 1))
    per_slice_2 = np.tile([0.5, 0.5], (len(ids), 1))  # like SliceTable.spacing
    pd.testing.assert_frame_equal(base, per_patient_scores(pred, truth, ids, 3, spacing=per_slice_3))
    pd.testing.assert_frame_equal(
        base, per_patient_scores(pred, truth, ids, 3, spacing=per_slice_2, slice_spacing=3.0)
    )
    pd.testing.assert_frame_equal(base, per_patient_scores(pred, truth, ids, 3, spacing=(0.5, 0.5), slice_spacing=3.0))
    with pytest.raises(ValueError, match="slice_spacing"):
        per_patient_scores(pred, truth, ids, 3, spacing=per_slice_2)
    with pytest.raises(ValueError, match="lengths differ"):
        per_patient_scores(pred, truth, ids[:-1], 3)
    # torch tensors work as well
    t = per_patient_scores(torch.from_numpy(pred), torch.from_numpy(truth), ids, 3, spacing=(3.0, 0.5, 0.5))
    pd.testing.assert_frame_equal(base, t)


def test_summarize_scores_by_hand():
    df = pd.DataFrame({
        "patient_id": ["a", "a", "b", "b"],
        "class": [1, 2, 1, 2],
        "class_name": ["lv", "myo", "lv", "myo"],
        "dice": [0.8, 1.0, 0.6, np.nan],
        "iou": [0.5, 1.0, 0.3, np.nan],
        "hd95": [2.0, 0.0, 4.0, math.inf],
    })
    out = summarize_scores(df)
    assert out["class"].tolist() == [1, 2, "mean"]
    lv = out.iloc[0]
    assert lv["n"] == 2 and lv["dice_mean"] == pytest.approx(0.7) and lv["dice_std"] == pytest.approx(0.1414214)
    assert lv["hd95_mean"] == pytest.approx(3.0)
    myo = out.iloc[1]
    assert myo["n"] == 1 and myo["dice_mean"] == 1.0 and myo["hd95_mean"] == math.inf
    assert out.iloc[2]["dice_mean"] == pytest.approx(0.85)  # mean of class means
    assert out.attrs["mean_dice"] == pytest.approx(0.85)
    assert out.iloc[2]["class_name"] == "mean over classes"
    # without class names / hd95
    out = summarize_scores(df.drop(columns=["class_name", "hd95"]))
    assert "hd95_mean" not in out.columns and "class_name" not in out.columns
