"""Teaching losses agree with segmentation_models_pytorch.losses and with hand computations."""

from __future__ import annotations

import math

import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses._functional import (
    focal_loss_with_logits,
    softmax_focal_loss_with_logits,
)

from medseg_tutorial.losses import (
    LOSSES,
    MODES,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    DiceBCELoss,
    DiceCELoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    TverskyLoss,
    build_loss,
    losses_for_mode,
    soft_counts,
)

ATOL = 1e-5
K = 4
IGNORE = 255


def make_batch(mode: str, seed: int = 0, shape=(3, 12, 10), ignore: bool = False, absent_class: bool = True):
    """Random logits and a target for ``mode``. Multiclass leaves the last class out of the batch
    (``absent_class``) so the smp rule "absent classes contribute 0" is exercised."""
    g = torch.Generator().manual_seed(seed)
    n, *spatial = shape
    channels = 1 if mode == "binary" else K
    logits = 3 * torch.randn(n, channels, *spatial, generator=g)
    if mode == "binary":
        target = torch.randint(0, 2, (n, *spatial), generator=g)
    elif mode == "multiclass":
        target = torch.randint(0, K - 1 if absent_class else K, (n, *spatial), generator=g)
    else:
        target = torch.randint(0, 2, (n, K, *spatial), generator=g)
    if ignore:
        target = target.masked_fill(torch.rand(target.shape, generator=g) < 0.2, IGNORE)
    return logits, target


# ---------------------------------------------------------------------------------------------
# Numerical agreement with smp
# ---------------------------------------------------------------------------------------------

REGION_CASES = [
    # (our class, smp class, kwargs shared by both)
    (DiceLoss, smp.losses.DiceLoss, {}),
    (DiceLoss, smp.losses.DiceLoss, {"smooth": 1.0}),
    (DiceLoss, smp.losses.DiceLoss, {"log_loss": True}),
    (DiceLoss, smp.losses.DiceLoss, {"eps": 1e-3, "smooth": 0.5}),
    (JaccardLoss, smp.losses.JaccardLoss, {}),
    (JaccardLoss, smp.losses.JaccardLoss, {"smooth": 1.0, "log_loss": True}),
    (TverskyLoss, smp.losses.TverskyLoss, {"alpha": 0.3, "beta": 0.7}),
    (TverskyLoss, smp.losses.TverskyLoss, {"alpha": 0.7, "beta": 0.3, "gamma": 2.0, "smooth": 1.0}),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ignore", [False, True])
@pytest.mark.parametrize(("ours", "theirs", "kwargs"), REGION_CASES)
def test_region_losses_match_smp(mode, ignore, ours, theirs, kwargs):
    kw = dict(kwargs, ignore_index=IGNORE if ignore else None)
    for seed in range(3):
        logits, target = make_batch(mode, seed, ignore=ignore)
        expected = theirs(mode, **kw)(logits, target)
        got = ours(mode, **kw)(logits, target)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("classes", [[1, 2], [0, 3], [2]])
def test_dice_classes_match_smp(mode, classes):
    logits, target = make_batch(mode, 1)
    expected = smp.losses.DiceLoss(mode, classes=classes)(logits, target)
    torch.testing.assert_close(DiceLoss(mode, classes=classes)(logits, target), expected, atol=ATOL, rtol=0)
    expected = smp.losses.JaccardLoss(mode, classes=classes)(logits, target)
    torch.testing.assert_close(JaccardLoss(mode, classes=classes)(logits, target), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["multiclass", "multilabel"])
@pytest.mark.parametrize("classes", [None, [1, 2, 3]])
def test_class_weights_match_smp(mode, classes):
    logits, target = make_batch(mode, 19)
    weights = [0.1, 1.0, 2.0, 5.0]
    for ours, theirs in ((DiceLoss, smp.losses.DiceLoss), (JaccardLoss, smp.losses.JaccardLoss)):
        expected = theirs(mode, classes=classes, class_weights=weights)(logits, target)
        got = ours(mode, classes=classes, class_weights=weights)(logits, target)
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    expected = smp.losses.TverskyLoss(mode, alpha=0.2, beta=0.8, gamma=2.0, class_weights=weights)(logits, target)
    got = TverskyLoss(mode, alpha=0.2, beta=0.8, gamma=2.0, class_weights=weights)(logits, target)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="class_weights"):
        DiceLoss(mode, class_weights=[1.0, 2.0])(logits, target)


