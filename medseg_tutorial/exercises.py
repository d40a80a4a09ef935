"""Checkers for the book's exercises: run a student's function and say whether it is right.

Each ``check_*`` function calls the student's function on a handful of cases (including the
edge cases that usually go wrong), compares with the reference in this package and returns a
:class:`CheckResult`. A wrong answer or a crash never raises: it is reported, with the failing
input, the expected and the obtained value, and a hint when the mistake is a common one.

>>> check_dice(lambda p, t: 2 * (p * t).sum() / (p.sum() + t.sum()))  # doctest: +SKIP
✓ check_dice: correct on 9 cases
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from medseg_tutorial.activations import decode
from medseg_tutorial.metrics import confusion_counts, dice_from_counts, iou_from_counts

__all__ = [
    "check_confusion",
    "check_dice",
    "check_inflate_kernel",
    "check_iou",
    "check_patient_split",
    "check_softmax_decode",
    "check_stack_context",
]


@dataclass
class CheckResult:
    """Outcome of a check: ``passed`` and human-readable ``messages`` (first one is the verdict)."""

    passed: bool
    messages: list[str] = field(default_factory=list)
    name: str = ""

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return "\n".join(self.messages)

    def __repr__(self) -> str:
        return str(self)

    def _repr_markdown_(self) -> str:
        head, *rest = self.messages or [""]
        return "\n".join([f"**{head}**", "", *(f"- {line}" for line in rest)])


# --------------------------------------------------------------------------------------------
# Machinery shared by the checks
# --------------------------------------------------------------------------------------------


@dataclass
class _Case:
    name: str
    args: tuple
    expected: Any


Comparator = Callable[[Any, Any], "str | None"]  # (got, expected) -> problem description or None


MAX_SHOWN = 3  # failing cases spelled out in full; the rest are only counted


def _show(x: Any, limit: int = 20) -> str:
    """Compact one-line rendering of an input or output for a message."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if isinstance(x, np.ndarray):
        if x.size <= limit:
            body = np.array2string(x, separator=",", precision=4, max_line_width=10_000)
            return body.replace("\n", "").replace(" ", "")
        summary = f", {int(x.sum())} nonzero" if x.dtype == bool or np.issubdtype(x.dtype, np.integer) else ""
        if summary and x.dtype != bool and x.max() > 1:
            summary = f", labels {np.unique(x).tolist()[:8]}"
        return f"<array shape={x.shape} dtype={x.dtype}{summary}>"
    if isinstance(x, float | np.floating):
        return f"{float(x):.4g}"
    if isinstance(x, list | tuple) and len(x) > 12:
        return f"{type(x).__name__} of {len(x)}: {list(x[:6])}..."
    return repr(x)


def _run(
    name: str,
    student_fn: Callable,
    cases: Sequence[_Case],
    compare: Comparator,
    arg_names: Sequence[str],
    hints: Sequence[tuple[str, Callable]] = (),
) -> CheckResult:
    """Run every case; collect failures, and the hints whose wrong formula reproduces the student's
    answer on *every* failing case (so that one coincidence does not trigger a misleading hint)."""
    failures: list[str] = []
    wrong_answers: list[tuple[_Case, Any]] = []
    for case in cases:
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):
                warnings.simplefilter("ignore")  # 0/0 -> nan with a RuntimeWarning is an accepted answer
                got = student_fn(*copy.deepcopy(case.args))  # a copy: the student may modify inputs
        except Exception as err:  # report, never raise: a crash is a wrong answer
            failures.append(f"case '{case.name}' raised {type(err).__name__}: {err} (input: {_args(case, arg_names)})")
            continue
        problem = compare(got, case.expected)
        if problem is None:
            continue
        failures.append(f"case '{case.name}': {problem} (input: {_args(case, arg_names)})")
        wrong_answers.append((case, got))
    matched_hints = [
        hint for hint, wrong_fn in hints
        if wrong_answers and all(_reproduces(wrong_fn, case, got, compare) for case, got in wrong_answers)
    ]
    return _result(name, len(cases), failures, matched_hints)


