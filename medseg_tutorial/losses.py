"""Segmentation losses, written to be read next to chapter 4.

Every loss takes the raw **logits** of the segmentation head (never probabilities) and a target, in
the modes and shapes of ``segmentation_models_pytorch.losses`` (``*spatial`` is ``(H, W)`` or ``(D, H, W)``):

============  ==============================  ===============================================
mode          logits                          target
============  ==============================  ===============================================
binary        ``(N, 1, *spatial)``            ``(N, *spatial)`` or ``(N, 1, *spatial)`` in {0, 1}
multiclass    ``(N, K, *spatial)``            ``(N, *spatial)`` integers in ``[0, K)``
multilabel    ``(N, K, *spatial)``            ``(N, K, *spatial)`` in {0, 1}
============  ==============================  ===============================================

**Pixel-wise** losses (BCE, cross-entropy, focal) average a per-pixel penalty, so large structures
dominate. **Region** losses (Dice, Jaccard, Tversky) compare soft overlap counts per class, so a small
structure counts as much as a large one; the counts are summed over the *whole batch*, as in smp, so a
class absent from one image but present in another still gets a well-defined score.

The values agree with ``smp.losses`` (``tests/test_losses.py``); where our semantics differ
(``ignore_index`` in BCE, softmax focal loss) the docstring says so.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .names import lookup

__all__ = ["LOSSES", "BCEWithLogitsLoss", "CrossEntropyLoss", "DiceLoss", "FocalLoss", "JaccardLoss",
           "TverskyLoss", "build_loss", "losses_for_mode"]

MODES: tuple[str, ...] = ("binary", "multiclass", "multilabel")


def _check_mode(mode: str, allowed: Sequence[str], loss_name: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}")
    if mode not in allowed:
        raise ValueError(f"{loss_name} does not support mode {mode!r} (supported: {', '.join(allowed)})")


# --- from logits and labels to per-class probability / one-hot maps of shape (N, C, P) -------------


def _probability_maps(logits: Tensor, target: Tensor, mode: str) -> tuple[Tensor, Tensor]:
    """Probabilities ``(N, C, P)``; the target as ``(N, 1, P)`` labels (multiclass) or ``(N, C, P)`` maps."""
    n, k = logits.shape[:2]
    if mode == "binary" and k != 1:
        raise ValueError(f"binary mode expects logits with 1 channel, got shape {tuple(logits.shape)}")
    if mode == "multiclass":
        # Softmax over the class axis: classes are mutually exclusive, probabilities sum to 1 per pixel.
        return torch.softmax(logits, dim=1).reshape(n, k, -1), target.reshape(n, 1, -1)
    # One independent sigmoid per channel: a pixel may belong to several labels at once.
    return torch.sigmoid(logits).reshape(n, k, -1), target.reshape(n, k, -1)


def _drop_ignored(labels: Tensor, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """``labels`` with ignored pixels set to 0, and the mask of the pixels that count."""
    valid = torch.ones_like(labels, dtype=torch.bool) if ignore_index is None else labels != ignore_index
    return labels.where(valid, torch.zeros_like(labels)), valid


def _one_hot(labels: Tensor, num_classes: int) -> Tensor:
    """(N, 1, P) integer labels -> (N, K, P) float one-hot, with a clear error for bad labels."""
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        raise ValueError(
            f"target contains label {lo if lo < 0 else hi} but logits have {num_classes} channels "
            f"(labels must lie in [0, {num_classes})); pass ignore_index for a void label"
        )
    return F.one_hot(labels[:, 0].long(), num_classes).permute(0, 2, 1).float()


def _prepare(logits: Tensor, target: Tensor, mode: str, ignore_index: int | None) -> tuple[Tensor, Tensor]:
    """Probabilities ``p`` and one-hot truth ``y``, both ``(N, C, P)`` with ``P`` pixels per image.

    Ignored pixels get ``p = y = 0`` so they add nothing to TP, FP or FN.
    """
    if target.shape[0] != logits.shape[0]:
        raise ValueError(f"batch sizes differ: logits {tuple(logits.shape)}, target {tuple(target.shape)}")
    probs, labels = _probability_maps(logits, target, mode)
    labels, valid = _drop_ignored(labels, ignore_index)
    onehot = _one_hot(labels, logits.shape[1]) if mode == "multiclass" else labels.to(probs.dtype)
    valid = valid.expand_as(onehot)
    return probs * valid, onehot * valid


def soft_counts(probs: Tensor, onehot: Tensor, dims: tuple[int, ...] = (0, 2)) -> tuple[Tensor, Tensor, Tensor]:
    """Soft true positives, false positives and false negatives per class.

    With probability ``p`` of the class and truth ``y`` in {0, 1} at each pixel: ``TP = sum p * y``,
    ``FP = sum p * (1 - y)``, ``FN = sum (1 - p) * y``; with hard 0/1 predictions these are the ordinary
    confusion counts. ``dims=(0, 2)`` of an ``(N, C, P)`` tensor pools the whole batch, as smp does.
    """
    tp = (probs * onehot).sum(dims)
    fp = (probs * (1 - onehot)).sum(dims)
    fn = ((1 - probs) * onehot).sum(dims)
    return tp, fp, fn


# --- region losses: Tversky, with Dice and Jaccard as special cases ---------------------------------


class TverskyLoss(nn.Module):
    r"""Tversky loss: ``1 - TI`` averaged over classes, with the Tversky index

    .. math:: TI = \frac{TP + s}{TP + \alpha\,FP + \beta\,FN + s}

    ``alpha`` weighs **false positives** (predicted foreground that is truly background) and
    ``beta`` weighs **false negatives** (missed true foreground). ``beta > alpha`` favours recall,
    which helps small structures. ``alpha = beta = 0.5`` is Dice, ``alpha = beta = 1`` is Jaccard.

    The smp conventions: the loss is ``mean(1 - TI) ** gamma`` (focal Tversky); ``smooth`` (``s``)
    gives Dice as ``(2TP + 2s) / (2TP + FP + FN + 2s)``; ``eps`` bounds the denominator;
    ``log_loss`` uses ``-log(TI)``; ``class_weights`` (one per channel) average the classes as
    ``sum(w * loss) / sum(w)``. ``classes`` picks the classes that enter the mean, and
    ``ignore_background`` (multiclass only) is short for ``classes = 1..K-1``; neither, nor
    ``class_weights``, applies to binary mode. ``ignore_index`` pixels are left out of all counts.

    A class with no true pixel in the batch contributes 0 (but still counts in the mean, as in smp):
    with ``smooth = 0`` its index is ``0 / FP = 0`` whatever the prediction, a constant that carries
    no gradient, so zeroing it only makes a perfect prediction score a loss of 0.

    Used in chapter 4.
    """

    modes: ClassVar[tuple[str, ...]] = MODES

    def __init__(
        self,
        mode: str,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        classes: Sequence[int] | None = None,
        ignore_background: bool = False,
        smooth: float = 0.0,
        eps: float = 1e-7,
        log_loss: bool = False,
        ignore_index: int | None = None,
        class_weights: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_mode(mode, self.modes, type(self).__name__)
        if (classes is not None or ignore_background or class_weights is not None) and mode == "binary":
            raise ValueError(
                "binary mode has a single channel: classes / ignore_background / class_weights do not apply"
            )
        if ignore_background and mode != "multiclass":
            raise ValueError("ignore_background applies to multiclass mode only (channel 0 = background)")
        if ignore_background and classes is not None:
            raise ValueError("give either classes or ignore_background, not both")
        self.mode = mode
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.classes = None if classes is None else list(classes)
        self.ignore_background = ignore_background
        self.smooth, self.eps, self.log_loss = smooth, eps, log_loss
        self.ignore_index = ignore_index
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw)

    def extra_repr(self) -> str:
        return (f"mode={self.mode!r}, alpha={self.alpha}, beta={self.beta}, gamma={self.gamma}, "
                f"classes={self.classes}, ignore_background={self.ignore_background}, smooth={self.smooth}, "
                f"log_loss={self.log_loss}, ignore_index={self.ignore_index}")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        probs, onehot = _prepare(logits, target, self.mode, self.ignore_index)
        tp, fp, fn = soft_counts(probs, onehot)
        denominator = tp + self.alpha * fp + self.beta * fn + self.smooth
        score = (tp + self.smooth) / denominator.clamp_min(self.eps)  # the Tversky index of each class
        loss = -torch.log(score.clamp_min(self.eps)) if self.log_loss else 1.0 - score
        present = onehot.sum(dim=(0, 2)) > 0  # classes with at least one true pixel in the batch
        loss = loss * present
        keep: slice | list[int] = slice(None)  # which classes enter the mean
        if self.ignore_background:
            keep = slice(1, None)
        elif self.classes is not None:
            keep = self.classes
        loss = loss[keep]
        if self.class_weights is None:
            return loss.mean() ** self.gamma
        if self.class_weights.numel() != logits.shape[1]:
            raise ValueError(f"{self.class_weights.numel()} class_weights for {logits.shape[1]} channels")
        weights = self.class_weights.to(loss.dtype)[keep]
        return ((loss * weights).sum() / weights.sum()) ** self.gamma


class DiceLoss(TverskyLoss):
    r"""Soft Dice loss ``1 - Dice`` averaged over classes.

    .. math:: Dice = \frac{2\,TP}{2\,TP + FP + FN} = \frac{TP}{TP + \tfrac12 FP + \tfrac12 FN}

    computed on probabilities (soft counts, :func:`soft_counts`) so the loss is differentiable.
    Equals ``smp.losses.DiceLoss``; see :class:`TverskyLoss` for the arguments.
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(mode, alpha=0.5, beta=0.5, **kwargs)


