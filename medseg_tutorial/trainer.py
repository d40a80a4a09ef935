"""The training loop: read :func:`train` top to bottom; everything else in this file is a helper.

One epoch is::

    for each batch:    forward (under autocast) -> loss -> backward (scaled)
    every `accumulate` batches: unscale -> clip -> optimizer step -> scheduler step
    end of epoch:      validate (per-patient 3-D Dice) -> keep the best -> checkpoint -> early stop?

Around that loop sit the pieces that make a run trustworthy:

* **Reproducibility.** One seed fixes weight init, the shuffling of every epoch and the
  augmentation of every epoch; ``train.deterministic`` also asks torch for deterministic kernels.
* **Resuming.** ``last.pt`` holds the model, optimizer, scheduler, grad scaler, RNG states and
  counters, written atomically at the end of every epoch. ``train(cfg, run_dir, resume=True)``
  continues from it; because the order and augmentation of an epoch depend only on (seed, epoch),
  a resumed run repeats an interrupted epoch exactly (bit for bit on CPU in deterministic mode).
* **Faults.** A NaN/inf loss stops the run with :class:`NonFiniteLossError`; the last good
  checkpoint is kept.
* **Many GPUs.** Under ``torchrun`` the same code runs data-parallel (``distributed.py``).

Command line (used by ``torchrun`` and by the tests)::

    python -m medseg_tutorial.trainer configs/phantom.yaml preset=quick train.epochs=3 --run-dir runs/x
    torchrun --standalone --nproc_per_node=2 -m medseg_tutorial.trainer configs/acdc.yaml preset=full
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ._version import __version__
from .activations import decode
from .config import Config, ConfigError, load_config
from .data.gpu_augment import DeviceAugment, DeviceBatchIterator
from .data.splits import Split, label_fraction, load_split, patient_split, save_split
from .data.torch_data import SegmentationDataset, eval_transform, seed_worker, train_transform
from .data.types import SliceTable
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    shard,
    sync_buffers,
    train_sampler,
    unwrap,
    wrap_model,
)
from .losses import build_loss
from .metrics import per_patient_scores, summarize_scores
from .models import atomic_torch_save, build_model, input_normalization, normalize_input, save_checkpoint
from .optim import build_optimizer, build_scheduler
from .strategies import StrategyPlan, get_strategy

__all__ = [
    "NonFiniteLossError",
    "RunResult",
    "TrainState",
    "autocast_dtype",
    "main",
    "predict",
    "select_device",
    "train",
]

STATE_FORMAT = "medseg-train-state"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the batch and the last good checkpoint."""


@dataclass
class RunResult:
    """What a finished run reports (the files in ``run_dir`` hold the details)."""

    run_dir: Path
    best_score: float  # best validation mean foreground Dice (per patient, 3-D)
    best_epoch: int  # 0-based epoch of best.pt
    epochs_run: int  # epochs completed, over all resumptions
    stopped_early: bool
    history: pd.DataFrame  # metrics.csv
    wall_time: float  # seconds of this call
    best_checkpoint: Path
    last_checkpoint: Path


@dataclass
class TrainState:
    """The counters a resumed run needs besides the model and optimizer."""

    epoch: int = 0  # next epoch to run
    batch: int = 0  # batches of `epoch` already done (only non-zero in mid-epoch checkpoints)
    step: int = 0  # optimizer steps so far
    loss_sum: float = 0.0  # sum of this epoch's batch losses so far (mid-epoch checkpoints)
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0  # validations in a row without improvement (early stopping)
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)  # the rows of metrics.csv


# ==================================================================================================
# The loop
# ==================================================================================================