def test_ignore_background_is_classes_without_zero():
    logits, target = make_batch("multiclass", 2, absent_class=False)
    expected = smp.losses.DiceLoss("multiclass", classes=list(range(1, K)))(logits, target)
    got = DiceLoss("multiclass", ignore_background=True)(logits, target)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert not torch.isclose(got, DiceLoss("multiclass")(logits, target))


def test_binary_target_with_channel_axis_and_3d_volumes():
    logits, target = make_batch("binary", 3)
    a = DiceLoss("binary")(logits, target)
    b = DiceLoss("binary")(logits, target[:, None])
    torch.testing.assert_close(a, b)
    # (N, C, D, H, W) volumes
    logits, target = make_batch("multiclass", 4, shape=(2, 3, 6, 5))
    torch.testing.assert_close(
        DiceLoss("multiclass")(logits, target), smp.losses.DiceLoss("multiclass")(logits, target), atol=ATOL, rtol=0
    )


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
@pytest.mark.parametrize(("alpha", "gamma"), [(None, 2.0), (0.25, 2.0), (0.8, 0.5), (None, 0.0)])
@pytest.mark.parametrize("ignore", [False, True])
def test_sigmoid_focal_matches_smp(mode, alpha, gamma, ignore):
    kw = {"alpha": alpha, "gamma": gamma, "ignore_index": IGNORE if ignore else None}
    for seed in range(2):
        logits, target = make_batch(mode, seed, ignore=ignore)
        if mode == "multilabel" and ignore:
            # smp.losses.FocalLoss fails here (IndexError: its per-pixel mask does not fit one channel);
            # compare with smp's functional focal loss on the kept elements instead.
            kept = target != IGNORE
            expected = focal_loss_with_logits(logits[kept], target[kept], gamma=gamma, alpha=alpha)
        else:
            expected = smp.losses.FocalLoss(mode, **kw)(logits, target)
        torch.testing.assert_close(FocalLoss(mode, **kw)(logits, target), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("ignore", [False, True])
def test_one_vs_rest_multiclass_focal_matches_smp(ignore):
    kw = {"alpha": 0.25, "gamma": 2.0, "ignore_index": IGNORE if ignore else None}
    logits, target = make_batch("multiclass", 5, ignore=ignore)
    expected = smp.losses.FocalLoss("multiclass", **kw)(logits, target)
    got = FocalLoss("multiclass", use_softmax=False, **kw)(logits, target)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0, 3.0])
def test_softmax_focal_matches_smp_functional(gamma):
    logits, target = make_batch("multiclass", 6)
    expected = softmax_focal_loss_with_logits(logits, target, gamma=gamma)
    torch.testing.assert_close(FocalLoss("multiclass", gamma=gamma)(logits, target), expected, atol=ATOL, rtol=0)


def test_softmax_focal_with_gamma_zero_is_cross_entropy():
    logits, target = make_batch("multiclass", 7, ignore=True)
    got = FocalLoss("multiclass", gamma=0.0, ignore_index=IGNORE)(logits, target)
    torch.testing.assert_close(got, F.cross_entropy(logits, target, ignore_index=IGNORE), atol=ATOL, rtol=0)
    # per-class alpha at gamma = 0: alpha-weighted NLL, averaged over pixels (not over weights)
    alpha = [0.1, 0.2, 0.3, 0.4]
    got = FocalLoss("multiclass", alpha=alpha, gamma=0.0)(*make_batch("multiclass", 8))
    logits, target = make_batch("multiclass", 8)
    expected = F.cross_entropy(logits, target, weight=torch.tensor(alpha), reduction="sum") / target.numel()
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)


