"""Exercise checkers: right answers pass, the classic mistakes fail with a useful message."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from medseg_tutorial.exercises import (
    CheckResult,
    check_confusion,
    check_dice,
    check_inflate_kernel,
    check_iou,
    check_patient_split,
    check_softmax_decode,
    check_stack_context,
)

# ---------------------------------------------------------------------------------------------
# Student answers, right and wrong
# ---------------------------------------------------------------------------------------------


def dice_right(pred, target):
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else 2 * (pred & target).sum() / total


def dice_nan_when_empty(pred, target):
    pred, target = pred.astype(int), target.astype(int)
    return 2 * (pred * target).sum() / (pred.sum() + target.sum())  # 0/0 -> nan (accepted)


def dice_is_iou(pred, target):
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    union = (pred | target).sum()
    return 1.0 if union == 0 else (pred & target).sum() / union


def dice_without_factor_2(pred, target):
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    total = pred.sum() + target.sum()
    return 1.0 if total == 0 else (pred & target).sum() / total


def dice_with_eps(pred, target):
    return 2 * (pred * target).sum() / (pred.sum() + target.sum() + 1e-7)


def dice_bool_plus(pred, target):
    total = (pred + target).sum()  # a logical OR for boolean arrays
    return 1.0 if total == 0 else 2 * (pred * target).sum() / total


def iou_right(pred, target):
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    union = (pred | target).sum()
    return float("nan") if union == 0 else (pred & target).sum() / union


def iou_is_precision(pred, target):
    pred, target = np.asarray(pred, bool), np.asarray(target, bool)
    return 1.0 if pred.sum() == 0 else (pred & target).sum() / pred.sum()


def confusion_right(pred, target, num_classes):
    pred, target = np.asarray(pred), np.asarray(target)
    tp = np.array([np.sum((pred == c) & (target == c)) for c in range(num_classes)])
    fp = np.array([np.sum((pred == c) & (target != c)) for c in range(num_classes)])
    fn = np.array([np.sum((pred != c) & (target == c)) for c in range(num_classes)])
    return tp, fp, fn, pred.size - tp - fp - fn


def confusion_torch(pred, target, num_classes):
    tp, fp, fn, tn = confusion_right(pred, target, num_classes)
    return tuple(torch.as_tensor(a) for a in (tp, fp, fn, tn))


def confusion_swapped(pred, target, num_classes):
    tp, fp, fn, tn = confusion_right(pred, target, num_classes)
    return tp, fn, fp, tn


def split_right(patient_ids, fractions, seed):
    patients = sorted(set(np.asarray(patient_ids).tolist()))
    random.Random(seed).shuffle(patients)
    n_train = round(fractions[0] * len(patients))
    n_val = round(fractions[1] * len(patients))
    return patients[:n_train], patients[n_train : n_train + n_val], patients[n_train + n_val :]


def split_slices_then_dedupe(patient_ids, fractions, seed):
    """The classic leak: shuffle and cut the *slice* list, then report the patients of each part."""
    ids = list(np.asarray(patient_ids).tolist())
    random.Random(seed).shuffle(ids)
    a = round(fractions[0] * len(ids))
    b = a + round(fractions[1] * len(ids))
    return sorted(set(ids[:a])), sorted(set(ids[a:b])), sorted(set(ids[b:]))


def split_forgets_leftovers(patient_ids, fractions, seed):
    patients = sorted(set(np.asarray(patient_ids).tolist()))
    random.Random(seed).shuffle(patients)
    n_train = int(fractions[0] * len(patients))
    n_val = int(fractions[1] * len(patients))
    n_test = int(fractions[2] * len(patients))
    return patients[:n_train], patients[n_train : n_train + n_val], patients[n_train + n_val : n_train + n_val + n_test]


def split_ignores_seed(patient_ids, fractions, seed):
    return split_right(patient_ids, fractions, 0)


def split_unseeded(patient_ids, fractions, seed):
    return split_right(patient_ids, fractions, random.random())


def decode_right(logits):
    return torch.softmax(logits, dim=1).argmax(dim=1)


def decode_numpy(logits):
    return np.argmax(logits.numpy(), axis=1)


def decode_sigmoid(logits):
    return (torch.sigmoid(logits) > 0.5).long()


def decode_naive_exp(logits):
    e = logits.exp()
    return (e / e.sum(dim=1, keepdim=True)).argmax(dim=1)


def decode_last_axis(logits):
    return logits.argmax(dim=-1)


def crashes(*args):
    raise RuntimeError("not implemented yet")


# ---------------------------------------------------------------------------------------------
# Chapter 10: I3D kernels and 2.5-D input
# ---------------------------------------------------------------------------------------------


def inflate_right(weight, depth):
    return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / depth


def inflate_numpy(weight, depth):
    return np.repeat(np.asarray(weight)[:, :, None], depth, axis=2) / depth


def inflate_not_divided(weight, depth):
    return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1)


def inflate_centre(weight, depth):
    out = torch.zeros(*weight.shape[:2], depth, *weight.shape[2:])
    out[:, :, depth // 2] = weight
    return out


def inflate_by_height(weight, depth):
    return weight.unsqueeze(2).repeat(1, 1, depth, 1, 1) / weight.shape[2]


def inflate_last_axis(weight, depth):
    return weight.unsqueeze(-1).repeat(1, 1, 1, 1, depth) / depth


def context_right(slices, k):
    n = len(slices)
    neighbours = np.clip(np.arange(n)[:, None] + np.arange(-k, k + 1)[None, :], 0, n - 1)
    return slices[neighbours].reshape(n, -1, *slices.shape[2:])


def context_torch_loop(slices, k):
    x = torch.as_tensor(slices)
    n = len(x)
    return torch.stack([torch.cat([x[min(max(s + j, 0), n - 1)] for j in range(-k, k + 1)]) for s in range(n)])


def context_wraps(slices, k):
    return np.concatenate([np.roll(slices, k - j, axis=0) for j in range(2 * k + 1)], axis=1)


def context_zero_padded(slices, k):
    zeros = np.zeros((k, *slices.shape[1:]), slices.dtype)
    padded = np.concatenate([zeros, slices, zeros])
    return np.concatenate([padded[j : j + len(slices)] for j in range(2 * k + 1)], axis=1)


def context_channel_major(slices, k):
    n, c = slices.shape[:2]
    neighbours = np.clip(np.arange(n)[:, None] + np.arange(-k, k + 1)[None, :], 0, n - 1)
    return np.concatenate([slices[neighbours[:, j], ch][:, None] for ch in range(c) for j in range(2 * k + 1)], axis=1)


def context_reversed(slices, k):
    n = len(slices)
    neighbours = np.clip(np.arange(n)[:, None] + np.arange(k, -k - 1, -1)[None, :], 0, n - 1)
    return slices[neighbours].reshape(n, -1, *slices.shape[2:])


CHAPTER_10_MISTAKES = [
    (check_inflate_kernel, inflate_not_divided, "W / depth"),
    (check_inflate_kernel, inflate_centre, "'centre' inflation"),
    (check_inflate_kernel, inflate_by_height, "not by its height"),
    (check_inflate_kernel, inflate_last_axis, "depth axis is dimension 2"),
    (check_stack_context, context_wraps, "does not wrap around"),
    (check_stack_context, context_zero_padded, "instead of padding with zeros"),
    (check_stack_context, context_channel_major, "keep each neighbour's C channels together"),
    (check_stack_context, context_reversed, "not the reverse"),
]


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "student"),
    [
        (check_dice, dice_right),
        (check_dice, dice_nan_when_empty),
        (check_iou, iou_right),
        (check_confusion, confusion_right),
        (check_confusion, confusion_torch),
        (check_patient_split, split_right),
        (check_softmax_decode, decode_right),
        (check_softmax_decode, decode_numpy),
        (check_inflate_kernel, inflate_right),
        (check_inflate_kernel, inflate_numpy),
        (check_stack_context, context_right),
        (check_stack_context, context_torch_loop),
    ],
)
def test_correct_answers_pass(check, student):
    result = check(student)
    assert isinstance(result, CheckResult)
    assert result.passed, str(result)
    assert bool(result)
    assert result.messages[0].startswith("✓") and "correct on" in result.messages[0]
    assert len(result.messages) == 1


@pytest.mark.parametrize(
    ("check", "student", "expected_in_message"),
    [
        (check_dice, dice_is_iou, "IoU"),
        (check_dice, dice_without_factor_2, "factor 2"),
        (check_dice, dice_with_eps, "both masks are empty"),
        (check_dice, dice_bool_plus, "logical OR"),
        (check_iou, dice_right, "your value is the Dice"),
        (check_iou, iou_is_precision, "precision"),
        (check_confusion, confusion_swapped, "swapped"),
        (check_patient_split, split_slices_then_dedupe, "leakage"),
        (check_patient_split, split_forgets_leftovers, "cover every patient"),
        (check_patient_split, split_ignores_seed, "same split"),
        (check_patient_split, split_unseeded, "same seed gave two different splits"),
        (check_softmax_decode, decode_sigmoid, "multilabel"),
        (check_softmax_decode, decode_naive_exp, "overflows"),
        (check_softmax_decode, decode_last_axis, "class axis"),
        *CHAPTER_10_MISTAKES,
    ],
)
def test_typical_mistakes_fail_with_a_message(check, student, expected_in_message):
    result = check(student)
    assert not result.passed
    assert not bool(result)
    assert result.messages[0].startswith("✗")
    text = str(result)
    assert expected_in_message in text, text


def test_failure_message_shows_input_expected_and_got():
    text = str(check_dice(dice_is_iou))
    assert "case 'partial overlap'" in text
    assert "pred=[[1,1,0],[0,1,0]]" in text and "target=[[1,0,0],[1,1,0]]" in text
    assert "expected 0.6667, got 0.5" in text


@pytest.mark.parametrize(
    "check", [check_dice, check_iou, check_confusion, check_patient_split, check_softmax_decode]
)
def test_crashes_are_reported_not_raised(check):
    result = check(crashes)
    assert not result.passed
    assert "RuntimeError: not implemented yet" in str(result)


def test_wrong_return_types_are_reported():
    assert "expected a number" in str(check_dice(lambda p, t: None))
    assert "Hint" not in str(check_dice(lambda p, t: 0.5))  # a constant matches no known mistake
    assert "expected 4 arrays" in str(check_confusion(lambda p, t, k: (1, 2)))
    assert "expected (train, val, test)" in str(check_patient_split(lambda ids, f, s: 3))
    assert "expected shape" in str(check_softmax_decode(lambda x: x))


def test_student_cannot_corrupt_the_reference_by_mutating_inputs():
    def mutating(pred, target):
        value = dice_right(pred, target)
        pred[...] = 0
        target[...] = 1
        return value

    assert check_dice(mutating).passed


def test_markdown_and_repr():
    good = check_iou(iou_right)
    assert good._repr_markdown_().startswith("**✓ check_iou: correct on")
    assert repr(good) == str(good) == good.messages[0]
    bad = check_confusion(confusion_swapped)
    md = bad._repr_markdown_()
    assert md.startswith("**✗ check_confusion:")
    assert "\n- case '" in md and "\n- Hint:" in md
    assert CheckResult(True, ["ok"]).name == ""


@pytest.mark.parametrize(("check", "student", "expected_in_message"), CHAPTER_10_MISTAKES)
def test_chapter_10_mistakes_get_exactly_their_hint(check, student, expected_in_message):
    result = check(student)
    assert sum(line.startswith("Hint:") for line in result.messages) == 1, str(result)  # the one mistake made


@pytest.mark.parametrize("check", [check_inflate_kernel, check_stack_context])
def test_chapter_10_crashes_and_missing_returns_are_reported(check):
    assert "RuntimeError: not implemented yet" in str(check(crashes))
    assert "got None" in str(check(lambda *args: None))
    assert "expected shape" in str(check(lambda x, n: np.zeros(3)))