def _result(name: str, total: int, failures: list[str], hints: Sequence[str] = ()) -> CheckResult:
    if not failures:
        return CheckResult(True, [f"✓ {name}: correct on {total} cases"], name)
    lines = [f"✗ {name}: {len(failures)} of {total} cases failed", *failures[:MAX_SHOWN]]
    if len(failures) > MAX_SHOWN:
        more = len(failures) - MAX_SHOWN
        lines.append(f"... and {more} more failing case{'s' if more > 1 else ''}")
    return CheckResult(False, [*lines, *(f"Hint: {h}" for h in hints)], name)


def _args(case: _Case, arg_names: Sequence[str]) -> str:
    return ", ".join(f"{n}={_show(a)}" for n, a in zip(arg_names, case.args))


def _reproduces(wrong_fn: Callable, case: _Case, got: Any, compare: Comparator) -> bool:
    try:
        return compare(got, wrong_fn(*case.args)) is None
    except Exception:
        return False


# --------------------------------------------------------------------------------------------
# Dice and IoU of binary masks
# --------------------------------------------------------------------------------------------


def _binary_counts(pred: np.ndarray, target: np.ndarray) -> tuple[int, int, int, int]:
    tp, fp, fn, tn = confusion_counts(np.asarray(pred).astype(int), np.asarray(target).astype(int), 2)
    return int(tp[1]), int(fp[1]), int(fn[1]), int(tn[1])


def _scalar_compare(got: Any, expected: float) -> str | None:
    try:
        value = float(got)
    except (TypeError, ValueError):
        return f"expected a number, got {_show(got)}"
    if math.isnan(expected):  # both masks empty: 1.0 and NaN are both accepted conventions
        if math.isnan(value) or math.isclose(value, 1.0, abs_tol=1e-9):
            return None
        return f"both masks are empty: expected 1.0 or nan (by convention), got {_show(value)}"
    if math.isclose(value, expected, rel_tol=1e-6, abs_tol=1e-9):
        return None
    return f"expected {_show(expected)}, got {_show(value)}"


def _binary_mask_cases(reference: Callable[[int, int, int], float]) -> list[_Case]:
    rng = np.random.default_rng(7)
    partial_p = np.array([[1, 1, 0], [0, 1, 0]])
    partial_t = np.array([[1, 0, 0], [1, 1, 0]])
    square = np.zeros((6, 6), int)
    square[1:4, 1:4] = 1
    volume_t = (rng.random((4, 8, 8)) < 0.3).astype(int)
    volume_p = np.where(rng.random((4, 8, 8)) < 0.8, volume_t, 1 - volume_t)
    small_t = np.zeros((64, 64), int)
    small_t[30:33, 30:33] = 1
    small_p = np.zeros((64, 64), int)
    small_p[31:35, 31:35] = 1
    pairs = [
        ("partial overlap", partial_p, partial_t),
        ("perfect prediction", square, square.copy()),
        ("no overlap", np.roll(square, 3, axis=1), square),
        ("prediction empty, target not", np.zeros_like(square), square),
        ("target empty, prediction not (false alarm)", square, np.zeros_like(square)),
        ("both empty", np.zeros((3, 3), int), np.zeros((3, 3), int)),
        ("3-D volume", volume_p, volume_t),
        ("small structure in a large image", small_p, small_t),
        ("boolean masks", partial_p.astype(bool), partial_t.astype(bool)),
    ]
    cases = []
    for name, p, t in pairs:
        tp, fp, fn, _ = _binary_counts(p, t)
        cases.append(_Case(name, (p, t), reference(tp, fp, fn)))
    return cases


def _counts_hint(formula: Callable[[int, int, int, int], float]) -> Callable:
    """Wrong formula of the counts -> a function of (pred, target) for hint matching."""

    def wrong(pred: np.ndarray, target: np.ndarray) -> float:
        tp, fp, fn, tn = _binary_counts(pred, target)
        with np.errstate(all="ignore"):
            return float(np.float64(formula(tp, fp, fn, tn)))

    return wrong


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