def train(
    cfg: Config, run_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool | None = None
) -> RunResult:
    """Train ``cfg`` and write its run folder; returns the best validation score and where things are.

    Args:
        cfg: the experiment (``load_config``).
        run_dir: output folder; default ``cfg.output.run_dir`` with its placeholders filled in.
        resume: continue from ``run_dir/last.pt`` (the config must match, except ``train.epochs``,
            ``train.patience`` and ``train.checkpoint_every``).
        progress: tqdm progress bars; ``None`` shows them only when stderr is a terminal.
    """
    started = time.perf_counter()
    cfg = cfg.resolved()
    tc = cfg.train  # short name: read on almost every line below

    # --- processes, device, precision, reproducibility ---------------------------------------------
    device = select_device(tc.device)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)  # one GPU per process
    amp_dtype = autocast_dtype(tc.amp, device)
    if tc.deterministic:
        enable_determinism(device)
    show = dist_info.is_main and (sys.stderr.isatty() if progress is None else progress)
    run_dir = Path(run_dir if run_dir is not None else cfg.format_run_dir())
    log = RunLog(run_dir, cfg, dist_info, show)

    # --- data, model, optimizer ----------------------------------------------------------------------
    data = build_data(cfg, dist_info, show, device=device)
    seed_everything(tc.seed)  # right before the weights are drawn: a cache miss or hit cannot shift them
    model, plan = build_network(cfg, device)
    normalize = input_normalizer(cfg, device)
    optimizer = build_optimizer(cfg.optim.name, plan.param_groups(cfg.optim.lr, cfg.optim.weight_decay),
                                lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay,
                                momentum=cfg.optim.momentum, **cfg.optim.params)
    batches = batches_per_epoch(len(data.loader), tc.accumulate, tc.max_steps_per_epoch)
    scheduler = build_scheduler(cfg.optim.scheduler, optimizer, epochs=tc.epochs,
                                steps_per_epoch=batches // tc.accumulate, warmup_steps=cfg.optim.warmup_steps,
                                min_lr_ratio=cfg.optim.min_lr_ratio, **cfg.optim.scheduler_params)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 only
    loss_fn = label_map_loss(build_loss(cfg.loss.name, cfg.loss.mode, **loss_kwargs(cfg)).to(device),
                             cfg.loss.mode, cfg.model.classes)
    state = TrainState()
    if resume:
        state = load_training_state(run_dir / "last.pt", cfg, model, optimizer, scheduler, scaler, dist_info)
        plan.on_epoch_start(model, state.epoch - 1)  # re-unfreeze what earlier epochs unfroze
    else:
        log.refuse_to_overwrite()
    log.start(device, amp_dtype, data, plan, model, resumed=resume)
    compiled = torch.compile(model) if tc.compile else model
    net = wrap_model(compiled, dist_info, device)
    autocast = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext()

    try:
        for epoch in tqdm(range(state.epoch, tc.epochs), desc="epochs", initial=state.epoch, total=tc.epochs,
                          disable=not show):
            if state.stopped_early:
                break
            epoch_start = time.perf_counter()
            unfrozen = plan.on_epoch_start(model, epoch)  # gradual unfreezing (also replays it on resume)
            if unfrozen:
                log.say(f"epoch {epoch}: unfreezing {', '.join(unfrozen)}")
                net = wrap_model(compiled, dist_info, device)  # DDP must learn the new trainable params
            data.start_epoch(epoch)  # shuffle order and augmentation depend only on (seed, epoch)
            net.train()
            plan.train_mode(model)  # frozen BatchNorm layers stay in eval mode

            bar = tqdm(data.loader, total=batches, desc=f"epoch {epoch}", leave=False, disable=not show)
            for i, batch in enumerate(bar):
                if i >= batches:
                    break
                if i < state.batch:
                    continue  # resumed mid-epoch: these batches were trained before the checkpoint
                x = batch["image"].to(device, non_blocking=True)
                y = batch["mask"].to(device, non_blocking=True)
                if tc.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                sync_now = (i + 1) % tc.accumulate == 0  # the last micro-batch of an optimizer step
                if dist_info.enabled:
                    net.require_backward_grad_sync = sync_now  # all-reduce gradients only when stepping
                with autocast:
                    loss = loss_fn(net(normalize(x)), y)
                loss_value = loss.item()  # waits for the GPU; cheap next to a segmentation forward pass
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(f"loss is {loss_value} at epoch {epoch}, batch {i}; "
                                             f"{log.last_good_checkpoint()}")
                scaler.scale(loss / tc.accumulate).backward()  # fp16: scale up so small grads survive
                state.loss_sum += loss_value
                if sync_now:
                    if tc.clip_grad is not None:
                        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                        nn.utils.clip_grad_norm_(model.parameters(), tc.clip_grad)
                    scaler.step(optimizer)  # skipped by the scaler if fp16 gradients overflowed
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    state.step += 1
                    if scheduler.medseg_interval == "step":
                        scheduler.step()
                    if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                        state.batch = i + 1
                        save_training_state(run_dir / "last.pt", cfg, model, optimizer, scheduler, scaler,
                                            state, dist_info)
                bar.set_postfix(loss=f"{loss_value:.4f}")
            bar.close()

            # --- end of epoch: validate, keep the best, checkpoint, stop early? -----------------------
            train_loss = all_reduce_mean(state.loss_sum / batches, dist_info)
            state.batch, state.loss_sum = 0, 0.0
            lr = max(g["lr"] for g in optimizer.param_groups)  # after the epoch's last scheduler step
            row = {"epoch": epoch, "train_loss": train_loss, "lr": lr}
            if (epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs:
                sync_buffers(model, dist_info)  # BatchNorm statistics of rank 0 everywhere, as in best.pt
                score, per_class = validate(net, data, cfg, device, dist_info, normalize, amp_dtype)
                row.update(val_dice=score, **{f"val_dice_{k}": v for k, v in per_class.items()})
                if scheduler.medseg_interval == "epoch" and not math.isnan(score):
                    scheduler.step(score)  # plateau: lower the LR when validation Dice stalls
                if score > state.best_score:  # NaN never compares greater: no best from an empty val set
                    state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
                    log.save_best(model, epoch, score)
                else:
                    state.bad_epochs += 1
                    state.stopped_early = tc.patience is not None and state.bad_epochs >= tc.patience
            row.update(time=time.perf_counter() - epoch_start, unfrozen=";".join(unfrozen),
                       trainable=plan.counts(model)["trainable"], step=state.step)
            state.history.append(row)
            state.epoch = epoch + 1
            save_training_state(run_dir / "last.pt", cfg, model, optimizer, scheduler, scaler, state, dist_info)
            log.epoch_end(row, state)
        log.finish("completed", state, time.perf_counter() - started)
    except BaseException as exc:  # record why the run ended (Ctrl-C included), then re-raise
        log.finish(f"failed: {type(exc).__name__}: {exc}", state, time.perf_counter() - started)
        raise
    finally:
        log.close()
        cleanup_distributed(dist_info)

    return RunResult(run_dir=run_dir, best_score=state.best_score, best_epoch=state.best_epoch,
                     epochs_run=state.epoch, stopped_early=state.stopped_early,
                     history=pd.DataFrame(state.history), wall_time=time.perf_counter() - started,
                     best_checkpoint=run_dir / "best.pt", last_checkpoint=run_dir / "last.pt")


# ==================================================================================================
# Device, precision, seeds
# ==================================================================================================


def select_device(name: str = "auto") -> torch.device:
    """``"auto"``: CUDA if available, then Apple's MPS, then the CPU; otherwise the named device."""
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"train.device={name!r} but CUDA is not available; use 'auto' or 'cpu'")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global RNG is what third-party code draws from)
    torch.manual_seed(seed)


