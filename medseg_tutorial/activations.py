"""From logits ``(N, C, *spatial)`` to probabilities and label maps, plus the chapter's hidden activations.

* ``binary`` (1 channel), ``multilabel`` (K channels) and ``region`` (K - 1 foreground channels, as
  in BraTS-style region training): a **sigmoid per channel**; a pixel may be on in several channels.
* ``multiclass`` (K exclusive classes): a **softmax over channels**, so a pixel's probabilities sum
  to 1. Softmax is monotone, so decoding is the argmax of the logits, with no softmax at all.
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


def probabilities(logits: Tensor, mode: str) -> Tensor:
    """Per-channel probabilities, shaped like ``logits``: sigmoid, or softmax over channels (multiclass).

    Used in chapter 5.
    """
    _check(logits, mode)
    return torch.softmax(logits, dim=1) if mode == "multiclass" else torch.sigmoid(logits)


def _logit(threshold: float) -> float:
    """``sigmoid(x) > t`` is ``x > logit(t)``: comparing logits never meets float32 saturation."""
    return float(torch.logit(torch.tensor(threshold, dtype=torch.float64))) if 0 < threshold < 1 else \
        (-math.inf if threshold == 0 else math.inf)


def decode(logits: Tensor, mode: str, threshold: float = 0.5) -> Tensor:
    """Logits -> integer labels (``torch.long``).

    * binary: ``(N, 1, *S) -> (N, *S)``, 1 where ``sigmoid(x) > threshold``;
    * multiclass: ``(N, K, *S) -> (N, *S)``, ``argmax`` over classes (``threshold`` is unused);
    * multilabel: ``(N, K, *S) -> (N, K, *S)``, each channel ``sigmoid(x) > threshold``;
    * region: ``(N, K-1, *S) -> (N, *S)``, background where no channel is on, else the strongest one.

    Thresholds are compared on the logits (``x > logit(threshold)``): in float32 ``sigmoid(x)`` is
    exactly 1.0 for every ``x`` above about 17, so probabilities tie where the logits do not.
    Used in chapters 1 and 5.
    """
    _check(logits, mode)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold is a probability in [0, 1], got {threshold}")
    if mode == "multiclass":
        return logits.argmax(dim=1)
    on = logits > _logit(threshold)
    if mode == "binary":
        return on[:, 0].long()
    if mode == "multilabel":
        return on.long()
    return torch.where(on.any(dim=1), logits.argmax(dim=1) + 1, 0)  # region


def label_map(logits: Tensor, mode: str) -> Tensor:
    """One label per pixel ``(N, *S)`` in every mode, as the metrics take them.

    multilabel (channel 0 is the background): the class with the highest logit, so that two
    saturated sigmoids (both exactly 1.0 in float32) cannot tie and fall to the first channel.

    Used in chapter 5.
    """
    if mode == "multilabel":
        return logits.float().argmax(1)
    return decode(logits.float(), mode)


# Hidden-layer activations, for the chapter's plot
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
    """Every :data:`HIDDEN_ACTIVATIONS` entry and its derivative (by autograd) on ``x``, as numpy arrays.

    ``x`` defaults to 401 points on ``[-4, 4]``. Used in chapter 5.
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
