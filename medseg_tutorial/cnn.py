"""Teaching utilities of the chapter on CNN principles: receptive fields, feature maps, gradient flow.

Everything here measures a real network rather than describing an idealised one:

* :func:`receptive_field` / :func:`conv_layers` compute the theoretical receptive field of a stack
  of convolutions and poolings (for example VGG16's stacks of 3 x 3 convolutions or ResNet's stem),
  and :func:`measured_receptive_field` checks it by back-propagating from one output pixel;
* :func:`encoder_features` runs a slice through the stages of an smp encoder (the feature maps the
  U-Net decoder receives through its skip connections), :func:`stage_shapes` and
  :func:`parameter_counts` describe a U-Net, and :func:`imagenet_top_k` shows that the offline
  ImageNet weights really classify photographs;
* :class:`DeepConvNet` and :func:`gradient_flow` measure what residual connections do to the
  gradient of every layer of a deep plain CNN, at initialisation and after a few training steps;
* :func:`small_table` prepares a few cases of a dataset in memory (the normalisation and resizing of
  ``prepare_dataset``, without reading the whole dataset), for the chapters' tiny live trainings.

Layer 1: imports ``models`` and ``data`` only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.preprocess import default_normalizer, normalize_case, resize_slices
from .data.registry import dataset_info, iter_cases
from .data.types import SliceTable
from .models.weights import lite0_input, load_efficientnet_lite0_imagenet

__all__ = [
    "DeepConvNet",
    "conv_layers",
    "encoder_features",
    "gradient_flow",
    "imagenet_top_k",
    "measured_receptive_field",
    "parameter_counts",
    "receptive_field",
    "small_table",
    "stage_receptive_fields",
    "stage_shapes",
]


# ------------------------------------------------------------------------------------------------
# Receptive fields
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RFLayer:
    """A layer as the receptive-field recursion sees it: square kernel, stride and dilation."""

    name: str
    kernel: int
    stride: int = 1
    dilation: int = 1


@dataclass(frozen=True)
class RFRow:
    """The receptive field after one layer, in input pixels; ``jump`` is the accumulated stride
    (the distance, in input pixels, between two neighbouring outputs of this layer)."""

    index: int
    name: str
    kernel: int
    stride: int
    receptive_field: int
    jump: int


def _square(value: int | Sequence[int], what: str, name: str) -> int:
    if isinstance(value, int):
        return value
    if len(set(value)) != 1:
        raise ValueError(f"{name}: non-square {what} {tuple(value)} is not supported")
    return int(value[0])


def receptive_field(layers: Sequence[RFLayer | tuple]) -> list[RFRow]:
    """Receptive field after each layer of a sequential stack.

    With ``r`` the receptive field and ``j`` the jump before a layer of kernel ``k``, stride ``s``
    and dilation ``d``: ``r <- r + (k - 1) d j`` and ``j <- j s``, starting from ``r = j = 1``.
    ``layers`` are :class:`RFLayer` or ``(name, kernel, stride[, dilation])`` tuples.

    Used in chapter 2.
    """
    r, j, rows = 1, 1, []
    for i, layer in enumerate(layers):
        layer = layer if isinstance(layer, RFLayer) else RFLayer(*layer)
        r += (layer.kernel - 1) * layer.dilation * j
        j *= layer.stride
        rows.append(RFRow(i, layer.name, layer.kernel, layer.stride, r, j))
    return rows


def conv_layers(module: nn.Module, skip: Sequence[str] = ("downsample",)) -> list[RFLayer]:
    """The convolutions and poolings of ``module`` in registration order, as :class:`RFLayer`.

    For a chain of layers (VGG) this is the computation order. For a ResNet it is the order of the
    main path; the 1 x 1 ``downsample`` shortcuts are skipped, so the result is the receptive field
    of the longest path through the network (the identity shortcuts see less).

    Used in chapter 2.
    """
    out = []
    for name, m in module.named_modules():
        if any(token in name.split(".") for token in skip):
            continue
        if isinstance(m, nn.Conv2d):
            out.append(
                RFLayer(
                    name,
                    _square(m.kernel_size, "kernel", name),
                    _square(m.stride, "stride", name),
                    _square(m.dilation, "dilation", name),
                )
            )
        elif isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
            kernel, stride = m.kernel_size, m.stride or m.kernel_size
            dilation = getattr(m, "dilation", 1)
            out.append(
                RFLayer(
                    name,
                    _square(kernel, "kernel", name),
                    _square(stride, "stride", name),
                    _square(dilation, "dilation", name),
                )
            )
    return out


def measured_receptive_field(
    fn: Callable[[torch.Tensor], torch.Tensor],
    in_channels: int = 3,
    size: int = 128,
    trials: int = 4,
    seed: int = 0,
) -> int:
    """Measure the receptive field of ``fn`` (input ``(1, C, size, size)`` -> feature ``(1, C', h, w)``).

    Back-propagate from the centre output pixel (summed over channels) and return the height of the
    box of input pixels whose gradient is non-zero, pooled over ``trials`` random inputs (one input
    can leave parts of the field at zero gradient through inactive ReLUs or max-pooling). Use a
    ``size`` larger than the expected field; zero padding at the border would otherwise clip it.

    Used in chapter 2.
    """
    gen = torch.Generator().manual_seed(seed)
    seen = torch.zeros(size, size, dtype=torch.bool)
    for _ in range(trials):
        x = torch.randn(1, in_channels, size, size, generator=gen, requires_grad=True)
        y = fn(x)
        h, w = y.shape[-2:]
        y[0, :, h // 2, w // 2].sum().backward()
        seen |= x.grad[0].abs().sum(0) > 0
    rows = torch.nonzero(seen.any(dim=1)).flatten()
    return int(rows.max() - rows.min() + 1) if len(rows) else 0


# ------------------------------------------------------------------------------------------------
# Encoders, U-Nets and the ImageNet classifier
# ------------------------------------------------------------------------------------------------


def encoder_features(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """The feature maps of every encoder stage for input ``x`` (no gradients).

    ``model`` is an smp model (its ``encoder`` is used) or an smp encoder. smp encoders return the
    stages from the finest to the coarsest; most start with the input itself (stage 0, stride 1).

    Used in chapter 2.
    """
    encoder = getattr(model, "encoder", model)
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            return list(encoder(x))
    finally:
        encoder.train(was_training)


def stage_shapes(model: nn.Module, input_shape: Sequence[int] = (1, 1, 128, 128)) -> list[dict[str, Any]]:
    """One row per encoder stage: index, shape, channels and downsampling factor for a zero input. Used in chapter 2."""
    x = torch.zeros(*input_shape)
    rows = []
    for i, f in enumerate(encoder_features(model, x)):
        rows.append(
            {
                "stage": i,
                "shape": tuple(f.shape),
                "channels": f.shape[1],
                "downsampling": input_shape[-1] // f.shape[-1],
            }
        )
    return rows


def stage_receptive_fields(
    model: nn.Module, input_shape: Sequence[int] = (1, 3, 128, 128)
) -> list[dict[str, Any]]:
    """:func:`stage_shapes` plus the theoretical receptive field of every encoder stage's output.

    A stage's output is the deepest layer running at that stage's stride, so its receptive field is
    the largest one among the :func:`conv_layers` rows whose jump equals the stage's downsampling
    factor (1 for the input itself).

    Used in chapter 2.
    """
    encoder = getattr(model, "encoder", model)
    rows = receptive_field(conv_layers(encoder))
    out = []
    for stage in stage_shapes(model, input_shape):
        at_stride = [r.receptive_field for r in rows if r.jump == stage["downsampling"]]
        out.append({**stage, "receptive_field": max(at_stride, default=1)})
    return out


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Number of parameters of each top-level part of ``model`` (encoder, decoder, head, ...) and the total.

    Used in chapter 2.
    """
    counts = {name: sum(p.numel() for p in child.parameters()) for name, child in model.named_children()}
    counts = {k: v for k, v in counts.items() if v}
    counts["total"] = sum(p.numel() for p in model.parameters())
    return counts


_CLASSIFIER: list[nn.Module] = []  # loaded once per process


def imagenet_top_k(image: np.ndarray | torch.Tensor, k: int = 5) -> list[tuple[int, str, float]]:
    """``(class index, ImageNet class name, probability)`` of the ``k`` most probable classes.

    ``image`` is an RGB uint8 ``(H, W, 3)`` photograph; the classifier is the offline ImageNet
    EfficientNet-Lite0 that ``build_model("efficientnet-lite0", weights="imagenet")`` takes its
    encoder from (see ``models.weights``).

    Used in chapter 2.
    """
    from timm.data import ImageNetInfo  # class names ship with timm: no download

    if not _CLASSIFIER:
        _CLASSIFIER.append(load_efficientnet_lite0_imagenet())
    with torch.no_grad():
        probs = _CLASSIFIER[0](lite0_input(image)).softmax(-1)[0]
    p, idx = probs.topk(k)
    names = ImageNetInfo()
    return [(int(i), names.index_to_description(int(i)), float(q)) for q, i in zip(p, idx)]


# ------------------------------------------------------------------------------------------------
# Gradient flow: a deep plain CNN versus the same network with residual connections
# ------------------------------------------------------------------------------------------------


class DeepConvNet(nn.Module):
    """A deep fully convolutional segmentation network built to study gradient flow.

    ``depth`` 3 x 3 convolutions in all: a stem (``in_channels -> width``), ``(depth - 2) / 2``
    blocks of two convolutions, and a 1 x 1 head to ``classes`` logits. All at full resolution.

    * ``residual=False``: a block computes ``relu(conv2(relu(conv1(x))))`` (a plain chain);
    * ``residual=True``: ``relu(x + conv2(relu(conv1(x))))``, the basic block of
      He et al. (2016): same layers, same parameters, plus an identity shortcut.

    ``init="default"`` keeps PyTorch's initialisation (uniform, variance ``1 / (3 fan_in)``);
    ``"kaiming"`` uses He-normal initialisation (variance ``2 / fan_in``) with zero biases.
    ``norm=True`` adds BatchNorm after every body convolution.
    """

    def __init__(
        self,
        depth: int = 26,
        width: int = 16,
        in_channels: int = 1,
        classes: int = 2,
        residual: bool = False,
        init: str = "default",
        norm: bool = False,
    ) -> None:
        super().__init__()
        if depth < 4 or depth % 2:
            raise ValueError(
                f"depth counts all convolutions (stem + 2 per block + head): an even number >= 4, got {depth}"
            )
        if init not in ("default", "kaiming"):
            raise ValueError(f"init must be 'default' or 'kaiming', got {init!r}")
        self.residual = residual
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1)
        norm_layer = (lambda: nn.BatchNorm2d(width)) if norm else nn.Identity
        self.blocks = nn.ModuleList(
            nn.ModuleDict(
                {
                    "conv1": nn.Conv2d(width, width, 3, padding=1),
                    "norm1": norm_layer(),
                    "conv2": nn.Conv2d(width, width, 3, padding=1),
                    "norm2": norm_layer(),
                }
            )
            for _ in range((depth - 2) // 2)
        )
        self.head = nn.Conv2d(width, classes, 1)
        if init == "kaiming":
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        for b in self.blocks:
            y = b["norm2"](b["conv2"](F.relu(b["norm1"](b["conv1"](x)))))
            x = F.relu(x + y if self.residual else y)
        return self.head(x)

    def convs(self) -> list[tuple[str, nn.Conv2d]]:
        """The convolutions from input to output, with their names."""
        return [(n, m) for n, m in self.named_modules() if isinstance(m, nn.Conv2d)]


@dataclass
class GradientFlow:
    """What :func:`gradient_flow` measured: per convolution (input to output), the norm of the
    loss gradient with respect to its weights at initialisation and at the last step, and the
    training loss of every step."""

    layers: list[str]
    grad_norm_init: np.ndarray
    grad_norm_final: np.ndarray
    losses: np.ndarray
    residual: bool
    steps: int


@contextmanager
def _num_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (``None``: leave the setting alone), then restore it."""
    old = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _grad_norms(net: DeepConvNet) -> np.ndarray:
    return np.array([float(m.weight.grad.norm()) for _, m in net.convs()])


def gradient_flow(
    images: torch.Tensor,
    masks: torch.Tensor,
    residual: bool,
    depth: int = 26,
    width: int = 16,
    steps: int = 30,
    lr: float = 0.05,
    seed: int = 0,
    init: str = "default",
    norm: bool = False,
    threads: int | None = 1,
) -> GradientFlow:
    """Train a :class:`DeepConvNet` for ``steps`` full-batch SGD steps (momentum 0.9) on ``images``
    ``(N, C, H, W)`` and integer ``masks`` ``(N, H, W)`` with cross-entropy, recording the gradient
    norm of every convolution's weights at the first step (initialisation) and the last step.

    The same ``seed`` gives the plain and the residual network identical initial weights.
    ``threads`` intra-op threads are used while it runs (default 1): convolutions this narrow gain
    nothing from more, and on a busy shared machine we measured one thread about 10x faster than
    two competing ones.

    Used in chapter 2.
    """
    images = torch.as_tensor(images, dtype=torch.float32)
    masks = torch.as_tensor(masks, dtype=torch.long)
    classes = max(int(masks.max()) + 1, 2)
    torch.manual_seed(seed)
    net = DeepConvNet(depth, width, images.shape[1], classes, residual=residual, init=init, norm=norm)
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    losses, first = [], None
    net.train()
    with _num_threads(threads):
        for _ in range(steps):
            loss = F.cross_entropy(net(images), masks)
            opt.zero_grad()
            loss.backward()
            if first is None:
                first = _grad_norms(net)
            losses.append(loss.item())
            if not math.isfinite(losses[-1]):
                break
            opt.step()
    return GradientFlow(
        [n for n, _ in net.convs()], first, _grad_norms(net), np.array(losses), residual, steps
    )


# ------------------------------------------------------------------------------------------------
# A few real cases, prepared in memory
# ------------------------------------------------------------------------------------------------


def small_table(
    name: str,
    max_cases: int = 12,
    size: tuple[int, int] = (64, 64),
    foreground_only: bool = False,
    root: str | None = None,
    crop: tuple[int, int] | None = None,
) -> SliceTable:
    """The first ``max_cases`` cases of dataset ``name`` as a :class:`SliceTable`, prepared in memory.

    Intensities are normalised with the dataset's default normaliser and slices letterboxed to
    ``size``, exactly as ``prepare_dataset`` does, but only these cases are read and nothing is
    cached: a second or two instead of reading the whole dataset, for the chapters' tiny live
    trainings. ``foreground_only`` drops the slices without any labelled structure. ``crop``
    first centre-crops (or pads) the native slices to ``(H, W)`` pixels, which zooms in on an organ
    in the middle of the field of view (the heart in ACDC) before the resize to ``size``.

    Used in chapters 2 and 5.
    """
    info = dataset_info(name)
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("images", "masks", "ids", "index", "spacing")}
    for case in islice(iter_cases(name, root), max_cases):
        case = normalize_case(case, info, default_normalizer(info))
        image, mask, spacing = resize_slices(case.image, case.mask.astype(np.uint8), size, spacing=case.spacing[1:],
                                             crop=crop)
        keep = mask.reshape(len(mask), -1).any(1) if foreground_only else np.ones(len(mask), bool)
        parts["images"].append(image[keep].astype(np.float32))
        parts["masks"].append(mask[keep])
        parts["ids"].append(np.full(int(keep.sum()), case.patient_id))
        parts["index"].append(np.asarray(case.slice_index)[keep])
        parts["spacing"].append(np.tile(np.asarray(spacing, np.float32), (int(keep.sum()), 1)))
    if not parts["images"]:
        raise ValueError(f"{name}: no cases found")
    cat = {k: np.concatenate(v) for k, v in parts.items()}
    meta = {
        "dataset": name,
        "max_cases": max_cases,
        "size": list(size),
        "crop": crop,
        "foreground_only": foreground_only,
        "normalizer": default_normalizer(info),
        "cached": False,
    }
    return SliceTable(
        cat["images"], cat["masks"], cat["ids"].astype(str), cat["index"], cat["spacing"], info, meta
    )