def enable_determinism(device: torch.device) -> None:
    """Ask torch for deterministic kernels (slower; needed for bit-exact resumes)."""
    # cuBLAS needs a fixed workspace to be deterministic; the variable is read at the first cuBLAS call
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = False  # autotuning may pick a different algorithm each run
    torch.backends.cudnn.deterministic = True
    # On CPU every op we use has a deterministic version, so be strict. On GPUs a few backward
    # kernels have none; there torch warns instead of failing the run.
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")


# ==================================================================================================
# Data
# ==================================================================================================


@dataclass
class TrainData:
    """The prepared table, the patient split and the training loader of this process."""

    table: SliceTable
    split: Split
    train_rows: np.ndarray  # table rows of the (label-fraction) training patients
    val_rows: np.ndarray
    loader: DataLoader | DeviceBatchIterator  # the second with data.augment_on=device
    seed: int
    rank: int

    def start_epoch(self, epoch: int) -> None:
        """Make the shuffle order and augmentations of ``epoch`` a function of (seed, epoch, rank) alone."""
        if isinstance(self.loader, DeviceBatchIterator):
            self.loader.set_epoch(epoch)  # the same sampler permutation; a device generator for augmentation
            return
        self.loader.sampler.set_epoch(epoch)  # same permutation on every rank; each takes its share
        epoch_seed = int(np.random.SeedSequence([self.seed, epoch, self.rank]).generate_state(1)[0])
        self.loader.generator.manual_seed(epoch_seed)  # seeds the loader's worker processes
        transform = self.loader.dataset.transform
        if self.loader.num_workers == 0 and hasattr(transform, "set_random_seed"):
            transform.set_random_seed(epoch_seed)  # with workers, seed_worker does this per worker