def _bool_plus_dice(pred: np.ndarray, target: np.ndarray) -> float:
    """The Dice a student gets from ``2 * (p * t).sum() / (p + t).sum()`` on boolean masks."""
    if pred.dtype != bool:
        return math.inf  # matches no finite answer: the hint is only about boolean inputs
    return _ratio(2 * float((pred & target).sum()), float((pred | target).sum()))


def check_dice(student_fn: Callable[[np.ndarray, np.ndarray], float]) -> CheckResult:
    """Check ``student_fn(pred, target) -> float``, the Dice of two binary masks (0/1 arrays of the
    same, any, shape): ``Dice = 2 TP / (2 TP + FP + FN) = 2 |P ∩ T| / (|P| + |T|)``.
    When both masks are empty, either ``1.0`` or ``nan`` is accepted.

    Used in chapters 4 and 8.
    """
    cases = _binary_mask_cases(lambda tp, fp, fn: float(dice_from_counts(tp, fp, fn)))
    hints = [
        ("your value is the IoU, TP / (TP + FP + FN); Dice counts the overlap twice: 2TP / (2TP + FP + FN).",
         _counts_hint(lambda tp, fp, fn, tn: _ratio(tp, tp + fp + fn))),
        ("the factor 2 is missing from the numerator: Dice = 2TP / (2TP + FP + FN), so a perfect "
         "prediction scores 1.", _counts_hint(lambda tp, fp, fn, tn: _ratio(tp, 2 * tp + fp + fn))),
        ("the denominator is |P| + |T| = 2TP + FP + FN; you seem to divide by the union TP + FP + FN.",
         _counts_hint(lambda tp, fp, fn, tn: _ratio(2 * tp, tp + fp + fn))),
        ("background pixels (TN) must not count: Dice only looks at the structure.",
         _counts_hint(lambda tp, fp, fn, tn: _ratio(2 * tp + tn, 2 * tp + fp + fn + tn))),
        ("with an eps in the denominator two empty masks score 0, a failure for a perfect (empty) "
         "prediction; return 1.0 (or nan) when both masks are empty.",
         _counts_hint(lambda tp, fp, fn, tn: 2 * tp / (2 * tp + fp + fn + 1e-7))),
        ("with boolean masks, pred + target is a logical OR (True + True = True); sum each mask "
         "separately or cast to int first.", _bool_plus_dice),
    ]
    return _run("check_dice", student_fn, cases, _scalar_compare, ("pred", "target"), hints)


def check_iou(student_fn: Callable[[np.ndarray, np.ndarray], float]) -> CheckResult:
    """Check ``student_fn(pred, target) -> float``, the IoU (Jaccard) of two binary masks:
    ``IoU = TP / (TP + FP + FN) = |P ∩ T| / |P ∪ T|``. Both empty: ``1.0`` or ``nan`` accepted.

    Used in chapter 4.
    """
    cases = _binary_mask_cases(lambda tp, fp, fn: float(iou_from_counts(tp, fp, fn)))
    hints = [
        ("your value is the Dice, 2TP / (2TP + FP + FN); IoU divides the overlap by the union: "
         "TP / (TP + FP + FN).", _counts_hint(lambda tp, fp, fn, tn: _ratio(2 * tp, 2 * tp + fp + fn))),
        ("your value is the precision TP / (TP + FP): the false negatives are missing.",
         _counts_hint(lambda tp, fp, fn, tn: _ratio(tp, tp + fp))),
        ("your value is the recall TP / (TP + FN): the false positives are missing.",
         _counts_hint(lambda tp, fp, fn, tn: _ratio(tp, tp + fn))),
        ("the union is |P| + |T| - |P ∩ T|; you seem to divide by |P| + |T|.",
         _counts_hint(lambda tp, fp, fn, tn: _ratio(tp, 2 * tp + fp + fn))),
    ]
    return _run("check_iou", student_fn, cases, _scalar_compare, ("pred", "target"), hints)


# --------------------------------------------------------------------------------------------
# Confusion counts per class
# --------------------------------------------------------------------------------------------


