"""Optimizers, learning-rate schedules and the LR range test (chapter 6), by name, over ``torch.optim``.

When is a scheduler stepped? Every scheduler built here carries ``scheduler.medseg_interval``:

* ``"step"``  (constant, cosine, onecycle): call ``scheduler.step()`` after every optimizer step;
* ``"epoch"`` (plateau): call ``scheduler.step(val_metric)`` once per epoch, after validation.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, OneCycleLR, ReduceLROnPlateau

from .names import lookup
from .step import NonFiniteLossError, TrainStep

__all__ = ["OPTIMIZERS", "build_optimizer", "build_scheduler", "lr_range_test"]

# --- optimizers ------------------------------------------------------------------------------------

# name -> (torch class, the hyper-parameters of ours it understands)
OPTIMIZERS: dict[str, tuple[type[Optimizer], tuple[str, ...]]] = {
    "sgd": (torch.optim.SGD, ("momentum", "nesterov")),
    "adam": (torch.optim.Adam, ("betas",)),  # weight_decay here is an L2 penalty added to the gradient
    "adamw": (torch.optim.AdamW, ("betas",)),  # decoupled weight decay (Loshchilov & Hutter 2019)
    "rmsprop": (torch.optim.RMSprop, ("momentum",)),
}


def _with_lr(params: Iterable[Any], lr: float) -> list[Any]:
    """Give each parameter-group dict its learning rate: explicit ``"lr"`` wins, else ``lr * lr_scale``."""
    params = list(params)
    if not params or not isinstance(params[0], dict):
        return params  # a plain iterable of tensors: a single group at ``lr``
    return [{**g, "lr": g.get("lr", lr * g.get("lr_scale", 1.0))} for g in params]


def _on_cuda(params: list[Any]) -> bool:
    tensors = [p for g in params for p in g["params"]] if params and isinstance(params[0], dict) else params
    return bool(tensors) and all(t.is_cuda for t in tensors)


def optimizer_class(name: str) -> type[Optimizer]:
    """The torch optimizer class registered as ``name`` in :data:`OPTIMIZERS`."""
    return lookup(OPTIMIZERS, name, "optimizer")[0]


def build_optimizer(
    name: str,
    params: Iterable[Any],
    lr: float,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
    betas: tuple[float, float] = (0.9, 0.999),
    fused: bool | None = None,
) -> Optimizer:
    """Build a named torch optimizer over parameters or parameter groups.

    Groups may carry their own ``"lr"`` or an ``"lr_scale"`` multiplier of ``lr`` (and their own
    ``"weight_decay"``, as :meth:`StrategyPlan.param_groups` sets). ``fused=None`` picks the fused
    CUDA kernel (one launch for all tensors) when every parameter is on a GPU and the optimizer has
    one (SGD, Adam, AdamW); otherwise torch chooses its own default.

    Used in chapters 6 and 8.
    """
    cls, knobs = lookup(OPTIMIZERS, name, "optimizer")
    params = _with_lr(params, lr)
    ours = {"momentum": momentum, "nesterov": nesterov, "betas": betas}
    kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay, **{k: ours[k] for k in knobs}}
    has_fused = "fused" in inspect.signature(cls).parameters
    if fused is None:
        fused = has_fused and _on_cuda(params)
    if fused:
        if not has_fused:
            raise ValueError(f"torch has no fused {cls.__name__}")
        kwargs["fused"] = True
    return cls(params, **kwargs)


# --- schedulers ------------------------------------------------------------------------------------


def _warmup_decay(
    total: int, warmup: int, min_ratio: float, exponent: float | None = None
) -> Callable[[int], float]:
    """LR multiplier at step s: linear warm-up to 1 over ``warmup`` steps, then down to ``min_ratio``.

    The decay is a cosine, or with ``exponent`` nnU-Net's ``(1 - progress) ** exponent`` (Isensee 2021).
    """

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if exponent is not None:
            return max(min_ratio, (1 - progress) ** exponent)
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


# LambdaLR multiplies each group's own lr, so discriminative per-group ratios survive the schedule
# (CosineAnnealingLR's eta_min is one absolute value for all groups).
def _constant(opt: Optimizer, total: int, warmup: int, min_ratio: float, **kw: Any) -> LambdaLR:
    return LambdaLR(opt, _warmup_decay(total, warmup, min_ratio=1.0), **kw)


def _cosine(opt: Optimizer, total: int, warmup: int, min_ratio: float, **kw: Any) -> LambdaLR:
    return LambdaLR(opt, _warmup_decay(total, warmup, min_ratio), **kw)


def _poly(opt: Optimizer, total: int, warmup: int, min_ratio: float, exponent: float = 0.9, **kw: Any) -> LambdaLR:
    return LambdaLR(opt, _warmup_decay(total, warmup, min_ratio, exponent), **kw)


def _onecycle(opt: Optimizer, total: int, warmup: int, min_ratio: float, **kw: Any) -> OneCycleLR:
    max_lr = [g["lr"] for g in opt.param_groups]  # each group peaks at its own configured lr
    div_factor = kw.pop("div_factor", 25.0)
    kw.setdefault("pct_start", warmup / total if warmup else 0.3)
    # torch ends at max_lr / (div_factor * final_div_factor): make that max_lr * min_ratio
    return OneCycleLR(opt, max_lr, total_steps=total, div_factor=div_factor,
                      final_div_factor=1 / (min_ratio * div_factor), **kw)


def _plateau(opt: Optimizer, total: int, warmup: int, min_ratio: float, **kw: Any) -> ReduceLROnPlateau:
    # Monitors a validation score (Dice: higher is better); short tutorial runs want a short patience.
    kw = {"mode": "max", "factor": 0.5, "patience": 3, **kw}
    return ReduceLROnPlateau(opt, min_lr=[g["lr"] * min_ratio for g in opt.param_groups], **kw)


# name -> (factory, when to call scheduler.step())
SCHEDULERS: dict[str, tuple[Callable[..., Any], str]] = {
    "constant": (_constant, "step"),
    "cosine": (_cosine, "step"),
    "onecycle": (_onecycle, "step"),
    "poly": (_poly, "step"),
    "plateau": (_plateau, "epoch"),
}


def scheduler_factory(name: str) -> Callable[..., Any]:
    """The factory registered as ``name`` in :data:`SCHEDULERS`."""
    return lookup(SCHEDULERS, name, "scheduler")[0]


def build_scheduler(
    name: str,
    optimizer: Optimizer,
    *,
    epochs: int,
    steps_per_epoch: int,
    warmup_steps: int = 0,
    min_lr_ratio: float = 0.01,
    **kwargs: Any,
) -> LambdaLR | OneCycleLR | ReduceLROnPlateau:
    """Build a named LR schedule; ``scheduler.medseg_interval`` says whether to step per batch or epoch.

    ``min_lr_ratio`` is the lowest LR any schedule reaches, as a fraction of each group's LR (cosine
    ends there, onecycle anneals to it, plateau never reduces below it). ``warmup_steps`` is a linear
    warm-up for constant and cosine, and sets onecycle's ``pct_start``; plateau has none. Extra
    keyword arguments go to the torch class (e.g. ``patience=5`` for plateau).

    Used in chapter 6.
    """
    factory, interval = lookup(SCHEDULERS, name, "scheduler")
    scheduler = factory(optimizer, epochs * steps_per_epoch, warmup_steps, min_lr_ratio, **kwargs)
    scheduler.medseg_interval = interval
    return scheduler


# --- LR range test ---------------------------------------------------------------------------------


@dataclass
class LRFinderResult:
    """The sweep of an LR range test: learning rates, raw and smoothed losses, and a suggestion."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float

    @property
    def lr_at_min(self) -> float:
        return self.lrs[int(np.argmin(self.smoothed))]

    def plot(self, ax: Any = None) -> Any:
        """Loss against learning rate (log scale), with the suggestion marked; returns the matplotlib Axes."""
        import matplotlib.pyplot as plt  # optional: only needed for plotting

        ax = ax or plt.subplots(figsize=(6, 4))[1]
        ax.plot(self.lrs, self.losses, alpha=0.3, label="loss")
        ax.plot(self.lrs, self.smoothed, label="smoothed loss")
        ax.axvline(self.suggestion, color="tab:red", ls="--", label=f"suggestion {self.suggestion:.2g}")
        ax.set(xscale="log", xlabel="learning rate", ylabel="training loss", title="LR range test")
        ax.legend()
        return ax