def build_data(
    cfg: Config, dist_info: DistInfo, show: bool = False, device: torch.device | None = None
) -> TrainData:
    """Prepare (or load the cached) slices, split patients, and build the training loader.

    With ``data.augment_on=device`` the loader is a :class:`DeviceBatchIterator` holding the
    training slices on ``device`` (default: ``select_device(train.device)``).
    """
    dc, tc = cfg.data, cfg.train
    if not dist_info.is_main:
        barrier(dist_info)  # let rank 0 fill the cache first; the others then read it
    table = dc.prepare(progress=show)
    if dist_info.is_main:
        barrier(dist_info)
    split = load_split(dc.split_file) if dc.split_file else patient_split(table, dc.fractions, seed=dc.seed)
    missing = sorted(set(split.train + split.val) - set(table.patients))
    if missing:
        raise ValueError(f"data.split_file: patients not in dataset {dc.dataset!r}: {missing[:5]}")
    train_patients = label_fraction(split.train, dc.label_fraction, seed=dc.seed) if dc.label_fraction < 1 \
        else split.train
    train_rows, val_rows = table.rows_for(train_patients), table.rows_for(split.val)
    if dc.split_mode == "slice":
        train_rows, val_rows = leaky_slice_split(np.concatenate([train_rows, val_rows]), len(val_rows), dc.seed)
    if len(train_rows) == 0 or len(val_rows) == 0:
        raise ValueError(f"empty split: {len(train_rows)} training and {len(val_rows)} validation slices")

    if dc.augment_on == "device":
        n_share = math.ceil(len(train_rows) / dist_info.world_size)  # what DistributedSampler gives a rank
        loader = DeviceBatchIterator(
            table, train_rows, tc.batch_size, device if device is not None else select_device(tc.device),
            shuffle=True, drop_last=n_share > tc.batch_size, seed=tc.seed,
            augment=None if dc.augment == "none" else DeviceAugment(dc.size, dc.augment),
            num_replicas=dist_info.world_size, rank=dist_info.rank)
        return TrainData(table, split, train_rows, val_rows, loader, seed=tc.seed, rank=dist_info.rank)
    transform = eval_transform() if dc.augment == "none" else train_transform(dc.size, strength=dc.augment)
    dataset = SegmentationDataset(table, train_rows, transform)
    sampler = train_sampler(dataset, dist_info, seed=tc.seed)
    loader = DataLoader(
        dataset, batch_size=tc.batch_size, sampler=sampler, num_workers=tc.num_workers,
        pin_memory=torch.cuda.is_available(), generator=torch.Generator(), worker_init_fn=seed_worker,
        # a last batch of a single slice would break BatchNorm: drop the remainder unless it is all we have
        drop_last=len(sampler) > tc.batch_size,
    )
    return TrainData(table, split, train_rows, val_rows, loader, seed=tc.seed, rank=dist_info.rank)