def _counts_compare(got: Any, expected: tuple[np.ndarray, ...]) -> str | None:
    try:
        got = tuple(g.detach().cpu().numpy() if isinstance(g, torch.Tensor) else np.asarray(g) for g in got)
    except TypeError:
        return f"expected a tuple (tp, fp, fn, tn), got {_show(got)}"
    if len(got) != 4:
        return f"expected 4 arrays (tp, fp, fn, tn), got {len(got)}"
    for label, g, e in zip(("tp", "fp", "fn", "tn"), got, expected):
        if g.shape != e.shape or not np.array_equal(g, e):
            return f"{label}: expected {_show(e)}, got {_show(g)}"
    return None


def check_confusion(student_fn: Callable[[np.ndarray, np.ndarray, int], tuple]) -> CheckResult:
    """Check ``student_fn(pred, target, num_classes) -> (tp, fp, fn, tn)``, four arrays of length
    ``num_classes`` for integer label maps. For class c: TP = predicted c and truly c; FP = predicted
    c but truly another class; FN = truly c but predicted another class; TN = everything else.

    Used in chapter 4.
    """
    rng = np.random.default_rng(3)
    hand_t = np.array([[0, 1, 1], [2, 2, 0]])
    hand_p = np.array([[0, 1, 0], [2, 1, 1]])
    absent_t = np.array([[0, 0, 1], [1, 0, 0]])
    random_t = rng.integers(0, 4, (10, 12))
    random_p = np.where(rng.random((10, 12)) < 0.7, random_t, rng.integers(0, 4, (10, 12)))
    pairs = [
        ("3 classes by hand", hand_p, hand_t, 3),
        ("binary", (hand_p > 0).astype(int), (hand_t > 0).astype(int), 2),
        ("class 2 absent from both, class 3 only predicted", np.array([[0, 3, 1], [1, 0, 0]]), absent_t, 4),
        ("perfect prediction", hand_t.copy(), hand_t, 3),
        ("3-D volume, 4 classes", np.stack([random_p, random_t]), np.stack([random_t, random_p]), 4),
        ("uint8 masks", random_p.astype(np.uint8), random_t.astype(np.uint8), 4),
    ]
    cases = [_Case(n, (p, t, k), tuple(confusion_counts(p, t, k))) for n, p, t, k in pairs]

    def swapped(p, t, k):
        tp, fp, fn, tn = confusion_counts(p, t, k)
        return tp, fn, fp, tn

    def tn_wrong(p, t, k):
        tp, fp, fn, tn = confusion_counts(p, t, k)
        return tp, fp, fn, np.full_like(tn, np.asarray(p).size) - tp

    hints = [
        ("FP and FN are swapped: a false positive of class c is a pixel *predicted* c that is truly "
         "something else; a false negative is a true c pixel the model missed.", swapped),
        ("TN = all pixels - TP - FP - FN (pixels that are neither predicted nor truly c).", tn_wrong),
    ]
    return _run("check_confusion", student_fn, cases, _counts_compare, ("pred", "target", "num_classes"), hints)


# --------------------------------------------------------------------------------------------
# Patient-level split
# --------------------------------------------------------------------------------------------


def _split_problems(result: Any, patient_ids: Sequence, fractions: Sequence[float]) -> str | None:
    """Leakage and coverage checks of a (train, val, test) split of patient ids."""
    try:
        parts = [list(np.asarray(part).tolist()) for part in result]
    except TypeError:
        return f"expected (train, val, test), got {_show(result)}"
    if len(parts) != 3:
        return f"expected 3 sets (train, val, test), got {len(parts)}"
    names = ("train", "val", "test")
    for name, part in zip(names, parts):
        if len(set(part)) != len(part):
            dup = sorted({p for p in part if part.count(p) > 1}, key=str)[:5]
            return f"{name} lists patients more than once ({dup}): return each patient id once, not slices"
    for i in range(3):
        for j in range(i + 1, 3):
            leaked = set(parts[i]) & set(parts[j])
            if leaked:
                return (f"patients in both {names[i]} and {names[j]}: {sorted(leaked, key=str)[:5]} "
                        "(leakage: slices of one patient are nearly identical)")
    wanted = set(np.asarray(patient_ids).tolist())
    got = set().union(*map(set, parts))
    if got != wanted:
        missing, extra = sorted(wanted - got, key=str)[:5], sorted(got - wanted, key=str)[:5]
        return f"the split must cover every patient exactly once: missing {missing}, unknown {extra}"
    n = len(wanted)
    sizes = [len(p) for p in parts]
    ideal = [f * n for f in fractions]
    if any(abs(s - t) > 1.0 + 1e-9 for s, t in zip(sizes, ideal)):
        return f"set sizes {sizes} are far from fractions {list(fractions)} of {n} patients ({ideal})"
    return None