def test_focal_downweights_easy_pixels():
    logits, target = make_batch("binary", 9)
    bce = BCEWithLogitsLoss("binary")(logits, target)
    assert FocalLoss("binary", gamma=2.0)(logits, target) < FocalLoss("binary", gamma=0.5)(logits, target) < bce
    torch.testing.assert_close(FocalLoss("binary", gamma=0.0)(logits, target), bce)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_bce_matches_smp_and_torch(mode):
    logits, target = make_batch(mode, 10)
    target_full = target.reshape(logits.shape).float()
    expected = smp.losses.SoftBCEWithLogitsLoss(ignore_index=None)(logits, target_full)
    torch.testing.assert_close(BCEWithLogitsLoss(mode)(logits, target), expected, atol=ATOL, rtol=0)
    pos_weight = 3.0 if mode == "binary" else [1.0, 2.0, 3.0, 4.0]
    pw = torch.tensor(pos_weight).reshape(-1, 1, 1)
    expected = F.binary_cross_entropy_with_logits(logits, target_full, pos_weight=pw)
    torch.testing.assert_close(BCEWithLogitsLoss(mode, pos_weight=pos_weight)(logits, target), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_bce_ignore_index_averages_over_kept_pixels(mode):
    logits, target = make_batch(mode, 11, ignore=True)
    target_full = target.reshape(logits.shape)
    kept = target_full != IGNORE
    got = BCEWithLogitsLoss(mode, ignore_index=IGNORE)(logits, target)
    # torch on the kept pixels only ...
    expected = F.binary_cross_entropy_with_logits(logits[kept], target_full[kept].float())
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    # ... which is smp's *sum* divided by the number of kept pixels (smp's mean divides by all pixels)
    smp_sum = smp.losses.SoftBCEWithLogitsLoss(ignore_index=IGNORE, reduction="sum")(logits, target_full.float())
    torch.testing.assert_close(got, smp_sum / kept.sum(), atol=ATOL, rtol=0)


@pytest.mark.parametrize("ignore", [False, True])
def test_cross_entropy_matches_torch_and_smp(ignore):
    logits, target = make_batch("multiclass", 12, ignore=ignore)
    ii = IGNORE if ignore else None
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE)
    torch.testing.assert_close(CrossEntropyLoss(ignore_index=ii)(logits, target), expected, atol=ATOL, rtol=0)
    weights = [0.5, 1.0, 2.0, 4.0]
    expected = F.cross_entropy(logits, target, weight=torch.tensor(weights), ignore_index=IGNORE)
    got = CrossEntropyLoss(class_weights=weights, ignore_index=ii)(logits, target)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    if not ignore:
        expected = smp.losses.SoftCrossEntropyLoss(smooth_factor=0.0)(logits, target)
        torch.testing.assert_close(CrossEntropyLoss()(logits, target), expected, atol=ATOL, rtol=0)


def test_combinations_are_weighted_sums():
    logits, target = make_batch("multiclass", 13)
    loss = DiceCELoss("multiclass", dice_weight=0.3, ce_weight=2.0, ignore_background=True)
    expected = 0.3 * DiceLoss("multiclass", ignore_background=True)(logits, target) + 2.0 * F.cross_entropy(
        logits, target
    )
    torch.testing.assert_close(loss(logits, target), expected, atol=ATOL, rtol=0)
    assert set(loss.components(logits, target)) == {"dice", "ce"}
    # class weights (as the trainer passes them) reach the cross-entropy term
    weights = [0.5, 1.0, 2.0, 4.0]
    loss = build_loss("dice_ce", "multiclass", class_weights=weights)
    expected = DiceLoss("multiclass")(logits, target) + F.cross_entropy(logits, target, weight=torch.tensor(weights))
    torch.testing.assert_close(loss(logits, target), expected, atol=ATOL, rtol=0)

    logits, target = make_batch("binary", 14)
    loss = DiceBCELoss("binary", dice_weight=1.0, bce_weight=0.5, smooth=1.0)
    expected = smp.losses.DiceLoss("binary", smooth=1.0)(logits, target) + 0.5 * F.binary_cross_entropy_with_logits(
        logits[:, 0], target.float()
    )
    torch.testing.assert_close(loss(logits, target), expected, atol=ATOL, rtol=0)