def leaky_slice_split(rows: np.ndarray, n_val: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n_val`` validation slices at random from ``rows``: the WRONG split of chapter 3.

    Neighbouring slices of one volume look alike, so a model validated this way is scored on
    near-copies of its training images and the validation Dice is inflated.
    """
    shuffled = np.random.default_rng(seed).permutation(rows)
    return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])


def batches_per_epoch(n_batches: int, accumulate: int, max_steps: int | None) -> int:
    """Batches trained per epoch: whole optimizer steps only, at most ``max_steps`` of them."""
    steps = n_batches // accumulate if max_steps is None else min(n_batches // accumulate, max_steps)
    if steps == 0:
        raise ValueError(f"{n_batches} batches per epoch cannot fill one step of train.accumulate={accumulate}")
    return steps * accumulate


# ==================================================================================================
# Model, loss, input normalisation
# ==================================================================================================


def label_map_loss(loss_fn: nn.Module, mode: str, classes: int):
    """Our masks are label maps; a multi-label (per-class sigmoid) loss needs one channel per class."""
    if mode != "multilabel":
        return loss_fn
    return lambda logits, y: loss_fn(logits, F.one_hot(y.long(), classes).permute(0, 3, 1, 2).float())


def build_network(cfg: Config, device: torch.device) -> tuple[nn.Module, StrategyPlan]:
    """Build the model, apply the transfer-learning strategy, move it to ``device``."""
    mc = cfg.model
    model = build_model(mc.encoder, mc.weights, mc.in_channels, mc.classes, mc.arch, **mc.smp_kwargs)
    plan = get_strategy(cfg.strategy.name, **cfg.strategy.params).apply(model)  # freezes on the CPU copy
    memory_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    return model.to(device, memory_format=memory_format), plan


def normalization_stats(cfg: Config) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) applied to the inputs: the encoder's statistics, or the identity for ``input_norm: none``."""
    mc = cfg.model
    if mc.input_norm == "encoder":
        return input_normalization(mc.encoder, mc.weights, mc.in_channels)
    return (0.0,) * mc.in_channels, (1.0,) * mc.in_channels


def input_normalizer(cfg: Config, device: torch.device):
    """A function ``x -> (x - mean) / std`` on ``device`` (the identity for ``input_norm: none``)."""
    if cfg.model.input_norm == "none":
        return lambda x: x
    mean, std = normalization_stats(cfg)
    return lambda x: normalize_input(x, mean, std)


def loss_kwargs(cfg: Config) -> dict[str, Any]:
    """Keyword arguments of ``build_loss``: ``loss.params`` plus the class weights."""
    kw = dict(cfg.loss.params)
    if cfg.loss.weights is not None:
        kw["class_weights"] = list(cfg.loss.weights)
    return kw


# ==================================================================================================
# Validation
# ==================================================================================================


@torch.no_grad()
def predict(
    model: nn.Module,
    images: np.ndarray,
    mode: str,
    device: torch.device,
    batch_size: int = 16,
    normalize=None,
    amp_dtype: torch.dtype | None = None,
    channels_last: bool = False,
) -> np.ndarray:
    """Label maps ``(N, H, W)`` (uint8) for images ``(N, C, H, W)``; the model is put in eval mode."""
    model.eval()
    out = []
    for start in range(0, len(images), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size], dtype=np.float32)).to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else nullcontext():
            logits = model(normalize(x) if normalize else x)
        if mode == "multilabel":  # one label per pixel for the metrics: the class with the highest sigmoid
            labels = torch.sigmoid(logits.float()).argmax(1)
        else:
            labels = decode(logits.float(), mode)
        out.append(labels.to(torch.uint8).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, *images.shape[2:]), np.uint8)


def validate(
    net: nn.Module, data: TrainData, cfg: Config, device: torch.device, dist_info: DistInfo, normalize,
    amp_dtype: torch.dtype | None,
) -> tuple[float, dict[str, float]]:
    """Mean foreground Dice per patient (3-D: a patient's slices are stacked), and per class.

    Each process predicts its share of the validation slices; the shares are gathered so every
    process computes the same scores (and takes the same early-stopping decision).
    """
    rows = shard(data.val_rows, dist_info)
    # the plain model: DDP's forward would try to synchronise buffers between processes
    preds = predict(unwrap(net), data.table.images[rows], cfg.loss.mode, device, cfg.train.batch_size,
                    normalize, amp_dtype, cfg.train.channels_last)
    parts = all_gather_objects((rows, preds), dist_info)
    rows = np.concatenate([r for r, _ in parts])
    preds = np.concatenate([p for _, p in parts])
    table = data.table
    scores = per_patient_scores(preds, table.masks[rows], table.patient_ids[rows], table.info.num_classes,
                                slice_index=table.slice_index[rows], class_names=table.info.class_names)
    summary = summarize_scores(scores)
    per_class = {str(r["class_name"]): float(r["dice_mean"]) for _, r in summary.iterrows() if r["class"] != "mean"}
    return float(summary.attrs["mean_dice"]), per_class