def check_patient_split(student_fn: Callable[[Sequence, Sequence[float], int], tuple]) -> CheckResult:
    """Check ``student_fn(patient_ids, fractions, seed) -> (train, val, test)``, lists of patient
    ids. ``patient_ids`` may repeat (one entry per slice). The split must put every patient in
    exactly one set, with sizes close to ``fractions``, and be random yet reproducible from ``seed``.

    Used in chapter 3.
    """
    rng = np.random.default_rng(11)
    slices = [f"p{i:02d}" for i in range(12) for _ in range(int(rng.integers(2, 6)))]
    rng.shuffle(slices)
    cases = [
        ("20 patients, 70/15/15", [f"case_{i:03d}" for i in range(20)], (0.7, 0.15, 0.15), 0),
        ("one id per slice (ids repeat)", slices, (0.7, 0.15, 0.15), 1),
        ("10 patients, 60/20/20", [f"P{i}" for i in range(10)], (0.6, 0.2, 0.2), 2),
        ("numpy array of ids", np.array([f"sub-{i}" for i in range(15)]), (0.8, 0.1, 0.1), 3),
        ("no test set", [f"pt{i}" for i in range(8)], (0.75, 0.25, 0.0), 4),
    ]
    failures: list[str] = []
    for name, ids, fractions, seed in cases:
        try:
            result = student_fn(copy.deepcopy(ids), fractions, seed)
        except Exception as err:
            failures.append(f"case '{name}' raised {type(err).__name__}: {err}")
            continue
        problem = _split_problems(result, ids, fractions)
        if problem is not None:
            failures.append(f"case '{name}': {problem} (input: patient_ids={_show(ids)}, fractions={fractions})")
    # Reproducible (same seed, same split) yet random (the seed matters).
    ids = [f"case_{i:03d}" for i in range(30)]
    try:
        runs = [[sorted(map(str, part)) for part in student_fn(list(ids), (0.6, 0.2, 0.2), s)] for s in (5, 5, 6, 7)]
        if runs[0] != runs[1]:
            failures.append("the same seed gave two different splits: seed your random generator")
        elif runs[0] == runs[2] == runs[3]:
            failures.append("seeds 5, 6 and 7 gave the same split: shuffle the patients with the seed")
    except Exception as err:
        failures.append(f"repeated calls raised {type(err).__name__}: {err}")
    return _result("check_patient_split", len(cases) + 1, failures)


# --------------------------------------------------------------------------------------------
# Decoding multiclass logits
# --------------------------------------------------------------------------------------------


def _labels_compare(got: Any, expected: torch.Tensor) -> str | None:
    try:
        got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got)
    except Exception:
        return f"expected a label map, got {_show(got)}"
    exp = expected.numpy()
    if got.shape != exp.shape:
        return f"expected shape {exp.shape} (N, H, W), got shape {got.shape}"
    if not np.array_equal(got, exp):
        return f"expected {_show(exp)}, got {_show(got)}"
    return None


