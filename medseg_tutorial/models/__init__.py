"""The model layer: build smp models offline, adapt input channels, save and load checkpoints.

The chapters' names; the rest is imported from its module (``models.build``, ``models.weights``, ...).
"""

from .build import build_model, input_normalization, load_checkpoint, normalize_input
from .channels import adapt_conv_weight, first_conv_name
from .checkpoint import read_checkpoint, save_checkpoint

__all__ = ["adapt_conv_weight", "build_model", "first_conv_name", "input_normalization",
           "load_checkpoint", "normalize_input", "read_checkpoint", "save_checkpoint"]