# ==================================================================================================
# Checkpoints for resuming
# ==================================================================================================


def _rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002  (the global RNG, see above)
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, cached],
             "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(
    path: Path, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, state: TrainState, dist_info: DistInfo,
) -> None:
    """Write ``last.pt`` atomically (rank 0 only; every rank's RNG state is included)."""
    rng = all_gather_objects(_rng_state(), dist_info)  # a collective: every rank must call it
    if dist_info.is_main:
        atomic_torch_save({
            "format": STATE_FORMAT, "version": 1, "config": cfg.to_dict(), "state": asdict(state),
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
        }, path)
        write_csv(path.parent / "metrics.csv", state.history)
    barrier(dist_info)


# keys that may change when resuming: a run can be extended or given a different patience
RESUMABLE_CHANGES = ("train.epochs", "train.patience", "train.checkpoint_every", "output.tensorboard")


def load_training_state(
    path: Path, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, dist_info: DistInfo,
) -> TrainState:
    """Restore everything :func:`save_training_state` wrote; returns the counters."""
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (start the run without resume)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training-state checkpoint (format {ckpt.get('format')!r})")
    try:  # a checkpoint from an older version lacks newer keys: they take their defaults
        saved = Config.from_dict(ckpt["config"]).to_dict()
    except ConfigError as err:
        raise ValueError(f"cannot resume {path}: its config is not valid in this version ({err})") from err
    changed = [k for k in _diff(saved, cfg.to_dict()) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"cannot resume {path}: the config changed in {', '.join(changed)}")
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    _set_rng_state(rng[dist_info.rank] if len(rng) == dist_info.world_size else rng[0])
    return TrainState(**ckpt["state"])


def _diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [k for key in sorted(set(a) | set(b)) for k in _diff(a.get(key), b.get(key), f"{prefix}{key}.")]
    return [] if a == b else [prefix.rstrip(".")]


# ==================================================================================================
# Run folder: config, metadata, logs, best checkpoint
# ==================================================================================================