def check_softmax_decode(student_fn: Callable[[torch.Tensor], Any]) -> CheckResult:
    """Check ``student_fn(logits) -> labels``: multiclass logits ``(N, K, H, W)`` to the label map
    ``(N, H, W)`` of the most probable class under the softmax over the class axis.

    Used in chapter 5.
    """
    g = torch.Generator().manual_seed(5)
    hand = torch.tensor([[2.0, -1.0], [1.0, -2.0], [3.0, -3.0]]).reshape(1, 3, 1, 2)
    inputs = [
        ("all logits positive / all negative", hand),
        ("two classes", torch.tensor([[[[0.3, -0.2]], [[-0.1, 0.4]]]])),
        ("batch of 2, 4 classes", 3 * torch.randn(2, 4, 5, 6, generator=g)),
        ("large logits (a naive exp overflows)", 800 * torch.randn(1, 3, 4, 4, generator=g)),
        ("one pixel per image", torch.randn(3, 5, 1, 1, generator=g)),
    ]
    cases = [_Case(name, (x,), decode(x, "multiclass")) for name, x in inputs]
    hints = [
        ("you thresholded each channel (sigmoid > 0.5): that is multilabel decoding. Softmax classes are "
         "mutually exclusive: take the argmax over the class axis.", lambda x: decode(x, "multilabel")),
        ("the class axis is dim=1 of (N, K, H, W).", lambda x: x.argmax(dim=0)),
        ("the class axis is dim=1 of (N, K, H, W), not the last one.", lambda x: x.argmax(dim=-1)),
        ("exp() of a large logit overflows to inf; use torch.softmax (which subtracts the max) or "
         "simply the argmax of the logits: softmax does not change the order.",
         lambda x: (x.exp() / x.exp().sum(1, keepdim=True)).argmax(1)),
    ]
    return _run("check_softmax_decode", student_fn, cases, _labels_compare, ("logits",), hints)


# --------------------------------------------------------------------------------------------
# From slices to volumes: I3D kernels and 2.5-D input (chapter 10)
# --------------------------------------------------------------------------------------------


def _array_compare(got: Any, expected: Any) -> str | None:
    """Same shape and (nearly) the same values; a tensor or an array either way."""
    if got is None:
        return "expected an array, got None (did the function return its result?)"
    try:
        got = np.asarray(got.detach().cpu() if isinstance(got, torch.Tensor) else got, dtype=np.float64)
    except (TypeError, ValueError):
        return f"expected an array, got {_show(got)}"
    expected = np.asarray(expected, dtype=np.float64)
    if got.shape != expected.shape:
        return f"expected shape {expected.shape}, got shape {got.shape}"
    if not np.allclose(got, expected, rtol=1e-5, atol=1e-7):
        return f"values differ by up to {np.abs(got - expected).max():.3g} (expected {_show(expected)}, got {_show(got)})"
    return None


def _i3d_reference(weight: torch.Tensor, depth: int) -> torch.Tensor:
    """The package's I3D kernel: ``inflate`` applied to a conv holding ``weight``."""
    from medseg_tutorial.models.inflate import inflate  # smp and timm load on first use only

    out_channels, in_channels, kh, kw = weight.shape
    conv = torch.nn.Conv2d(in_channels, out_channels, (kh, kw), bias=False)
    with torch.no_grad():
        conv.weight.copy_(weight)
        return inflate(conv, "i3d", depth).weight.detach().clone()


