"""From logits to probabilities and label maps, plus the hidden-layer activations of the chapter.

The segmentation head emits **logits** (unbounded scores). Which output activation turns them into
probabilities depends on the task:

* ``binary`` (one channel) and ``multilabel`` (K independent channels): a **sigmoid per channel**,
  ``p = 1 / (1 + exp(-x))``; a pixel may be "on" in several channels at once.
* ``region`` (K - 1 channels, no background channel): a sigmoid per foreground class, as in
  BraTS-style region training; a pixel is background when no channel is on.
* ``multiclass`` (K mutually exclusive classes): a **softmax over channels**,
  ``p_k = exp(x_k) / sum_j exp(x_j)``, so the K probabilities of a pixel sum to 1 and exactly one
  class wins. Its argmax equals the argmax of the logits (softmax is monotone), so decoding needs
  no softmax at all.

Shapes follow ``medseg_tutorial.losses``: logits ``(N, C, *spatial)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["HIDDEN_ACTIVATIONS", "activation_curves", "decode", "probabilities"]

MODES: tuple[str, ...] = ("binary", "multiclass", "multilabel", "region")


def _check(logits: Tensor, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; expected one of {MODES}")
    if logits.ndim < 3:
        raise ValueError(f"logits must be (N, C, *spatial), got shape {tuple(logits.shape)}")
    if mode == "binary" and logits.shape[1] != 1:
        raise ValueError(f"binary mode expects 1 channel, got {logits.shape[1]} (use multiclass or multilabel)")


_PROBABILITIES: dict[str, Callable[[Tensor], Tensor]] = {
    "binary": torch.sigmoid,
    "multiclass": partial(torch.softmax, dim=1),
    "multilabel": torch.sigmoid,
    "region": torch.sigmoid,
}


def probabilities(logits: Tensor, mode: str) -> Tensor:
    """Per-channel probabilities, same shape as ``logits``: sigmoid (binary, multilabel) or softmax
    over the channel axis (multiclass).

    Used in chapter 5.
    """
    _check(logits, mode)
    return _PROBABILITIES[mode](logits)


def _logit(threshold: float) -> float:
    """``sigmoid(x) > t`` is ``x > logit(t)``: comparing logits never meets float32 saturation."""
    return float(torch.logit(torch.tensor(threshold, dtype=torch.float64))) if 0 < threshold < 1 else \
        (-math.inf if threshold == 0 else math.inf)


def _decode_binary(logits: Tensor, threshold: float) -> Tensor:
    # (N, 1, ...) -> (N, ...): foreground where sigmoid(x) > threshold
    return (logits[:, 0] > _logit(threshold)).long()


def _decode_multiclass(logits: Tensor, threshold: float) -> Tensor:
    # argmax softmax(x) == argmax x: no threshold, exactly one class per pixel
    return logits.argmax(dim=1)


def _decode_multilabel(logits: Tensor, threshold: float) -> Tensor:
    # (N, K, ...) stays (N, K, ...): each channel thresholded on its own
    return (logits > _logit(threshold)).long()


def _decode_region(logits: Tensor, threshold: float) -> Tensor:
    # (N, K-1, ...) -> (N, ...): the strongest foreground channel that is on, else background 0
    on = logits > _logit(threshold)
    return torch.where(on.any(dim=1), logits.argmax(dim=1) + 1, 0)


_DECODERS: dict[str, Callable[[Tensor, float], Tensor]] = {
    "binary": _decode_binary,
    "multiclass": _decode_multiclass,
    "multilabel": _decode_multilabel,
    "region": _decode_region,
}


def decode(logits: Tensor, mode: str, threshold: float = 0.5) -> Tensor:
    """Logits -> integer labels (``torch.long``).

    * binary: ``(N, 1, *S) -> (N, *S)``, 1 where ``sigmoid(x) > threshold``;
    * multiclass: ``(N, K, *S) -> (N, *S)``, ``argmax`` over classes (``threshold`` is unused);
    * multilabel: ``(N, K, *S) -> (N, K, *S)``, each channel ``sigmoid(x) > threshold``;
    * region: ``(N, K-1, *S) -> (N, *S)``, background where no channel is on, else the strongest one.

    Thresholds are compared on the logits (``x > logit(threshold)``), never on sigmoid outputs:
    in float32 ``sigmoid(x)`` is exactly 1.0 for every ``x`` above about 17, so probabilities tie
    where the logits do not.

    Used in chapters 1 and 5.
    """
    _check(logits, mode)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    return _DECODERS[mode](logits, threshold)


def label_map(logits: Tensor, mode: str) -> Tensor:
    """One label per pixel ``(N, *S)`` in every mode, as the metrics take them.

    multilabel (channel 0 is the background): the class with the highest logit, so that two
    saturated sigmoids (both exactly 1.0 in float32) cannot tie and fall to the first channel.

    Used in chapter 5.
    """
    if mode == "multilabel":
        return logits.float().argmax(1)
    return decode(logits.float(), mode)


# --------------------------------------------------------------------------------------------
# Hidden-layer activations (for the chapter's plot)
# --------------------------------------------------------------------------------------------

HIDDEN_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,  # max(0, x): cheap, but zero gradient for x < 0 ("dead" units)
    "leaky_relu": partial(F.leaky_relu, negative_slope=0.01),  # small slope keeps x < 0 alive
    "elu": F.elu,  # smooth, saturates at -1 for x << 0
    "gelu": F.gelu,  # x * Phi(x): transformers and ConvNeXt
    "silu": F.silu,  # x * sigmoid(x) a.k.a. swish: EfficientNet
}


class ActivationCurve(NamedTuple):
    """Values and derivatives of one activation on a grid ``x``."""

    x: np.ndarray
    value: np.ndarray
    gradient: np.ndarray


def activation_curves(x: np.ndarray | Tensor | None = None) -> dict[str, ActivationCurve]:
    """Evaluate every :data:`HIDDEN_ACTIVATIONS` entry and its derivative (by autograd) on ``x``.

    ``x`` defaults to 401 points on ``[-4, 4]``. Returns numpy arrays, ready for matplotlib.

    Used in chapter 5.
    """
    grid = torch.linspace(-4.0, 4.0, 401) if x is None else torch.as_tensor(x, dtype=torch.float64)
    curves = {}
    for name, fn in HIDDEN_ACTIVATIONS.items():
        xs = grid.detach().clone().to(torch.float64).requires_grad_(True)
        y = fn(xs)
        # Each output depends only on its own input, so d(sum y)/dx is the elementwise derivative.
        (grad,) = torch.autograd.grad(y.sum(), xs)
        curves[name] = ActivationCurve(xs.detach().numpy(), y.detach().numpy(), grad.numpy())
    return curves
