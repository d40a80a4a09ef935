"""The training loop (chapter 8): read :func:`train` top to bottom; below it, only its resumable state.

* **2-D, 2.5-D and 3-D** train in the same loop (chapter 10): ``build_data`` hands it batches of
  slices or of volume patches; :func:`validate` scores per-patient 3-D Dice either way.
* **Resuming.** ``last.pt`` (model, optimizer, scheduler, grad scaler, RNG states, counters) is written
  atomically after every epoch; ``resume=True`` repeats an interrupted epoch exactly (bit for bit on
  CPU with ``train.deterministic``).
* **Faults.** A NaN/inf loss stops the run with :class:`NonFiniteLossError`; the last good checkpoint is kept.
* **Many GPUs.** Under ``torchrun`` the same code runs data-parallel (``distributed.py``).
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .builders import (
    build_loss,
    build_network,
    build_optimizer,
    build_scheduler,
    build_step,
    input_normalizer,
)
from .config import Config, ConfigError, diff
from .data.volumes import VolumeTable
from .device import autocast_dtype, enable_determinism, select_device
from .distributed import (
    DistInfo,
    all_gather_objects,
    all_reduce_mean,
    barrier,
    cleanup_distributed,
    init_distributed,
    shard,
    sync_buffers,
    unwrap,
    wrap_model,
)
from .evaluate import per_patient_summary, predict, predict_volume, volume_rows
from .files import remove_stale_temporaries
from .loaders import TrainData, batches_per_epoch, build_data
from .metrics import per_patient_scores, summarize_scores
from .models.checkpoint import CheckpointError, atomic_torch_save
from .optim import lr_range_test
from .provenance import seed_everything
from .runlog import RunLog
from .step import NonFiniteLossError

__all__ = ["train"]

STATE_FORMAT = "medseg-train-state"
# keys that may change when resuming: a run can be extended or given a different patience
RESUMABLE_CHANGES = ("train.epochs", "train.patience", "train.checkpoint_every", "output.tensorboard")


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

    @classmethod
    def of(cls, run_dir: Path, state: TrainState, seconds: float) -> RunResult:
        return cls(run_dir, state.best_score, state.best_epoch, state.epoch, state.stopped_early,
                   pd.DataFrame(state.history), seconds, run_dir / "best.pt", run_dir / "last.pt")


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
    seconds: float = 0.0  # wall time of the run up to this checkpoint, every call so far (a kill loses none)


def train(
    cfg: Config, run_dir: str | os.PathLike | None = None, resume: bool = False, progress: bool | None = None
) -> RunResult:
    """Train ``cfg`` into ``run_dir`` (default ``output.run_dir``); ``resume`` continues from ``last.pt``.

    ``progress``: tqdm bars (``None``: when stderr is a terminal). Used in chapters 7 and 8.
    """
    started = time.perf_counter()
    cfg = cfg.resolved()
    tc = cfg.train  # short name: read on almost every line below
    device, dist_info, amp_dtype = start_process(cfg)
    show = dist_info.is_main and (sys.stderr.isatty() if progress is None else progress)
    run_dir = Path(run_dir if run_dir is not None else cfg.format_run_dir())
    log = RunLog(run_dir, cfg, dist_info, resume)  # locks the run folder: one writer at a time
    state, status, earlier = TrainState(), "failed", 0.0
    try:
        data = build_data(cfg, dist_info, show, device=device)
        seed_everything(tc.seed)  # right before the weights are drawn: a cache miss or hit cannot shift them
        model, plan = build_network(cfg, device)
        lr = choose_lr(cfg, data, model, plan, device, run_dir, log)
        optimizer = build_optimizer(cfg, plan, lr)
        batches = batches_per_epoch(len(data), tc.accumulate, tc.max_steps_per_epoch)
        scheduler = build_scheduler(cfg, optimizer, batches // tc.accumulate)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)  # fp16 only
        if resume:
            state = load_training_state(run_dir / "last.pt", cfg, model, optimizer, scheduler, scaler, dist_info)
            plan.on_epoch_start(model, state.epoch - 1)  # re-unfreeze what earlier epochs unfroze
        log.start(device, amp_dtype, data, plan.counts(model), resumed=resume, extra={"lr": lr})
        earlier = state.seconds or log.info.get("wall_time_s", 0.0)  # run.json: a last.pt of an older version
        compiled = torch.compile(model) if tc.compile else model
        step = build_step(cfg, wrap_model(compiled, dist_info, device), optimizer, scaler, amp_dtype,
                          build_loss(cfg).to(device))
        for epoch in tqdm(range(state.epoch, tc.epochs), desc="epochs", initial=state.epoch, total=tc.epochs,
                          disable=not show):
            if state.stopped_early:
                break
            epoch_start = time.perf_counter()
            unfrozen = plan.on_epoch_start(model, epoch)  # gradual unfreezing (also replays it on resume)
            if unfrozen:
                log.say(f"epoch {epoch}: unfreezing {', '.join(unfrozen)}")
                step.model = wrap_model(compiled, dist_info, device)  # DDP must learn the new trainable params
            data.start_epoch(epoch)  # shuffle order and augmentation depend only on (seed, epoch)
            step.model.train()
            plan.train_mode(model)  # frozen BatchNorm layers stay in eval mode

            bar = tqdm(islice(data.loader, batches), total=batches, desc=f"epoch {epoch}", leave=False,
                       disable=not show)
            for i, batch in enumerate(bar):
                if i < state.batch:
                    continue  # resumed mid-epoch: these batches were trained before the checkpoint
                stepping = (i + 1) % tc.accumulate == 0  # the last micro-batch of an optimizer step
                loss = step(batch["image"], batch["mask"], stepping, where=f"epoch {epoch}, batch {i}")
                state.loss_sum += loss
                if stepping:
                    state.step += 1
                    if scheduler.medseg_interval == "step":
                        scheduler.step()
                    if tc.checkpoint_every and state.step % tc.checkpoint_every == 0:
                        state.batch, state.seconds = i + 1, earlier + time.perf_counter() - started
                        save_training_state(run_dir / "last.pt", cfg, model, optimizer, scheduler, scaler,
                                            state, dist_info, log)
                bar.set_postfix(loss=f"{loss:.4f}")
            bar.close()

            # --- end of epoch: validate, keep the best, checkpoint, stop early? -----------------------
            train_loss = all_reduce_mean(state.loss_sum / batches, dist_info)
            state.batch, state.loss_sum = 0, 0.0
            row = {"epoch": epoch, "train_loss": train_loss, "lr": max(g["lr"] for g in optimizer.param_groups)}
            if (epoch + 1) % tc.val_every == 0 or epoch + 1 == tc.epochs:
                sync_buffers(model, dist_info)  # BatchNorm statistics of rank 0 everywhere, as in best.pt
                score, per_class = validate(model, data, cfg, device, dist_info, amp_dtype)
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
            state.epoch, state.seconds = epoch + 1, earlier + time.perf_counter() - started
            save_training_state(run_dir / "last.pt", cfg, model, optimizer, scheduler, scaler, state, dist_info, log)
            log.epoch_end(row, state.best_score, state.best_epoch, state.stopped_early)
        status = "completed"
    except BaseException as exc:  # record why the run ended (Ctrl-C included), then re-raise
        if isinstance(exc, NonFiniteLossError):
            exc.args = (f"{exc}; {log.last_good_checkpoint()}",)
        status = f"failed: {type(exc).__name__}: {exc}"
        raise
    finally:
        log.finish(status, state.best_score, state.best_epoch, state.epoch,
                   state.stopped_early, earlier + time.perf_counter() - started)
        log.close()
        cleanup_distributed(dist_info)

    return RunResult.of(run_dir, state, time.perf_counter() - started)


def start_process(cfg: Config) -> tuple[torch.device, DistInfo, torch.dtype | None]:
    """The device, the process group (under ``torchrun``) and the autocast dtype of this process."""
    device = select_device(cfg.train.device)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)  # one GPU per process
    if cfg.train.deterministic:
        enable_determinism(device)
    return device, dist_info, autocast_dtype(cfg.train.amp, device)


def validate(model: nn.Module, data: TrainData, cfg: Config, device: torch.device, dist_info: DistInfo,
             amp_dtype: torch.dtype | None) -> tuple[float, dict[str, float]]:
    """Mean foreground Dice per patient (3-D: a patient's slices are stacked), and per class. Each process
    predicts its share; the shares are gathered so every process takes the same early-stopping decision."""
    rows = shard(data.val_rows, dist_info)
    # the plain model: DDP's forward would try to synchronise buffers between processes
    preds = predict_rows(unwrap(model), data.table, rows, cfg, device, amp_dtype)
    parts = all_gather_objects((rows, preds), dist_info)
    rows = np.concatenate([r for r, _ in parts])
    preds = [p for _, part in parts for p in part]  # one label map per slice, or per volume
    table = data.table
    if isinstance(table, VolumeTable):  # each volume scored in 3-D, then a patient's volumes averaged
        summary = per_patient_summary([volume_rows(p, table.masks[r], table.patient_ids[r], table.volume_ids[r],
                                                   table.info) for p, r in zip(preds, rows)]).attrs["summary"]
    else:
        scores = per_patient_scores(np.stack(preds), table.masks[rows], table.patient_ids[rows],
                                    table.info.num_classes, slice_index=table.slice_index[rows],
                                    class_names=table.info.class_names)
        summary = summarize_scores(scores)
    per_class = {str(r["class_name"]): float(r["dice_mean"]) for _, r in summary.iterrows() if r["class"] != "mean"}
    return float(summary.attrs["mean_dice"]), per_class


def predict_rows(model: nn.Module, table: Any, rows: np.ndarray, cfg: Config, device: torch.device,
                 amp_dtype: torch.dtype | None) -> np.ndarray | list[np.ndarray]:
    """Label maps of the table's ``rows``: slices (N, H, W) by :func:`predict`, or volumes by :func:`predict_volume`."""
    kw = dict(normalize=input_normalizer(cfg), amp_dtype=amp_dtype, channels_last=cfg.train.channels_last)
    if isinstance(table, VolumeTable):
        return [predict_volume(model, table.images[r], cfg.loss.mode, device, cfg.data.patch, cfg.train.batch_size, **kw)
                for r in rows]
    return predict(model, table.images[rows], cfg.loss.mode, device, cfg.train.batch_size, **kw)


def choose_lr(cfg: Config, data: TrainData, model: nn.Module, plan: Any, device: torch.device, run_dir: Path,
              log: RunLog) -> float:
    """``optim.lr``, or with ``optim.lr_find`` the range test's suggestion (kept in ``lr_find.json`` for resumes)."""
    finder = cfg.optim.lr_find
    if finder is None:
        return cfg.optim.lr
    saved = run_dir / "lr_find.json"
    if saved.is_file():  # a resumed run trains at the LR it started with
        return float(json.loads(saved.read_text())["lr"])
    data.start_epoch(0)
    result = lr_range_test(model, data.loader, build_loss(cfg).to(device), cfg.optim.name, finder.start_lr,
                           finder.end_lr, finder.num_iter, device=device, suggest=finder.suggest,
                           params=plan.param_groups(1.0, cfg.optim.weight_decay),
                           weight_decay=cfg.optim.weight_decay, normalize=input_normalizer(cfg))
    run_dir.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"lr": result.suggestion, "lrs": result.lrs, "losses": result.losses,
                                 "settings": asdict(finder)}) + "\n")
    log.say(f"LR range test: suggested lr {result.suggestion:.3g}")
    return result.suggestion


