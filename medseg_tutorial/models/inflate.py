"""From slices to volumes: turn the book's 2-D ImageNet network into a 3-D one (chapter 10).

``inflate(model, mode)`` returns a 3-D copy whose layers start from the 2-D weights. Two recipes:

* ``"i3d"`` (Carreira & Zisserman, "Quo Vadis, Action Recognition? A New Model and the Kinetics
  Dataset", CVPR 2017): the k x k kernel repeated over depth and divided by the depth. On a volume
  of equal slices every layer answers what the 2-D layer answers on one slice (away from the depth
  borders), so ImageNet features and BatchNorm statistics stay valid; k times the multiply-adds.
* ``"acs"`` (Yang et al., "Reinventing 2D Convolutions for 3D Images", IEEE JBHI 2021): each conv
  keeps its 2-D kernels and applies a third of its outputs in each of the axial, coronal and
  sagittal planes (``ACSConv``): exactly the 2-D model's parameters.

Strides, padding and dilation are tripled, so depth is downsampled like height and width (32x for
EfficientNet): any depth runs, a multiple of 32 keeps every stage an exact halving. Only layers are
converted, not code: smp's ``UnetDecoder.forward`` (it unpacks ``height, width``) gets a 3-D forward
(``UnetDecoder3d``); timm's ``SqueezeExcite`` (``x.mean((2, 3))``) is refused. Unlike acsconv 0.1.1
this converter knows timm's ``Conv2dSame`` and ``BatchNormAct2d``.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from segmentation_models_pytorch.base import SegmentationModel
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
from timm.layers.norm_act import BatchNormAct2d
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn

from ..errors import MedsegError

MODES = ("i3d", "acs")
_SAME_2D = (Conv2dSame, Conv2dSameExport)  # TF "same" padding, computed from the input size in forward


class InflateError(MedsegError, TypeError):
    """A layer has no 3-D counterpart here; the message names the layer and its class."""


def pad_same_3d(x: torch.Tensor, kernel: Sequence[int], stride: Sequence[int],
                dilation: Sequence[int]) -> torch.Tensor:
    """Zero-pad (N, C, D, H, W) as TensorFlow's "same" (timm's ``pad_same``): output ceil(size / stride)."""
    pads: list[int] = []
    for size, k, s, d in zip(x.shape[-3:], kernel, stride, dilation):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads = [total // 2, total - total // 2, *pads]  # F.pad lists the last axis first
    return F.pad(x, pads)


class Conv3dSame(nn.Conv3d):
    """A Conv3d with TF "same" padding, timm's ``Conv2dSame`` for volumes. Used in chapter 10."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["padding"] = 0  # computed in forward from the input size
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = pad_same_3d(x, self.kernel_size, self.stride, self.dilation)
        return F.conv3d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class BatchNormAct3d(nn.BatchNorm3d):
    """BatchNorm3d, then dropout and activation: timm's ``BatchNormAct2d`` for volumes.

    A BatchNorm3d subclass, so the parameter names stay those of the 2-D model. Used in chapter 10.
    """

    def __init__(self, num_features: int, act: nn.Module | None = None, drop: nn.Module | None = None,
                 **bn_kwargs: Any) -> None:
        super().__init__(num_features, **bn_kwargs)
        self.drop = drop if drop is not None else nn.Identity()
        self.act = act if act is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class ACSConv(nn.Module):
    """A 2-D conv applied in three planes (Yang et al., IEEE JBHI 2021). Used in chapter 10.

    The output channels are split in three (extra ones to the first planes): axial (kernel
    1 x k x k), coronal (k x 1 x k) and sagittal (k x k x 1), concatenated in channel order, so
    channel j keeps its 2-D kernel and the next BatchNorm its statistics. The weight is the 2-D
    weight: no parameter is added. Grouped convs split whole groups, as a group's outputs must see
    its inputs (a 2-group conv uses two planes). A 1 x 1 conv runs once, as a 1 x 1 x 1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 padding: int | str = 0, dilation: int = 1, groups: int = 1, bias: bool = True) -> None:
        super().__init__()
        if padding != "same" and (not isinstance(padding, int) or 2 * padding != dilation * (kernel_size - 1)):
            # otherwise the three planes would give outputs of different sizes
            raise ValueError(f"ACSConv needs padding (k - 1) * dilation / 2 or 'same', got {padding!r}")
        template = nn.Conv2d(in_channels, out_channels, kernel_size, groups=groups, bias=bias)
        self.weight, self.bias = template.weight, template.bias  # torch's default initialisation
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size, self.padding = kernel_size, padding
        self.stride, self.dilation = (stride,) * 3, (dilation,) * 3
        self.planes = _acs_planes(in_channels, out_channels, groups, kernel_size)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d) -> ACSConv:
        """The ACS conv with ``conv``'s weights (square kernel, equal strides, padding and dilation)."""
        (k, kw), (s, sw), (d, dw) = conv.kernel_size, conv.stride, conv.dilation
        padding = "same" if isinstance(conv, _SAME_2D) else conv.padding
        if isinstance(padding, tuple):
            padding = padding[0] if padding[0] == padding[1] else padding
        if (k, s, d) != (kw, sw, dw) or conv.padding_mode != "zeros":
            raise ValueError(f"ACSConv needs square kernels, strides, dilations and zero padding, got {conv}")
        acs = cls(conv.in_channels, conv.out_channels, k, s, padding, d, conv.groups, conv.bias is not None)
        acs.load_state_dict(conv.state_dict())  # same names, same shapes
        return acs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for axis, out, inp, groups in self.planes:
            weight = self.weight[out].unsqueeze(axis)  # kernel 1 along `axis`, the 2-D kernel along the others
            xi = x[:, inp]
            if self.padding == "same":
                xi, pad = pad_same_3d(xi, weight.shape[2:], self.stride, self.dilation), (0, 0, 0)
            else:
                pad = tuple(0 if a == axis else self.padding for a in (2, 3, 4))
            outs.append(F.conv3d(xi, weight, None, self.stride, pad, self.dilation, groups))
        y = torch.cat(outs, dim=1)
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1, 1)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride[0]}, "
                f"padding={self.padding!r}, groups={self.groups}, planes={[p[1].stop - p[1].start for p in self.planes]}")