# ---------------------------------------------------------------------------------------------
# Hand-made examples
# ---------------------------------------------------------------------------------------------


def perfect_logits(target: torch.Tensor, k: int, scale: float = 30.0) -> torch.Tensor:
    """Multiclass logits that put (almost) all probability on the true class."""
    return scale * (2 * F.one_hot(target, k).movedim(-1, 1).float() - 1)


@pytest.mark.parametrize("cls", [DiceLoss, JaccardLoss, TverskyLoss])
def test_perfect_prediction_gives_zero_and_opposite_gives_one(cls):
    target = torch.tensor([[[0, 1, 1], [2, 2, 0]]])
    assert cls("multiclass")(perfect_logits(target, 3), target).item() == pytest.approx(0.0, abs=1e-6)
    wrong = (target + 1) % 3  # every pixel assigned to another class
    assert cls("multiclass")(perfect_logits(wrong, 3), target).item() == pytest.approx(1.0, abs=1e-6)
    binary = torch.tensor([[[0, 1], [1, 1]]])
    assert cls("binary")(30.0 * (2 * binary[:, None].float() - 1), binary).item() == pytest.approx(0.0, abs=1e-6)


def test_hand_computed_soft_counts():
    # logits 0 -> p = 0.5 everywhere; truth has 2 foreground pixels out of 4:
    # TP = 0.5 + 0.5 = 1, FP = 0.5 + 0.5 = 1, FN = 0.5 + 0.5 = 1
    logits = torch.zeros(1, 1, 2, 2)
    target = torch.tensor([[[1, 1], [0, 0]]])
    tp, fp, fn = soft_counts(torch.full((1, 1, 4), 0.5), target.reshape(1, 1, 4).float())
    assert (tp.item(), fp.item(), fn.item()) == (1.0, 1.0, 1.0)
    assert DiceLoss("binary")(logits, target).item() == pytest.approx(1 - 2 / 4)  # Dice = 2/(2+1+1)
    assert JaccardLoss("binary")(logits, target).item() == pytest.approx(1 - 1 / 3)  # IoU = 1/(1+1+1)
    # Tversky 1/(1 + 0.2*1 + 0.8*1) = 0.5, whatever the split as long as alpha + beta = 1 ...
    assert TverskyLoss("binary", alpha=0.2, beta=0.8)(logits, target).item() == pytest.approx(0.5)
    # ... but with FN > FP, a larger beta (weight of FN) gives a larger loss:
    target = torch.tensor([[[1, 1], [1, 0]]])  # TP = 1.5, FP = 0.5, FN = 1.5
    recall_heavy = TverskyLoss("binary", alpha=0.2, beta=0.8)(logits, target).item()
    precision_heavy = TverskyLoss("binary", alpha=0.8, beta=0.2)(logits, target).item()
    assert recall_heavy == pytest.approx(1 - 1.5 / (1.5 + 0.1 + 1.2))
    assert precision_heavy == pytest.approx(1 - 1.5 / (1.5 + 0.4 + 0.3))
    assert recall_heavy > precision_heavy
    # smooth follows smp: (TP + s) / (TP + FP/2 + FN/2 + s)
    assert DiceLoss("binary", smooth=1.0)(logits, target).item() == pytest.approx(1 - 2.5 / (1.5 + 0.25 + 0.75 + 1))


