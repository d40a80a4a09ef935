"""Which device a run uses and in which precision (chapter 8's recipe; the trainer and evaluation call these)."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager, nullcontext

import torch

from .errors import ConfigError

__all__ = ["autocast", "select_device"]


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, then Apple's MPS, then the CPU; otherwise the named device."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"train.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def channels_last_format(ndim: int) -> torch.memory_format:
    """The channels-last layout of a rank-``ndim`` tensor: NHWC for images, NDHWC for volumes (3-D, chapter 10)."""
    return torch.channels_last_3d if ndim == 5 else torch.channels_last


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``train.amp`` on ``device``; ``None`` means full float32.

    ``auto``: bfloat16 on GPUs that have it (Ampere and newer: same range as float32, so no loss
    scaling), float16 (with a GradScaler) on older GPUs, and float32 on CPU and MPS, where mixed
    precision rarely pays off for convolutions.
    """
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp == "fp16":
            raise ValueError(f"train.amp=fp16 needs a CUDA GPU (device is {device}); use bf16 or off")
        return torch.bfloat16 if amp == "bf16" else None  # CPU autocast supports bf16 only
    bf16_ok = torch.cuda.is_bf16_supported()
    if amp == "bf16" and not bf16_ok:
        raise ValueError(f"train.amp=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16; use fp16")
    if amp == "auto":
        return torch.bfloat16 if bf16_ok else torch.float16
    return torch.bfloat16 if amp == "bf16" else torch.float16


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    """``torch.autocast`` in ``dtype``, or a no-op for full precision."""
    return torch.autocast(device.type, dtype=dtype) if dtype else nullcontext()


def enable_determinism(device: torch.device) -> None:
    """Ask torch for deterministic kernels (slower; needed for bit-exact resumes)."""
    # cuBLAS needs a fixed workspace to be deterministic; the variable is read at the first cuBLAS call
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False  # autotuning may pick a different algorithm each run
    torch.backends.cudnn.deterministic = True
    # On CPU every op we use has a deterministic version, so be strict. On GPUs a few backward
    # kernels have none; there torch warns instead of failing the run.
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