def _acs_planes(in_channels: int, out_channels: int, groups: int, k: int) -> list[tuple[int, slice, slice, int]]:
    """[(axis of the size-1 kernel, output channels, input channels, groups)] per plane used."""
    if k == 1:
        return [(2, slice(0, out_channels), slice(0, in_channels), groups)]
    units = out_channels if groups == 1 else groups  # what can be split: outputs, or whole groups
    out_per, in_per = (1, 0) if groups == 1 else (out_channels // groups, in_channels // groups)
    planes, start = [], 0
    for axis in (2, 3, 4):  # kernel 1 along depth (axial), height (coronal), width (sagittal)
        n = units // 3 + (axis - 2 < units % 3)
        if n:
            inputs = slice(0, in_channels) if groups == 1 else slice(start * in_per, (start + n) * in_per)
            planes.append((axis, slice(start * out_per, (start + n) * out_per), inputs, 1 if groups == 1 else n))
        start += n
    return planes


def _i3d_conv(conv: nn.Conv2d, depth: int | None) -> nn.Conv3d:
    """The I3D conv: the 2-D kernel repeated ``depth`` times (default: its height), divided by ``depth``.

    A 1 x 1 conv mixes channels only and stays 1 x 1 x 1 whatever ``depth`` says.
    """
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    kd = kh if depth is None or (kh, kw) == (1, 1) else depth
    same = isinstance(conv, _SAME_2D)
    if same or isinstance(conv.padding, str):
        padding = 0 if same else conv.padding
    else:  # the 2-D row padding for a depth of kh, else the padding that keeps the depth at stride 1
        padding = (conv.padding[0] if kd == kh else dh * (kd - 1) // 2, *conv.padding)
    cls = Conv3dSame if same else nn.Conv3d
    new = cls(conv.in_channels, conv.out_channels, (kd, kh, kw), stride=(sh, sh, sw), padding=padding,
              dilation=(dh, dh, dw), groups=conv.groups, bias=conv.bias is not None,
              padding_mode=conv.padding_mode)
    with torch.no_grad():
        new.weight.copy_(conv.weight.unsqueeze(2).expand(-1, -1, kd, -1, -1) / kd)
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def _batchnorm(bn: nn.BatchNorm2d) -> nn.BatchNorm3d:
    """BatchNorm3d (or BatchNormAct3d for timm's BatchNormAct2d) with ``bn``'s statistics and affine."""
    kw = dict(eps=bn.eps, momentum=bn.momentum, affine=bn.affine, track_running_stats=bn.track_running_stats)
    new = BatchNormAct3d(bn.num_features, bn.act, bn.drop, **kw) if isinstance(bn, BatchNormAct2d) \
        else nn.BatchNorm3d(bn.num_features, **kw)
    new.load_state_dict(bn.state_dict())
    return new


def _with_depth(value: Any) -> Any:
    """An in-plane (h, w) setting as (h, h, w): depth behaves like the rows. Numbers stay numbers."""
    return (value[0], *value) if isinstance(value, tuple) else value


def _upsample(up: nn.Upsample) -> nn.Upsample:
    modes = {"nearest": "nearest", "nearest-exact": "nearest-exact", "bilinear": "trilinear"}
    if up.mode not in modes or isinstance(up.size, tuple):
        raise InflateError(f"no 3-D version of {up} (mode {up.mode!r}, size {up.size!r})")
    return nn.Upsample(up.size, _with_depth(up.scale_factor), modes[up.mode], up.align_corners,
                       up.recompute_scale_factor)


def _unet_decoder(decoder: UnetDecoder) -> UnetDecoder:
    """smp's decoder, switched in place to the ``UnetDecoder3d`` forward."""
    decoder.__class__ = UnetDecoder3d  # same modules and parameter names, a 3-D forward
    return decoder


_LAYERS: dict[type, Callable[[nn.Module], nn.Module]] = {
    nn.BatchNorm2d: _batchnorm,
    BatchNormAct2d: _batchnorm,
    nn.MaxPool2d: lambda m: nn.MaxPool3d(*map(_with_depth, (m.kernel_size, m.stride, m.padding, m.dilation)),
                                         return_indices=m.return_indices, ceil_mode=m.ceil_mode),
    nn.AvgPool2d: lambda m: nn.AvgPool3d(*map(_with_depth, (m.kernel_size, m.stride, m.padding)), m.ceil_mode,
                                         m.count_include_pad, m.divisor_override),
    nn.AdaptiveAvgPool2d: lambda m: nn.AdaptiveAvgPool3d(_with_depth(m.output_size)),
    nn.AdaptiveMaxPool2d: lambda m: nn.AdaptiveMaxPool3d(_with_depth(m.output_size), m.return_indices),
    nn.Dropout2d: lambda m: nn.Dropout3d(m.p, m.inplace),
    nn.Upsample: _upsample,
    nn.UpsamplingNearest2d: _upsample,
    nn.UpsamplingBilinear2d: _upsample,
    UnetDecoder: _unet_decoder,
}
_CONVS = (nn.Conv2d, Conv2dSame, Conv2dSameExport)  # exact types: a subclass may change forward
_FORWARD_IS_2D = (SqueezeExcite, nn.PixelShuffle, nn.PixelUnshuffle, nn.Fold, nn.Unfold)


class UnetDecoder3d(UnetDecoder):
    """smp's ``UnetDecoder`` with a forward for (N, C, D, H, W) features. Used in chapter 10.

    smp 0.6 upsamples each stage to ``(height, width)`` of the next skip; here to its
    ``(depth, height, width)``. The blocks' layers are used as they are (inflated).
    """

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        sizes = [f.shape[2:] for f in features][::-1]  # from the deepest stage up to the input
        features = features[1:][::-1]  # the input itself is no skip; start from the deepest
        x, skips = self.center(features[0]), features[1:]
        for i, block in enumerate(self.blocks):
            mode = "trilinear" if block.interpolation_mode == "bilinear" else block.interpolation_mode
            x = F.interpolate(x, size=tuple(sizes[i + 1]), mode=mode)
            if i < len(skips):
                x = block.attention1(torch.cat([x, skips[i]], dim=1))
            x = block.attention2(block.conv2(block.conv1(x)))
        return x


def inflate(model: nn.Module, mode: str = "i3d", depth: int | None = None) -> nn.Module:
    """A 3-D copy of the 2-D ``model`` initialised from its weights; ``model`` is not changed.

    ``mode="i3d"`` inflates every k x k kernel to k x k x k (``depth`` x k x k when given; 1 keeps
    the kernels in-plane); ``mode="acs"`` turns every conv into an ``ACSConv``. The copy takes
    (N, C, D, H, W), keeps train/eval mode and ``requires_grad``, and records ``medseg_inflation``.
    Raises ``InflateError`` naming any 2-D layer it cannot convert. Used in chapter 10.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if depth is not None and (mode != "i3d" or not isinstance(depth, int) or depth < 1):
        raise ValueError(f"depth is a positive int for mode 'i3d' only, got {depth!r} for {mode!r}")
    if isinstance(model, SegmentationModel) and type(model.decoder) is not UnetDecoder:
        # other smp decoders compute with (height, width) in their forward too; only Unet's is rewritten
        raise InflateError(f"only smp's Unet decoder has a 3-D forward here, not {type(model.decoder).__name__}")
    model3d = _convert(copy.deepcopy(model), type(model).__name__, mode, depth)
    model3d.medseg_inflation = {"mode": mode, "depth": depth}
    return model3d


def _convert(module: nn.Module, name: str, mode: str, depth: int | None) -> nn.Module:
    """The 3-D version of ``module``: converted if it is a 2-D layer, then its children, recursively."""
    kind = type(module)
    if kind in _CONVS:
        new = _i3d_conv(module, depth) if mode == "i3d" else ACSConv.from_conv2d(module)
    elif kind in _LAYERS:
        new = _LAYERS[kind](module)
    elif kind in _FORWARD_IS_2D or ("2d" in kind.__name__.lower() and not any(module.children())):
        raise InflateError(f"no 3-D counterpart for {name} ({kind.__module__}.{kind.__qualname__})")
    else:
        new = module  # a container (Sequential, smp's Conv2dReLU, timm's blocks) or a dimension-free layer
    if new is not module:  # what a fresh module does not know: device, dtype, mode, frozen parameters
        floats = [t for t in (*module.parameters(), *module.buffers()) if t.is_floating_point()]
        if floats:
            new.to(floats[0].device, floats[0].dtype)
        new.train(module.training)
        frozen = {n for n, p in module.named_parameters() if not p.requires_grad}
        for n, p in new.named_parameters():
            p.requires_grad_(n not in frozen)
    for child_name, child in list(new.named_children()):
        setattr(new, child_name, _convert(child, f"{name}.{child_name}", mode, depth))
    return new
