"""From a :class:`~medseg_tutorial.config.Config` to the objects a run needs (chapter 8's recipe, steps 2-4).

The trainer, the LR range test and the benchmark build them here, so the three can never drift apart.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .config import Config, ConfigError
from .device import channels_last_format
from .losses import build_loss as _build_loss
from .models import build_model, input_normalization, normalize_input
from .optim import build_optimizer as _build_optimizer
from .optim import build_scheduler as _build_scheduler
from .step import TrainStep
from .strategies import StrategyPlan, get_strategy

__all__ = ["build_loss", "build_network", "build_optimizer", "build_scheduler", "build_step"]


def build_network(cfg: Config, device: torch.device) -> tuple[nn.Module, StrategyPlan]:
    """Build the model, apply the transfer-learning strategy, move it to ``device``. Used in chapter 10."""
    mc = cfg.model
    if mc.source is not None and not (mc.weights and str(mc.weights).endswith((".pt", ".safetensors", ".pth"))):
        raise ConfigError(f"model.source: {mc.source!r} names an experiment's source run; `medseg experiment` "
                          "trains it and sets model.weights to its checkpoint")
    model = build_model(mc.encoder, mc.weights, mc.in_channels, mc.classes, mc.arch, mc.transfer, dims=mc.dims,
                        inflation=mc.inflate, params=mc.params, **mc.smp_kwargs)
    plan = get_strategy(cfg.strategy.name, **cfg.strategy.params).apply(model)  # freezes on the CPU copy
    model.to(device)
    if cfg.train.channels_last:  # NHWC (NDHWC) kernels; an ACS conv keeps its 2-D kernel, so only 4-D -> 4-D, 5-D -> 5-D
        layout = channels_last_format(mc.dims + 2)
        for param in model.parameters():
            if param.ndim == mc.dims + 2:
                param.data = param.data.contiguous(memory_format=layout)
    return model, plan


def build_loss(cfg: Config) -> nn.Module:
    """The loss of ``cfg``, fed label maps in every mode (the multi-label adapter included)."""
    return _build_loss(cfg.loss.name, cfg.loss.mode, classes=cfg.model.classes, **cfg.loss.kwargs())


def build_optimizer(cfg: Config, plan: StrategyPlan, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer over the plan's parameter groups, at ``lr`` (default ``optim.lr``)."""
    oc = cfg.optim
    lr = oc.lr if lr is None else lr
    return _build_optimizer(oc.name, plan.param_groups(lr, oc.weight_decay), lr=lr, weight_decay=oc.weight_decay,
                            momentum=oc.momentum, **oc.params)


def build_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """The LR schedule of ``cfg`` over ``train.epochs`` epochs of ``steps_per_epoch`` optimizer steps."""
    oc = cfg.optim
    return _build_scheduler(oc.scheduler, optimizer, epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch,
                            warmup_steps=oc.warmup_steps, min_lr_ratio=oc.min_lr_ratio, **oc.scheduler_params)


def normalization_stats(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) applied to the inputs: the encoder's statistics, or the identity for ``input_norm: none``."""
    mc = cfg.model
    if mc.input_norm == "encoder":
        return input_normalization(mc.encoder, mc.weights, mc.in_channels)
    return (0.0,) * mc.in_channels, (1.0,) * mc.in_channels


def input_normalizer(cfg: Config) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``x -> (x - mean) / std`` (``None`` for ``input_norm: none``: the slices go in as they are)."""
    if cfg.model.input_norm == "none":
        return None
    mean, std = normalization_stats(cfg)
    return lambda x: normalize_input(x, mean, std)


def build_step(cfg: Config, net: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
               amp_dtype: torch.dtype | None, loss_fn: nn.Module | None = None) -> TrainStep:
    """The :class:`TrainStep` of ``cfg`` for ``net`` (the model, maybe wrapped in DDP or compiled)."""
    tc = cfg.train
    return TrainStep(net, loss_fn if loss_fn is not None else build_loss(cfg).to(next(net.parameters()).device),
                     optimizer, scaler if scaler is not None and scaler.is_enabled() else None, amp_dtype,
                     tc.clip_grad, tc.accumulate, input_normalizer(cfg), tc.channels_last)
