"""Transfer-learning strategies: which parameters train, at which learning rate, and from when.

Every strategy of chapter 7 is a point in one small design space, the fields of :class:`Strategy`.
The registry (:data:`STRATEGIES`, :func:`get_strategy`) names the well-known points, and the knobs
compose: ``get_strategy("gradual_unfreezing", every=2, lr_decay=0.5)`` is ULMFiT-style gradual
unfreezing with discriminative learning rates. ``strategy.apply(model)`` returns a :class:`StrategyPlan`::

    plan = get_strategy("frozen_stages", k=2).apply(model)
    optimizer = torch.optim.AdamW(plan.param_groups(base_lr=1e-3, weight_decay=1e-4))
    for epoch in range(epochs):
        plan.on_epoch_start(model, epoch)   # gradual unfreezing happens here
        plan.train_mode(model)              # model.train(), frozen BatchNorm stays in eval
        ...

Frozen BatchNorm. Freezing a BatchNorm layer's weights is not enough: in ``train()`` mode it still
updates its running statistics, so a "frozen" encoder would drift towards the new data set. Each
frozen BatchNorm layer therefore gets a forward pre-hook that puts it back into eval mode before every
forward pass, whoever calls ``model.train()``; ``plan.train_mode(model)`` does the same explicitly, so
that ``module.training`` also tells the truth between forward passes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.hooks import RemovableHandle

from .models.inflate import ACSConv
from .names import lookup

__all__ = ["STRATEGIES", "StrategyPlan", "get_strategy", "list_strategies", "model_groups"]

UNUSED = "encoder.unused"


# --- splitting a model into named groups ----------------------------------------------------------


@dataclass
class ModuleGroup:
    """A named set of parameters (and the modules that own them) that is frozen or trained together."""

    name: str
    params: dict[str, nn.Parameter] = field(default_factory=dict)  # qualified name -> parameter
    modules: list[nn.Module] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(p.numel() for p in self.params.values())

    def batchnorms(self) -> list[_BatchNorm]:
        return [m for module in self.modules for m in module.modules() if isinstance(m, _BatchNorm)]

    def add(self, module: nn.Module, prefix: str, recurse: bool = True) -> None:
        sep = "." if prefix else ""
        self.params.update({f"{prefix}{sep}{n}": p for n, p in module.named_parameters(recurse=recurse)})
        if recurse:
            self.modules.append(module)


_CONVS = (nn.Conv2d, nn.Conv3d, ACSConv)  # 2-D, and the 3-D layers of an inflated model (models.inflate)


def _feature_map(x: Any) -> torch.Tensor | None:
    """The feature map a module consumed or produced, 2-D or 3-D (None for lists of features, scalars, ...)."""
    if isinstance(x, tuple) and x:
        x = x[0]
    return x if isinstance(x, torch.Tensor) and x.ndim in (4, 5) else None


def _trace_strides(encoder: nn.Module, size: int = 32) -> dict[nn.Module, tuple[int, int]]:
    """Run one dummy image (or volume) through ``encoder``; return each module's (input, output) stride."""
    first_conv = next(m for m in encoder.modules() if isinstance(m, _CONVS))
    spatial = 2 if isinstance(first_conv, nn.Conv2d) else 3  # an inflated (3-D) encoder takes volumes
    ref = next(encoder.parameters())
    x = torch.zeros(1, first_conv.in_channels, *(size,) * spatial, device=ref.device, dtype=ref.dtype)
    strides: dict[nn.Module, tuple[int, int]] = {}

    def record(module: nn.Module, args: Any, output: Any) -> None:
        t_in, t_out = _feature_map(args), _feature_map(output)
        if t_in is not None and t_out is not None and module not in strides:
            strides[module] = (size // t_in.shape[-1], size // t_out.shape[-1])

    handles = [m.register_forward_hook(record) for m in encoder.modules()]
    was_training = encoder.training
    try:
        encoder.eval()  # eval: the dummy pass must not touch BatchNorm running statistics
        with torch.no_grad():
            encoder(x)
    finally:
        for h in handles:
            h.remove()
        encoder.train(was_training)
    return strides


def encoder_stages(model: nn.Module) -> list[ModuleGroup]:
    """Split an smp model's encoder into its stages, shallow to deep.

    Stage ``k`` holds the layers that compute at 1/2**k of the input resolution, those that produce
    smp's feature map ``k``. smp 0.6 encoders list only their two deepest stages in ``get_stages()``,
    so the stages are found by tracing: one dummy forward pass records each module's input and output
    stride, and a module that changes resolution at most once belongs to the stage of its output. This
    works for any smp encoder (ResNet, VGG, timm EfficientNet, ``tu-``) and its 3-D inflation.

    Parameters the forward pass never uses (``conv_head``/``bn2`` of smp 0.6 ``timm-efficientnet``)
    go to a last group, ``"encoder.unused"``. Only stages that own parameters are returned: ResNet and
    EfficientNet have stages 1-5; VGG has stages 0-4 (its deepest feature is a bare max-pool).
    """
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise TypeError("expected a segmentation_models_pytorch model with an `.encoder`")
    depth = getattr(encoder, "_depth", 5)
    if getattr(encoder, "output_stride", 2**depth) < 2**depth:
        raise NotImplementedError("dilated encoders (output_stride < 32) are not supported")
    strides = _trace_strides(encoder, size=2**depth)  # deepest feature map: 1x1
    stages: dict[int, ModuleGroup] = {}
    unused = ModuleGroup(UNUSED)

    def stage(stride: int) -> ModuleGroup:
        k = int(math.log2(stride))
        return stages.setdefault(k, ModuleGroup(f"encoder.stage{k}"))

    def assign(module: nn.Module, prefix: str) -> None:
        children = [(n, c) for n, c in module.named_children() if any(True for _ in c.parameters())]
        s = strides.get(module)
        if s is not None and (not children or s[1] <= 2 * s[0]):
            stage(s[1]).add(module, prefix)  # one resolution step at most: a single stage
        elif not children:
            unused.add(module, prefix)  # never ran (or produced no feature map)
        else:  # spans several stages: split it into its children
            (stage(s[0]) if s else unused).add(module, prefix, recurse=False)
            for name, child in children:
                assign(child, f"{prefix}.{name}")

    assign(encoder, "encoder")
    groups = [stages[k] for k in sorted(stages) if stages[k].params]
    return groups + ([unused] if unused.params else [])


def model_groups(model: nn.Module) -> list[ModuleGroup]:
    """Encoder stages (shallow to deep), then one group per other part: decoder, segmentation head, ...

    A model without an encoder (MONAI's U-Net) is one group per child module. Used in chapter 7.
    """
    groups = encoder_stages(model) if hasattr(model, "encoder") else []
    for name, child in model.named_children():
        if name != "encoder" and any(True for _ in child.parameters()):
            group = ModuleGroup(name)
            group.add(child, name)
            groups.append(group)
    return groups


# --- freezing --------------------------------------------------------------------------------------


def _keep_in_eval(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen BatchNorm: normalise with, and never update, running statistics."""
    module.training = False


def _reinit_(module: nn.Module) -> None:
    """Random re-initialisation, He-normal for convolutions as torchvision and timm do for these encoders."""
    for m in module.modules():
        if isinstance(m, _CONVS):  # for an ACSConv, fan_out counts its 2-D kernel, as the kernel it is
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, _BatchNorm | nn.Linear | nn.GroupNorm | nn.LayerNorm):
            m.reset_parameters()  # BatchNorm: weight 1, bias 0 and fresh running statistics


# --- strategy and plan -----------------------------------------------------------------------------


@dataclass
class StrategyPlan:
    """What a strategy decided for one model: groups, learning-rate multipliers, unfreezing schedule."""

    strategy: Strategy
    groups: list[ModuleGroup]
    lr_scales: dict[str, float]  # group name -> multiplier of the base learning rate
    schedule: dict[int, list[str]]  # epoch -> groups unfrozen at the start of that epoch
    _hooks: dict[str, list[RemovableHandle]] = field(default_factory=dict, repr=False)

    # -- freezing ----------------------------------------------------------------------------------
    def frozen(self) -> list[str]:
        return [g.name for g in self.groups if g.name in self._hooks]

    def freeze(self, name: str) -> None:
        group = self.group(name)
        for p in group.params.values():
            p.requires_grad_(False)
            p.grad = None  # a stale gradient would still be applied by the optimizer
        self._hooks[name] = [bn.register_forward_pre_hook(_keep_in_eval) for bn in group.batchnorms()]

    def unfreeze(self, name: str) -> None:
        for p in self.group(name).params.values():
            p.requires_grad_(True)
        for handle in self._hooks.pop(name, []):
            handle.remove()

    def group(self, name: str) -> ModuleGroup:
        return next(g for g in self.groups if g.name == name)

    # -- what the trainer calls ---------------------------------------------------------------------
    def param_groups(self, base_lr: float, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimizer parameter groups: one per model group, split into weights and norm/bias.

        Frozen groups are included: their ``.grad`` stays ``None``, so torch optimizers skip them (no
        update, no weight decay, no state), and once unfrozen the optimizer and any LR scheduler already
        know them. Weight decay applies to weight matrices and kernels (``ndim > 1``) only, never to
        biases and normalisation parameters, whose scale carries no capacity to regularise.
        """
        out = []
        for g in self.groups:
            if g.name == UNUSED:
                continue  # never receives a gradient
            scale = self.lr_scales[g.name]
            decay = [p for p in g.params.values() if p.ndim > 1]
            no_decay = [p for p in g.params.values() if p.ndim <= 1]
            for suffix, params, wd in (("", decay, weight_decay), (".no_decay", no_decay, 0.0)):
                if params:
                    out.append({"name": g.name + suffix, "params": params, "lr": base_lr * scale,
                                "lr_scale": scale, "weight_decay": wd})
        return out

    def on_epoch_start(self, model: nn.Module, epoch: int) -> list[str]:
        """Unfreeze every group scheduled at or before ``epoch`` (so resuming works); return their names.

        ``model`` is only there for symmetry with :meth:`train_mode`. DistributedDataParallel registers
        the trainable parameters when it is built: re-wrap the model whenever this returns names.
        """
        due = [n for e in sorted(self.schedule) if e <= epoch for n in self.schedule[e]]
        newly = [n for n in due if n in self._hooks]
        for name in newly:
            self.unfreeze(name)
        return newly

    def train_mode(self, model: nn.Module) -> nn.Module:
        """``model.train()``, then put the frozen BatchNorm layers back into eval mode."""
        model.train()
        for name in self.frozen():
            for bn in self.group(name).batchnorms():
                bn.eval()
        return model

    def counts(self, model: nn.Module | None = None) -> dict[str, Any]:
        """Trainable / frozen parameter counts, now (they change with gradual unfreezing)."""
        per_group = {
            g.name: {"params": g.numel, "trainable": g.name not in self._hooks,
                     "lr_scale": self.lr_scales[g.name]}
            for g in self.groups
        }
        trainable = sum(v["params"] for v in per_group.values() if v["trainable"])
        total = sum(p.numel() for p in model.parameters()) if model is not None else \
            sum(v["params"] for v in per_group.values())
        return {"trainable": trainable, "frozen": total - trainable, "total": total, "per_group": per_group}

    def describe(self) -> str:
        """A small table: one line per group with its size, state, LR multiplier and unfreeze epoch."""
        when = {n: e for e, names in self.schedule.items() for n in names}
        lines = [f"strategy {self.strategy.name}: {self.strategy.summary()}",
                 f"{'group':<22}{'params':>12}  {'state':<10}{'lr x':>9}  unfrozen at epoch"]
        for name, c in self.counts()["per_group"].items():
            state = "trainable" if c["trainable"] else "frozen"
            lines.append(f"{name:<22}{c['params']:>12,}  {state:<10}{c['lr_scale']:>9.3g}  {when.get(name, '')}".rstrip())
        return "\n".join(lines)


@dataclass(frozen=True)
class Strategy:
    """A transfer-learning strategy: one point of the design space of chapter 7."""

    name: str
    reinit_encoder: bool = False  # throw the pretrained encoder weights away (the scratch baseline)
    frozen_stages: int | None = 0  # shallow encoder stages frozen for the whole run; None = all
    unfreeze: Mapping[int, int] | None = None  # epoch -> number of deepest stages trainable (encoder frozen)
    encoder_lr_scale: float = 1.0  # learning-rate multiplier of every encoder stage
    lr_decay: float | None = None  # and of the deepest stage x decay, the next x decay**2, ...

    @property
    def needs_encoder(self) -> bool:
        """Whether the strategy freezes or slows encoder stages (a model without an encoder cannot follow it)."""
        return (self.frozen_stages != 0 or self.unfreeze is not None or self.encoder_lr_scale != 1.0
                or self.lr_decay is not None)

    def summary(self) -> str:
        parts = ["encoder re-initialised" if self.reinit_encoder else "pretrained encoder"]
        if self.unfreeze is not None:
            parts.append(f"encoder frozen, deepest stages unfrozen {dict(self.unfreeze)}")
        elif self.frozen_stages is None:
            parts.append("encoder frozen")
        elif self.frozen_stages:
            parts.append(f"first {self.frozen_stages} encoder stages frozen")
        if self.encoder_lr_scale != 1.0:
            parts.append(f"encoder lr x{self.encoder_lr_scale:g}")
        if self.lr_decay is not None:
            parts.append(f"layer-wise lr decay {self.lr_decay:g}")
        return ", ".join(parts)

    def apply(self, model: nn.Module) -> StrategyPlan:
        """Freeze / re-initialise ``model`` in place and return the plan the trainer follows."""
        groups = model_groups(model)
        stages = [g.name for g in groups if g.name.startswith("encoder.stage")]
        if not stages and self.needs_encoder:
            raise ValueError(f"strategy {self.name!r} acts on encoder stages, and {type(model).__name__} has no "
                             "encoder; use full_finetune or scratch")
        deepest_first = stages[::-1]
        if self.reinit_encoder and hasattr(model, "encoder"):  # without one, the model is built from scratch
            _reinit_(model.encoder)

        lr_scales = {g.name: 1.0 for g in groups}
        for i, name in enumerate(deepest_first):
            decay = self.lr_decay ** (i + 1) if self.lr_decay is not None else 1.0
            lr_scales[name] = self.encoder_lr_scale * decay

        if self.unfreeze is not None:  # everything in the encoder starts frozen
            frozen, schedule, done = list(stages), {}, 0
            for epoch, n in sorted(self.unfreeze.items()):
                n = min(n, len(stages))
                if n > done:
                    schedule[epoch] = deepest_first[done:n]
                    done = n
        else:
            k = len(stages) if self.frozen_stages is None else min(self.frozen_stages, len(stages))
            frozen, schedule = stages[:k], {}

        plan = StrategyPlan(self, groups, lr_scales, schedule)
        for g in groups:
            plan.unfreeze(g.name)  # start from a known state: everything trainable
        for name in [*frozen, *([UNUSED] if any(g.name == UNUSED for g in groups) else [])]:
            plan.freeze(name)  # unused parameters never get a gradient: count them as frozen
        return plan


# --- registry: the named points of the design space -------------------------------------------------


def _scratch(**kw: Any) -> Strategy:
    """Random encoder weights, everything trainable: the no-transfer baseline."""
    return Strategy("scratch", reinit_encoder=True, **kw)


def _frozen_encoder(**kw: Any) -> Strategy:
    """Pretrained encoder as a fixed feature extractor; only decoder and head learn."""
    return Strategy("frozen_encoder", frozen_stages=None, **kw)


def _frozen_stages(k: int = 2, **kw: Any) -> Strategy:
    """Freeze the ``k`` shallowest encoder stages (generic edges and textures), train the rest."""
    return Strategy("frozen_stages", frozen_stages=k, **kw)


def _gradual_unfreezing(every: int = 2, schedule: Mapping[int, int] | None = None, **kw: Any) -> Strategy:
    """Decoder and head first; then one more encoder stage, deepest first, every ``every`` epochs.

    ``schedule`` overrides ``every`` with an explicit {epoch: number of deepest stages trainable}.
    """
    if schedule is None:
        schedule = {every * i: i for i in range(1, 7)}  # 6 covers every smp encoder (VGG: stages 0-5)
    return Strategy("gradual_unfreezing", unfreeze=dict(schedule), **kw)


def _discriminative_lr(decay: float = 0.5, **kw: Any) -> Strategy:
    """Layer-wise LR decay: decoder/head at the base LR, each shallower encoder stage ``decay`` x slower."""
    return Strategy("discriminative_lr", lr_decay=decay, **kw)


def _full_finetune(encoder_lr_scale: float = 1.0, **kw: Any) -> Strategy:
    """Everything trainable; optionally a smaller learning rate for the whole encoder."""
    return Strategy("full_finetune", encoder_lr_scale=encoder_lr_scale, **kw)


STRATEGIES: dict[str, Callable[..., Strategy]] = {
    "scratch": _scratch,
    "frozen_encoder": _frozen_encoder,
    "frozen_stages": _frozen_stages,
    "gradual_unfreezing": _gradual_unfreezing,
    "discriminative_lr": _discriminative_lr,
    "full_finetune": _full_finetune,
}


def list_strategies() -> list[str]:
    """Names of the registered strategies. Used in chapter 7."""
    return sorted(STRATEGIES)


def strategy_factory(name: str) -> Callable[..., Strategy]:
    """The factory registered as ``name`` in :data:`STRATEGIES`."""
    return lookup(STRATEGIES, name, "strategy")


def get_strategy(name: str, **params: Any) -> Strategy:
    """Build a named strategy, e.g. ``get_strategy("frozen_stages", k=2)``. Used in chapters 1, 7, 8 and 9."""
    return strategy_factory(name)(**params)