# ==================================================================================================
# The resumable state: last.pt
# ==================================================================================================


def _rng_state() -> dict[str, Any]:
    """Every RNG this process draws from, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002  (the global RNG)
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
    scaler: torch.amp.GradScaler, state: TrainState, dist_info: DistInfo, log: RunLog,
) -> None:
    """Write ``last.pt`` atomically (rank 0 only; every rank's RNG state is included), then ``metrics.csv``."""
    rng = all_gather_objects(_rng_state(), dist_info)  # a collective: every rank must call it
    if dist_info.is_main:
        atomic_torch_save({
            "format": STATE_FORMAT, "version": 1, "config": cfg.to_dict(), "state": asdict(state),
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng,
        }, path)
        log.write_history(state.history)
    barrier(dist_info)


def load_training_state(
    path: Path, cfg: Config, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any,
    scaler: torch.amp.GradScaler, dist_info: DistInfo,
) -> TrainState:
    """Restore everything :func:`save_training_state` wrote; returns the counters."""
    if not path.is_file():
        raise FileNotFoundError(f"cannot resume: {path} does not exist (start the run without resume)")
    if dist_info.is_main:
        remove_stale_temporaries(path.parent)  # what a writer killed mid-write left behind
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickle or tensor data: torch raises many types
        raise CheckpointError(f"{path}: cannot resume, the training state is truncated or corrupt "
                              f"({type(err).__name__}); delete it to train afresh") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a training-state checkpoint (format {ckpt.get('format')!r})")
    try:  # a checkpoint from an older version lacks newer keys: they take their defaults
        saved = Config.from_dict(ckpt["config"]).to_dict()
    except ConfigError as err:
        raise ValueError(f"cannot resume {path}: its config is not valid in this version ({err})") from err
    changed = [k for k in diff(saved, cfg.to_dict()) if k not in RESUMABLE_CHANGES]
    if changed:
        raise ValueError(f"cannot resume {path}: the config changed in {', '.join(changed)}")
    unwrap(model).load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    rng = ckpt["rng"]
    _set_rng_state(rng[dist_info.rank] if len(rng) == dist_info.world_size else rng[0])
    return TrainState(**ckpt["state"])