class JaccardLoss(TverskyLoss):
    r"""Soft Jaccard (IoU) loss ``1 - IoU`` averaged over classes.

    .. math:: IoU = \frac{TP}{TP + FP + FN} = \frac{Dice}{2 - Dice}

    Equals ``smp.losses.JaccardLoss``; see :class:`TverskyLoss` for the arguments.
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(mode, alpha=1.0, beta=1.0, **kwargs)


# --- pixel-wise losses ------------------------------------------------------------------------------


def _masked_mean(values: Tensor, valid: Tensor, weights: Tensor | None = None) -> Tensor:
    """Mean of ``values`` over valid pixels (optionally weighted); 0 if nothing is valid."""
    w = valid.to(values.dtype) if weights is None else weights * valid
    return (values * w).sum() / w.sum().clamp_min(torch.finfo(values.dtype).tiny)


class BCEWithLogitsLoss(nn.Module):
    r"""Binary cross-entropy on logits, averaged over pixels (and channels in multilabel mode).

    .. math:: \ell = -\,[\,w_+\,y \log \sigma(x) + (1 - y) \log(1 - \sigma(x))\,]

    ``pos_weight`` (``w_+``, a float or one per channel) weighs positive pixels, e.g. by the
    background/foreground ratio to counter class imbalance. Unlike ``smp.losses.SoftBCEWithLogitsLoss``
    (which zeroes ``ignore_index`` pixels but still divides by *all* pixels) we average over the kept
    pixels only, like ``torch.nn.CrossEntropyLoss``.
    """

    modes: ClassVar[tuple[str, ...]] = ("binary", "multilabel")

    def __init__(
        self, mode: str, pos_weight: float | Sequence[float] | None = None, ignore_index: int | None = None
    ) -> None:
        super().__init__()
        _check_mode(mode, self.modes, type(self).__name__)
        self.mode, self.ignore_index = mode, ignore_index
        pw = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)
        self.register_buffer("pos_weight", pw)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, ignore_index={self.ignore_index}"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        target, valid = _drop_ignored(target.reshape(logits.shape), self.ignore_index)  # binary: (N, 1, ...)
        target = target.to(logits.dtype)
        pos_weight = self.pos_weight
        if pos_weight is not None and pos_weight.ndim == 1:
            # one weight per channel, broadcast over the spatial axes
            pos_weight = pos_weight.reshape(-1, *([1] * (logits.ndim - 2)))
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none", pos_weight=pos_weight)
        return _masked_mean(loss, valid)


class CrossEntropyLoss(nn.Module):
    r"""Cross-entropy for mutually exclusive classes (multiclass mode only).

    .. math:: \ell = -\,w_y \log \operatorname{softmax}(x)_y, \qquad
              L = \frac{\sum_i \ell_i}{\sum_i w_{y_i}}

    the log-probability of the true class ``y`` at each pixel, averaged over the non-ignored
    pixels (weighted by ``class_weights`` when given). Identical to ``F.cross_entropy``.
    """

    modes: ClassVar[tuple[str, ...]] = ("multiclass",)

    def __init__(
        self,
        mode: str = "multiclass",
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
    ) -> None:
        super().__init__()
        _check_mode(mode, self.modes, type(self).__name__)
        self.mode, self.ignore_index = mode, ignore_index
        cw = None if class_weights is None else torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", cw)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, ignore_index={self.ignore_index}"

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        n, k = logits.shape[:2]
        log_probs = F.log_softmax(logits, dim=1).reshape(n, k, -1)
        labels, valid = _drop_ignored(target.reshape(n, 1, -1).long(), self.ignore_index)
        _one_hot(labels, k)  # validates the label range with a readable error
        nll = -log_probs.gather(1, labels)  # (N, 1, P): -log p(true class)
        weights = None if self.class_weights is None else self.class_weights.to(nll.dtype)[labels]
        return _masked_mean(nll, valid, weights)


class FocalLoss(nn.Module):
    r"""Focal loss (Lin et al. 2017): cross-entropy that down-weights easy, confident pixels.

    .. math:: \ell = -\,\alpha_t\,(1 - p_t)^{\gamma} \log p_t

    ``p_t`` is the predicted probability of the true label; ``gamma = 0`` recovers (weighted)
    cross-entropy, larger ``gamma`` focuses on hard pixels. Averaged over non-ignored pixels.

    * binary / multilabel: ``p_t`` from a sigmoid per channel; ``alpha`` (a float in [0, 1]) weighs
      positives, ``1 - alpha`` negatives. Equals ``smp.losses.FocalLoss``.
    * multiclass with ``use_softmax=True`` (default): ``p_t = softmax(x)_y``, the textbook
      generalisation that reduces to :class:`CrossEntropyLoss` at ``gamma = 0``; ``alpha`` is then
      ``None`` or one weight per class.
    * multiclass with ``use_softmax=False``: one-vs-rest sigmoid focal loss on every channel,
      which is what ``smp.losses.FocalLoss(mode="multiclass")`` (and MONAI's default) computes.

    With ``ignore_index`` the mean runs over the kept elements (pixels x channels in multilabel
    mode, where ``smp.losses.FocalLoss`` raises an IndexError).
    """

    modes: ClassVar[tuple[str, ...]] = MODES

    def __init__(
        self,
        mode: str,
        alpha: float | Sequence[float] | None = None,
        gamma: float = 2.0,
        ignore_index: int | None = None,
        use_softmax: bool = True,
    ) -> None:
        super().__init__()
        _check_mode(mode, self.modes, type(self).__name__)
        self.softmax = mode == "multiclass" and use_softmax
        if alpha is not None and not isinstance(alpha, float | int) and not self.softmax:
            raise ValueError("alpha must be a float in [0, 1] (weight of positives) in sigmoid focal loss")
        if self.softmax and isinstance(alpha, float | int):
            raise ValueError("softmax focal loss takes alpha as one weight per class, not a single float")
        self.mode, self.gamma, self.ignore_index = mode, gamma, ignore_index
        # sigmoid form: one float; softmax form: a buffer of per-class weights (moves with .to(device))
        self.alpha = None if self.softmax or alpha is None else float(alpha)
        class_alpha = torch.as_tensor(alpha, dtype=torch.float32) if self.softmax and alpha is not None else None
        self.register_buffer("class_alpha", class_alpha)

    def extra_repr(self) -> str:
        alpha = self.alpha if self.class_alpha is None else self.class_alpha.tolist()
        return (f"mode={self.mode!r}, alpha={alpha}, gamma={self.gamma}, softmax={self.softmax}, "
                f"ignore_index={self.ignore_index}")

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        n, k = logits.shape[:2]
        x = logits.reshape(n, k, -1)
        labels = target.reshape(n, -1 if self.mode == "multilabel" else 1, x.shape[-1])
        labels, valid = _drop_ignored(labels, self.ignore_index)
        if self.softmax:
            labels = labels.long()
            _one_hot(labels, k)  # label range check
            log_pt = F.log_softmax(x, dim=1).gather(1, labels)
            alpha_t = None if self.class_alpha is None else self.class_alpha.to(x.dtype)[labels]
        else:
            y = _one_hot(labels, k) if self.mode == "multiclass" else labels.to(x.dtype)
            valid = valid.expand_as(y)
            log_pt = -F.binary_cross_entropy_with_logits(x, y, reduction="none")  # log p_t, stably
            alpha_t = None if self.alpha is None else self.alpha * y + (1 - self.alpha) * (1 - y)
        focal = (1 - log_pt.exp()).pow(self.gamma) * -log_pt
        if alpha_t is not None:
            focal = focal * alpha_t
        return _masked_mean(focal, valid)


# --- combinations ----------------------------------------------------------------------------------


class CombinedLoss(nn.Module):
    """Weighted sum of losses: ``sum_i w_i * L_i(logits, target)``.

    Region + pixel-wise combinations are the usual default: the pixel-wise term gives smooth,
    well-scaled gradients early in training, the Dice term counters class imbalance.
    """

    def __init__(self, terms: dict[str, tuple[float, nn.Module]]) -> None:
        super().__init__()
        self.weights = {name: float(w) for name, (w, _) in terms.items()}
        self.terms = nn.ModuleDict({name: loss for name, (_, loss) in terms.items()})

    def extra_repr(self) -> str:
        return f"weights={self.weights}"

    def components(self, logits: Tensor, target: Tensor) -> dict[str, Tensor]:
        """Each term unweighted, e.g. to log them separately."""
        return {name: loss(logits, target) for name, loss in self.terms.items()}

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        parts = self.components(logits, target)
        return sum(self.weights[name] * value for name, value in parts.items())


class DiceBCELoss(CombinedLoss):
    """``dice_weight * Dice + bce_weight * BCE`` for binary / multilabel mode.

    ``ignore_index`` goes to both terms; ``classes``, ``smooth``, ``eps``, ``log_loss`` to Dice;
    ``pos_weight`` to BCE.
    """

    modes: ClassVar[tuple[str, ...]] = ("binary", "multilabel")

    def __init__(
        self,
        mode: str,
        dice_weight: float = 1.0,
        bce_weight: float = 1.0,
        pos_weight: float | Sequence[float] | None = None,
        ignore_index: int | None = None,
        **dice_kwargs,
    ) -> None:
        _check_mode(mode, self.modes, type(self).__name__)
        super().__init__({
            "dice": (dice_weight, DiceLoss(mode, ignore_index=ignore_index, **dice_kwargs)),
            "bce": (bce_weight, BCEWithLogitsLoss(mode, pos_weight=pos_weight, ignore_index=ignore_index)),
        })


class DiceCELoss(CombinedLoss):
    """``dice_weight * Dice + ce_weight * CE`` for multiclass mode.

    ``ignore_index`` goes to both terms; ``classes``, ``ignore_background``, ``smooth``, ``eps``,
    ``log_loss`` to Dice; ``class_weights`` to CE only (Dice already balances classes).
    """

    modes: ClassVar[tuple[str, ...]] = ("multiclass",)

    def __init__(
        self,
        mode: str = "multiclass",
        dice_weight: float = 1.0,
        ce_weight: float = 1.0,
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = None,
        **dice_kwargs,
    ) -> None:
        _check_mode(mode, self.modes, type(self).__name__)
        super().__init__({
            "dice": (dice_weight, DiceLoss(mode, ignore_index=ignore_index, **dice_kwargs)),
            "ce": (ce_weight, CrossEntropyLoss(mode, class_weights=class_weights, ignore_index=ignore_index)),
        })


# --- registry --------------------------------------------------------------------------------------

LOSSES: dict[str, type[nn.Module]] = {
    "bce": BCEWithLogitsLoss,
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "jaccard": JaccardLoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
    "dice_bce": DiceBCELoss,
    "dice_ce": DiceCELoss,
}


def losses_for_mode(mode: str) -> list[str]:
    """Names in :data:`LOSSES` that accept ``mode``. Used in chapter 4."""
    return [name for name, cls in LOSSES.items() if mode in cls.modes]


class LabelMapLoss(nn.Module):
    """A multi-label (per-class sigmoid) loss fed with label maps: ``(N, H, W)`` -> one channel per class.

    Our masks are label maps in every mode; a multi-label loss wants ``(N, C, H, W)`` 0/1 targets.
    """

    def __init__(self, loss: nn.Module, classes: int, drop_background: bool = False) -> None:
        super().__init__()
        self.loss, self.classes, self.drop_background = loss, classes, drop_background

    def forward(self, logits: Tensor, target: Tensor) -> Tensor:
        if target.ndim == logits.ndim - 1:  # a label map: one-hot it
            target = F.one_hot(target.long(), self.classes).movedim(-1, 1).float()
            if self.drop_background:  # region mode: one channel per foreground class only
                target = target[:, 1:]
        return self.loss(logits, target)


def loss_class(name: str, mode: str, class_weights: Sequence[float] | None = None) -> type[nn.Module]:
    """The loss class registered as ``name``, checked against ``mode`` (and against class weights, if given).

    ``region`` (per-class sigmoids without a background channel) uses the multi-label losses.
    """
    mode = "multilabel" if mode == "region" else mode
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    cls = lookup(LOSSES, name, "loss")
    if mode not in cls.modes:
        raise ValueError(f"{name!r} does not support mode {mode!r} (it supports: {', '.join(cls.modes)}); "
                         f"losses for {mode}: {', '.join(losses_for_mode(mode))}")
    if class_weights is not None and "class_weights" not in inspect.signature(cls).parameters:
        raise ValueError(f"loss {name!r} takes no class weights; use a CE-type loss, or loss.params "
                         "(e.g. pos_weight for BCE)")
    return cls


def build_loss(name: str, mode: str, classes: int | None = None, **kwargs) -> nn.Module:
    """Build the loss registered as ``name`` for ``mode``; ``kwargs`` go to its constructor.

    With ``classes`` (the model's output channels) a ``multilabel`` loss also accepts label maps
    (:class:`LabelMapLoss`), as the trainer, the LR range test and the benchmark feed it.

    >>> build_loss("dice_ce", "multiclass", ignore_background=True)  # doctest: +ELLIPSIS
    DiceCELoss(...)

    Used in chapters 4, 5, 6 and 8.
    """
    region = mode == "region"
    mode = "multilabel" if region else mode
    loss = loss_class(name, mode, class_weights=kwargs.get("class_weights"))(mode, **kwargs)
    if mode != "multilabel" or classes is None:
        return loss
    # region mode: the model has no background channel, the label map still counts it
    return LabelMapLoss(loss, classes + 1 if region else classes, drop_background=region)