def _steepest(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """LR where the smoothed loss falls fastest per decade of LR.

    Falls back to min/10 when the sweep is too short, or when the steepest point is one of the last
    two LRs of the sweep: the loss was still falling fastest where the sweep ended (or diverged), so
    "steepest" would only echo ``end_lr`` (an RMSprop run of chapter 6 got 1.0 that way).
    """
    if len(lrs) >= 5:
        steepest = int(np.argmin(np.gradient(smoothed, np.log10(lrs))))
        if steepest < len(lrs) - 2:
            return float(lrs[steepest])
    return _min_div10(lrs, smoothed)


def _min_div10(lrs: np.ndarray, smoothed: np.ndarray) -> float:
    """One tenth of the LR at the lowest smoothed loss (fastai's classic rule), kept inside the sweep."""
    return float(max(lrs[int(np.argmin(smoothed))] / 10, lrs[0]))


SUGGESTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "steepest": _steepest,
    "min/10": _min_div10,
}


def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        yield from loader  # start over when the loader runs out before num_iter


def lr_range_test(
    model: nn.Module,
    loader: Iterable[dict[str, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer_name: str = "adamw",
    start_lr: float = 1e-6,
    end_lr: float = 1.0,
    num_iter: int = 50,
    smooth: float = 0.05,
    diverge_factor: float = 4.0,
    device: str | torch.device = "cpu",
    *,
    params: Iterable[Any] | None = None,
    weight_decay: float = 0.0,
    suggest: str = "steepest",
    normalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> LRFinderResult:
    """Smith's LR range test (2017, as popularised by fastai): train briefly with an exponentially growing LR.

    The LR grows from ``start_lr`` to ``end_lr`` over ``num_iter`` mini-batches, each trained by the
    trainer's own :class:`~medseg_tutorial.step.TrainStep`. The loss is smoothed by a bias-corrected
    moving average (weight ``smooth`` on the newest loss); the sweep stops once the smoothed loss
    exceeds ``diverge_factor`` x its minimum or is not finite. ``suggest="steepest"`` returns the LR
    where the smoothed loss falls fastest, ``"min/10"`` a tenth of the LR at its minimum. Parameter
    groups in ``params`` keep their ``lr_scale`` ratios during the sweep.

    The model is moved to ``device`` (in place, like ``Module.to``); afterwards its parameters,
    buffers, train/eval mode, gradients and the global RNG are as before. Used in chapter 6.
    """
    if suggest not in SUGGESTIONS:
        raise KeyError(f"unknown suggestion rule {suggest!r}; choose from {sorted(SUGGESTIONS)}")
    device = torch.device(device)
    model.to(device)
    initial_state = copy.deepcopy(model.state_dict())
    was_training = model.training
    if params is None:
        params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_optimizer(optimizer_name, params, lr=start_lr, weight_decay=weight_decay)
    step = TrainStep(model, loss_fn, optimizer, normalize=normalize)
    scales = [g.get("lr_scale", 1.0) for g in optimizer.param_groups]
    gamma = (end_lr / start_lr) ** (1 / max(1, num_iter - 1))

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    avg, best = 0.0, math.inf
    rng_devices = [torch.cuda.current_device() if device.index is None else device.index] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices):  # the sweep must not shift later randomness
            model.train()
            optimizer.zero_grad(set_to_none=True)
            for i, batch in zip(range(num_iter), _cycle(loader)):
                lr = start_lr * gamma**i
                for group, scale in zip(optimizer.param_groups, scales):
                    group["lr"] = lr * scale
                try:
                    loss = step(batch["image"], batch["mask"])
                except NonFiniteLossError:
                    break
                avg = (1 - smooth) * avg + smooth * loss
                lrs.append(lr)
                losses.append(loss)
                smoothed.append(avg / (1 - (1 - smooth) ** (i + 1)))  # bias-corrected EMA
                best = min(best, smoothed[-1])
                if smoothed[-1] > diverge_factor * best:
                    break
    finally:
        model.load_state_dict(initial_state)
        model.train(was_training)
        for p in model.parameters():
            p.grad = None
    if not lrs:
        raise RuntimeError("the loss was not finite at start_lr; lower start_lr or check the data")
    suggestion = SUGGESTIONS[suggest](np.asarray(lrs), np.asarray(smoothed))
    return LRFinderResult(lrs, losses, smoothed, suggestion)
