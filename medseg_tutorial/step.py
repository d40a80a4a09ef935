"""One training step: forward, loss, backward, clip, optimizer step (chapters 6 and 8).

The trainer, the LR range test and the benchmark all call this one :class:`TrainStep`, so what is
timed and what is swept is exactly what trains::

    step = TrainStep(model, loss_fn, optimizer)
    for batch in loader:
        loss = step(batch["image"], batch["mask"])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .device import autocast, channels_last_format

__all__ = ["NonFiniteLossError", "TrainStep"]


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message says where."""


@dataclass
class TrainStep:
    """Forward -> loss -> backward; on the last micro-batch of a step: unscale -> clip -> step -> zero.
    Used in chapter 8."""

    model: nn.Module  # may be wrapped in DDP or torch.compile
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, label maps (N, H, W))
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None  # float16 only
    amp_dtype: torch.dtype | None = None  # None: float32
    clip_grad: float | None = None  # maximum global gradient norm
    accumulate: int = 1  # micro-batches per optimizer step (the loss is divided by it)
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None  # the encoder's input statistics
    channels_last: bool = False  # NHWC images, NDHWC volumes (faster convolutions on recent GPUs)

    def __call__(self, images: torch.Tensor, masks: torch.Tensor, step: bool = True, where: str = "") -> float:
        """Train on one (micro-)batch; ``step=False`` only accumulates gradients. Returns the loss."""
        device = next(self.model.parameters()).device
        x = images.to(device, non_blocking=True)
        y = masks.to(device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=channels_last_format(x.ndim))
        if hasattr(self.model, "require_backward_grad_sync"):  # DDP: all-reduce gradients only when stepping
            self.model.require_backward_grad_sync = step
        with autocast(device, self.amp_dtype):
            loss = self.loss_fn(self.model(self.normalize(x) if self.normalize else x), y)
        value = loss.item()  # waits for the GPU; cheap next to a segmentation forward pass
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value}" + (f" at {where}" if where else ""))
        scaled = self.scaler.scale(loss / self.accumulate) if self.scaler else loss / self.accumulate
        scaled.backward()  # fp16: scaled up so that small gradients survive
        if step:
            if self.clip_grad is not None:
                if self.scaler:
                    self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
            if self.scaler:
                self.scaler.step(self.optimizer)  # skipped by the scaler if fp16 gradients overflowed
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        return value