def test_jaccard_is_dice_over_two_minus_dice():
    logits, target = make_batch("binary", 15)
    d = 1 - DiceLoss("binary")(logits, target)
    j = 1 - JaccardLoss("binary")(logits, target)
    torch.testing.assert_close(j, d / (2 - d), atol=ATOL, rtol=0)


def test_absent_class_contributes_zero_but_counts_in_mean():
    logits, target = make_batch("multiclass", 16)  # class K-1 absent from the whole batch
    all_classes = DiceLoss("multiclass")(logits, target)
    present = DiceLoss("multiclass", classes=list(range(K - 1)))(logits, target)
    torch.testing.assert_close(all_classes, present * (K - 1) / K)


def test_hand_cross_entropy_and_bce():
    logits = torch.tensor([[[[2.0]], [[0.0]], [[-1.0]]]])  # one pixel, 3 classes
    target = torch.tensor([[[0]]])
    expected = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    assert CrossEntropyLoss()(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # BCE of logit 0 is log 2 whatever the label
    assert BCEWithLogitsLoss("binary")(torch.zeros(1, 1, 2, 2), torch.tensor([[[0, 1], [1, 0]]])).item() == (
        pytest.approx(math.log(2))
    )


# ---------------------------------------------------------------------------------------------
# Gradients, registry, validation
# ---------------------------------------------------------------------------------------------

VALID_PAIRS = [(name, mode) for mode in MODES for name in losses_for_mode(mode)]


@pytest.mark.parametrize(("name", "mode"), VALID_PAIRS)
def test_gradients_flow(name, mode):
    logits, target = make_batch(mode, 17)
    logits.requires_grad_(True)
    loss = build_loss(name, mode)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


def test_registry_modes():
    assert set(LOSSES) == {"bce", "ce", "dice", "jaccard", "focal", "tversky", "dice_bce", "dice_ce"}
    assert losses_for_mode("binary") == ["bce", "dice", "jaccard", "focal", "tversky", "dice_bce"]
    assert losses_for_mode("multiclass") == ["ce", "dice", "jaccard", "focal", "tversky", "dice_ce"]
    assert isinstance(build_loss("dice", "multilabel", smooth=1.0), DiceLoss)
    assert build_loss("tversky", "binary", alpha=0.3, beta=0.7).beta == 0.7


@pytest.mark.parametrize(
    ("name", "mode"),
    [("ce", "binary"), ("ce", "multilabel"), ("bce", "multiclass"), ("dice_ce", "binary"), ("dice_bce", "multiclass")],
)
def test_build_loss_rejects_wrong_mode(name, mode):
    with pytest.raises(ValueError, match="does not support mode"):
        build_loss(name, mode)


def test_invalid_arguments():
    with pytest.raises(KeyError, match="unknown loss 'lovasz'"):
        build_loss("lovasz", "binary")
    with pytest.raises(ValueError, match="unknown mode"):
        build_loss("dice", "multi-class")
    with pytest.raises(ValueError, match="binary"):
        DiceLoss("binary", classes=[0])
    with pytest.raises(ValueError, match="binary"):
        DiceLoss("binary", class_weights=[1.0])
    with pytest.raises(ValueError, match="multiclass"):
        DiceLoss("multilabel", ignore_background=True)
    with pytest.raises(ValueError, match="either"):
        DiceLoss("multiclass", classes=[1], ignore_background=True)
    with pytest.raises(ValueError, match="per class"):
        FocalLoss("multiclass", alpha=0.25)
    with pytest.raises(ValueError, match="1 channel"):
        DiceLoss("binary")(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long))
    logits, target = make_batch("multiclass", 18)
    with pytest.raises(ValueError, match="label 7"):
        DiceLoss("multiclass")(logits, target.masked_fill(target == 0, 7))
    with pytest.raises(ValueError, match="label 7"):
        CrossEntropyLoss()(logits, target.masked_fill(target == 0, 7))