def write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite ``metrics.csv`` from the full history (small; atomic rename, so never half-written)."""
    columns = list(dict.fromkeys(k for row in rows for k in row))
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def git_commit() -> str:
    """The commit of the source tree this package runs from, or ``"unknown"``."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def hardware(device: torch.device) -> dict[str, Any]:
    """Device name, torch version and CPU count, for run.json."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_model() or device.type
    try:
        cpus = len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except AttributeError:  # macOS, Windows
        cpus = os.cpu_count()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_count": cpus, "python": platform.python_version(),
            "platform": platform.platform()}


def _cpu_model() -> str:
    try:  # Linux
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class RunLog:
    """Everything a run writes besides ``last.pt``: files on rank 0, console lines, TensorBoard."""

    def __init__(self, run_dir: Path, cfg: Config, dist_info: DistInfo, show: bool) -> None:
        self.run_dir, self.cfg, self.main, self.show = run_dir, cfg, dist_info.is_main, show
        self.info: dict[str, Any] = {}
        self.class_names: tuple[str, ...] = ()
        self.writer = None

    def say(self, message: str) -> None:
        """One line on stdout (rank 0); tqdm.write keeps progress bars intact."""
        if self.main:
            tqdm.write(message, file=sys.stdout)

    def refuse_to_overwrite(self) -> None:
        if (self.run_dir / "last.pt").exists():
            raise FileExistsError(f"{self.run_dir} already holds a run; resume it (resume=True / --resume) "
                                  "or choose another run_dir")

    def start(self, device: torch.device, amp_dtype: torch.dtype | None, data: TrainData, plan: StrategyPlan,
              model: nn.Module, resumed: bool) -> None:
        self.class_names = data.table.info.class_names
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.run_dir / "config.yaml")
        save_split(data.split, self.run_dir / "split.json", dataset=self.cfg.data.dataset)
        info = json.loads((self.run_dir / "run.json").read_text()) if resumed and (self.run_dir / "run.json").exists() \
            else {"created": _now(), "resumes": []}
        if resumed:
            info["resumes"].append(_now())
        info.update(package_version=__version__, git_commit=git_commit(), hardware=hardware(device),
                    world_size=int(os.environ.get("WORLD_SIZE", "1")), amp=str(amp_dtype).replace("torch.", ""),
                    dataset=self.cfg.data.dataset, train_slices=len(data.train_rows), val_slices=len(data.val_rows),
                    train_patients=len(set(data.table.patient_ids[data.train_rows])),
                    val_patients=len(data.split.val), parameters=plan.counts(model), status="running")
        self.info = info
        self._write_info()
        try:  # TensorBoard only if it is installed; metrics.csv is the record either way
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            SummaryWriter = None
        if SummaryWriter is not None and self.cfg.output.tensorboard:
            self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.say(f"run {self.run_dir}: {self.cfg.data.dataset}, {self.cfg.model.arch}/{self.cfg.model.encoder}, "
                 f"strategy {self.cfg.strategy.name}, {info['train_slices']} train / {info['val_slices']} val "
                 f"slices, device {device}, amp {info['amp']}")

    def epoch_end(self, row: dict[str, Any], state: TrainState) -> None:
        if not self.main:
            return
        val = f"val dice {row['val_dice']:.4f} (best {state.best_score:.4f} @ {state.best_epoch})" \
            if "val_dice" in row else "no validation"
        self.say(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, {val}, lr {row['lr']:.2e}, "
                 f"{row['time']:.1f}s" + (" (early stop)" if state.stopped_early else ""))
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch" and not math.isnan(value):
                    self.writer.add_scalar(key, value, row["epoch"])

    def save_best(self, model: nn.Module, epoch: int, score: float) -> None:
        if not self.main:
            return
        cfg = self.cfg
        mean, std = normalization_stats(cfg)
        save_checkpoint(self.run_dir / "best.pt", model, class_names=self.class_names,
                        normalization={"mean": mean, "std": std, "input_norm": cfg.model.input_norm},
                        provenance={"dataset": cfg.data.dataset, "strategy": cfg.strategy.name, "epoch": epoch,
                                    "val_dice": score, "git_commit": git_commit()},
                        extra={"config": cfg.to_dict(), "loss_mode": cfg.loss.mode, "size": list(cfg.data.size)})

    def last_good_checkpoint(self) -> str:
        last = self.run_dir / "last.pt"
        return f"the last good checkpoint is {last} (kept)" if last.exists() else "no checkpoint was written yet"

    def finish(self, status: str, state: TrainState, seconds: float) -> None:
        if not self.main or not self.info:
            return
        self.info.update(status=status, finished=_now(), best_score=state.best_score, best_epoch=state.best_epoch,
                         epochs_run=state.epoch, stopped_early=state.stopped_early,
                         wall_time_s=round(self.info.get("wall_time_s", 0.0) + seconds, 3))
        self._write_info()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def _write_info(self) -> None:
        tmp = self.run_dir / ".run.json.tmp"
        tmp.write_text(json.dumps(self.info, indent=2, default=str) + "\n")
        os.replace(tmp, self.run_dir / "run.json")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# ==================================================================================================
# Command line: python -m medseg_tutorial.trainer CONFIG [key=value ...] [--run-dir DIR] [--resume]
# ==================================================================================================


def main(argv: list[str] | None = None) -> int:
    """Train from the command line (what ``torchrun -m medseg_tutorial.trainer`` runs)."""
    parser = argparse.ArgumentParser(prog="python -m medseg_tutorial.trainer", description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a YAML config or a shipped name (phantom, msd_hippocampus, ...)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. preset=quick train.epochs=2")
    parser.add_argument("--run-dir", help="output folder (default: output.run_dir of the config)")
    parser.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pt")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: when stderr is a terminal)")
    args = parser.parse_args(argv)
    result = train(load_config(args.config, args.overrides), args.run_dir, resume=args.resume,
                   progress=args.progress)
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"run_dir": str(result.run_dir), "best_score": result.best_score,
                          "best_epoch": result.best_epoch, "epochs_run": result.epochs_run,
                          "wall_time_s": round(result.wall_time, 2)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
