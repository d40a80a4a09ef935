"""Reuse RGB-pretrained first-layer filters for images with 1 or k channels (timm's ``adapt_input_conv``).

Rather than re-initialising the first convolution (and losing its edge and blob detectors):

* **1 channel: sum the RGB filters.** A grey image in an RGB network is ``g`` in R, G and B, so the
  response ``W_r*g + W_g*g + W_b*g = (W_r + W_g + W_b)*g``: the summed filter gives the same output.
* **k channels: repeat the RGB filters cyclically and scale by 3/k,** so each filter, now summing k
  inputs, keeps the magnitude of its activations (and the next BatchNorm's statistics).
"""

from __future__ import annotations

import torch
from timm.models import adapt_input_conv
from torch import nn


def first_conv_name(module: nn.Module) -> str:
    """Qualified name of the first ``nn.Conv2d`` of ``module``: ``conv1`` (ResNet), ``features.0`` (VGG), ...

    Like smp's ``patch_first_conv`` this relies on registration order, for these CNNs the execution
    order. Used in chapter 7.
    """
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Conv2d):
            return name
    raise ValueError(f"{type(module).__name__} has no nn.Conv2d layer to adapt")


def adapt_conv_weight(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """First-conv ``weight`` (out, c, kh, kw) rewritten for ``in_channels`` inputs (see the module docstring).

    Used in chapter 7.
    """
    if weight.ndim != 4:
        raise ValueError(f"expected a Conv2d weight (out, in, kh, kw), got shape {tuple(weight.shape)}")
    # base_chans = the weight's own channel count, so timm's rule also covers 1 -> k (repeat, scale 1/k).
    return adapt_input_conv(in_channels, weight.detach().clone(), base_chans=weight.shape[1])


def adapt_first_conv_state(
    state: dict[str, torch.Tensor], module: nn.Module, in_channels: int
) -> dict[str, torch.Tensor]:
    """Copy of ``state`` (a state dict for ``module``) with the first-conv weight adapted."""
    key = first_conv_name(module) + ".weight"
    if key not in state:
        raise KeyError(f"state dict has no first-conv weight {key!r} for {type(module).__name__}")
    out = dict(state)
    out[key] = adapt_conv_weight(state[key], in_channels)
    return out


def adapt_first_conv(module: nn.Module, in_channels: int) -> nn.Module:
    """Adapt the first convolution of ``module`` (e.g. ``model.encoder``) in place; returns it."""
    name = first_conv_name(module)
    conv: nn.Conv2d = module.get_submodule(name)
    if conv.groups != 1:
        raise ValueError(f"first conv {name!r} is grouped (groups={conv.groups}); cannot adapt it")
    old = conv.in_channels
    conv.weight = nn.Parameter(adapt_conv_weight(conv.weight, in_channels))
    conv.in_channels = in_channels
    # smp encoders remember their input channel count, as smp's own set_in_channels does.
    if hasattr(module, "_in_channels"):
        module._in_channels = in_channels
    out_channels = getattr(module, "_out_channels", None)
    if out_channels and out_channels[0] == old:  # feature 0 is the input image itself
        module._out_channels = [in_channels, *out_channels[1:]]
    return module
