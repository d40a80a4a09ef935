"""The model layer: build smp models offline, adapt input channels, save and load checkpoints."""

from .build import (
    ARCHS,
    ENCODERS,
    EncoderSpec,
    ModelConfig,
    build_model,
    encoder_spec,
    input_normalization,
    normalize_input,
)
from .channels import adapt_conv_weight, adapt_first_conv, first_conv_name
from .checkpoint import CheckpointError, atomic_torch_save, load_checkpoint, read_checkpoint, save_checkpoint
from .weights import (
    WeightsUnavailableError,
    efficientnet_lite0_state_dict,
    fetch_hub_weights,
    lite0_input,
    load_efficientnet_lite0_imagenet,
)

__all__ = [
    "ARCHS",
    "ENCODERS",
    "CheckpointError",
    "EncoderSpec",
    "ModelConfig",
    "WeightsUnavailableError",
    "adapt_conv_weight",
    "adapt_first_conv",
    "atomic_torch_save",
    "build_model",
    "efficientnet_lite0_state_dict",
    "encoder_spec",
    "fetch_hub_weights",
    "first_conv_name",
    "input_normalization",
    "lite0_input",
    "load_checkpoint",
    "load_efficientnet_lite0_imagenet",
    "normalize_input",
    "read_checkpoint",
    "save_checkpoint",
]