def _centre_kernel(weight: torch.Tensor, depth: int) -> torch.Tensor:
    out = torch.zeros(*weight.shape[:2], depth, *weight.shape[2:])
    out[:, :, depth // 2] = weight
    return out


def check_inflate_kernel(student_fn: Callable[[torch.Tensor, int], Any]) -> CheckResult:
    """Check ``student_fn(weight, depth) -> kernel``: a 2-D kernel ``(out, in, kh, kw)`` inflated the I3D way
    to ``(out, in, depth, kh, kw)``, i.e. repeated ``depth`` times along dimension 2 and divided by ``depth``.

    Used in chapter 10.
    """
    g = torch.Generator().manual_seed(10)
    inputs = [
        ("3 x 3 kernel, depth 3", torch.randn(4, 2, 3, 3, generator=g), 3),
        ("5 x 5 kernel, depth 3 (thinner than wide)", torch.randn(2, 3, 5, 5, generator=g), 3),
        ("3 x 3 kernel, depth 1", torch.randn(3, 1, 3, 3, generator=g), 1),
        ("depthwise 3 x 3 (one input channel per group), depth 5", torch.randn(6, 1, 3, 3, generator=g), 5),
        ("3 x 5 kernel, depth 3", torch.randn(2, 2, 3, 5, generator=g), 3),
    ]
    cases = [_Case(name, (w, d), _i3d_reference(w, d)) for name, w, d in inputs]
    hints = [
        ("each depth slice must be W / depth: without the division a volume of equal slices gets depth times the "
         "2-D response, and the BatchNorm statistics after the layer no longer fit.",
         lambda w, d: w.unsqueeze(2).repeat(1, 1, d, 1, 1)),
        ("that is 'centre' inflation (the 2-D kernel in the middle slice, zeros elsewhere): it too keeps the 2-D "
         "response on a volume of equal slices, but I3D repeats the kernel over the depth and divides by the depth.",
         _centre_kernel),
        ("divide by the depth of the new kernel, not by its height (they differ when depth != kh).",
         lambda w, d: w.unsqueeze(2).repeat(1, 1, d, 1, 1) / w.shape[2]),
        ("the depth axis is dimension 2: (out, in, depth, kh, kw), the layout of torch.nn.Conv3d weights for "
         "(N, C, D, H, W) volumes.", lambda w, d: w.unsqueeze(-1).repeat(1, 1, 1, 1, d) / d),
    ]
    return _run("check_inflate_kernel", student_fn, cases, _array_compare, ("weight", "depth"), hints)


def _context_reference(slices: np.ndarray, k: int) -> np.ndarray:
    from medseg_tutorial.data.preprocess import stack_context

    return stack_context(np.asarray(slices), k)


def _zero_padded_context(slices: np.ndarray, k: int) -> np.ndarray:
    zeros = np.zeros((k, *slices.shape[1:]), slices.dtype)
    padded = np.concatenate([zeros, slices, zeros])
    return np.concatenate([padded[j:j + len(slices)] for j in range(2 * k + 1)], axis=1)


def _channel_major_context(slices: np.ndarray, k: int) -> np.ndarray:
    stacked = _context_reference(slices, k)
    s, c = slices.shape[:2]
    return stacked.reshape(s, 2 * k + 1, c, *slices.shape[2:]).swapaxes(1, 2).reshape(stacked.shape)


def check_stack_context(student_fn: Callable[[np.ndarray, int], Any]) -> CheckResult:
    """Check ``student_fn(slices, k) -> array``: the 2.5-D input of one volume's slices ``(S, C, H, W)``,
    ``(S, (2k + 1) C, H, W)`` with channel ``j * C + c`` of slice ``s`` = channel ``c`` of slice ``s + j - k``,
    the edge slice repeated past either end.

    Used in chapter 10.
    """
    def volume(s: int, c: int) -> np.ndarray:
        return np.arange(s * c * 2 * 3, dtype=np.float32).reshape(s, c, 2, 3)

    inputs = [("5 slices, 1 channel, k = 1", volume(5, 1), 1), ("4 slices, 2 channels, k = 1", volume(4, 2), 1),
              ("3 slices, k = 2 (neighbours past both ends)", volume(3, 1), 2), ("one slice, k = 1", volume(1, 1), 1),
              ("k = 0: the slices themselves", volume(3, 1), 0), ("6 slices, 3 channels, k = 2", volume(6, 3), 2)]
    cases = [_Case(name, (x, k), _context_reference(x, k)) for name, x, k in inputs]
    hints = [
        ("the volume does not wrap around: past the first and the last slice, repeat the edge slice.",
         lambda x, k: np.concatenate([np.roll(x, k - j, axis=0) for j in range(2 * k + 1)], axis=1)),
        ("past either end, repeat the edge slice instead of padding with zeros (0 is the mean intensity of a "
         "z-scored volume, not its background).", _zero_padded_context),
        ("channel j * C + c holds channel c of neighbour j: keep each neighbour's C channels together.",
         _channel_major_context),
        ("channel 0 is the slice before (s - k) and the last channel the slice after (s + k), not the reverse.",
         lambda x, k: _context_reference(x[::-1].copy(), k)[::-1]),
    ]
    return _run("check_stack_context", student_fn, cases, _array_compare, ("slices", "k"), hints)
