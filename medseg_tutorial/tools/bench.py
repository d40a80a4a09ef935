"""Benchmarks: how fast does our training step run, next to the loop a typical tutorial shows?

Four things are timed in ONE process, interleaved (A, B, C, D, A, B, C, D, ...) so that a noisy
neighbour or a CPU that heats up slows every contestant alike:

* ``trainer``      the step of :mod:`medseg_tutorial.train` (its data loader, autocast,
                   channels-last, fused optimizer, gradient clipping, scheduler);
* ``plain``        a hand-written smp + albumentations loop in float32: a ``Dataset`` that runs
                   albumentations per item, a ``DataLoader``, ``model(x)``, loss, ``backward``, ``step``;
* ``loader``       our data loader alone (no model): can it feed the step?
* ``plain_loader`` the plain loop's data loader alone.

Both training loops use the same model (architecture, encoder, random weights), the same slices,
batch size, loss and device. Each repeat times ``steps`` steps after ``warmup`` untimed ones; the
report gives the median over repeats, of wall time and of the process's CPU time (steadier on a
shared machine). A step includes drawing its batch from the loader, which is stateful, so the
steps are timed with ``time.perf_counter`` around CUDA synchronisation rather than with
``torch.utils.benchmark.Timer`` (made for re-running one statement). FLOPs of one training step are 3 x the forward FLOPs
that ``torch.utils.flop_counter.FlopCounterMode`` counts (see :func:`training_flops`); it counts
convolutions and matrix products, the bulk of the work, so achieved TFLOP/s is a slight underestimate. On CUDA it is set against a stated
dense bf16 peak of the card; on a CPU the fraction of peak is reported as n/a.

Command line: ``medseg bench --device cpu --size 64`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import copy
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from .. import __version__
from ..builders import build_loss, build_network, build_optimizer, build_scheduler, build_step
from ..config import Config, load_config
from ..device import autocast_dtype, select_device
from ..files import write_json
from ..loaders import build_data
from ..provenance import cpu_name

__all__ = ["BenchConfig", "run_bench"]

# Dense (no sparsity) bf16/fp16 tensor-core peaks from the vendors' data sheets, in TFLOP/s.
# The first entry whose key appears in torch.cuda.get_device_name() is used.
PEAK_TFLOPS: dict[str, float] = {
    "H100 PCIe": 756.0,
    "H100": 989.0,  # SXM
    "H200": 989.0,
    "A100": 312.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,  # fp16 tensor cores (no bf16)
    "T4": 65.0,  # fp16
}


@dataclass
class BenchConfig:
    """What to benchmark; ``None`` picks a device-appropriate default."""

    device: str = "auto"
    encoder: str = "efficientnet-lite0"
    arch: str = "unet"
    dataset: str = "phantom"  # any registered dataset; the phantom needs no download
    size: int | None = None  # slice side: 256 on CUDA, 64 on CPU
    batch_size: int | None = None  # 32 on CUDA, 8 on CPU
    amp: str = "auto"  # trainer only: auto = bf16 on recent GPUs, fp32 on CPU
    channels_last: bool | None = None  # trainer only; default on CUDA
    compile: bool = False  # trainer only: torch.compile the model
    num_workers: int = 0  # loader workers of both loops
    repeats: int = 5
    steps: int = 10  # timed steps per repeat
    warmup: int = 3  # untimed steps before the first repeat (compile, cuDNN autotuning, caches)
    smp_kwargs: dict[str, Any] = field(default_factory=dict)  # e.g. encoder_depth for a tiny model
    threads: int | None = None  # torch CPU threads (None: torch's default, one per core)


# ==================================================================================================
# The two loops
# ==================================================================================================


def _train_config(bc: BenchConfig, device: torch.device) -> Config:
    size = bc.size or (256 if device.type == "cuda" else 64)
    batch = bc.batch_size or (32 if device.type == "cuda" else 8)
    channels_last = bc.channels_last if bc.channels_last is not None else device.type == "cuda"
    return load_config({
        "data": {"dataset": bc.dataset, "size": [size, size], "augment": "light"},
        "model": {"arch": bc.arch, "encoder": bc.encoder, "weights": None, "smp_kwargs": dict(bc.smp_kwargs)},
        "optim": {"name": "adamw", "lr": 1e-3, "scheduler": "cosine"},
        "train": {"batch_size": batch, "amp": bc.amp, "device": str(device), "channels_last": channels_last,
                  "compile": bc.compile, "num_workers": bc.num_workers, "epochs": 1, "clip_grad": 1.0},
        "output": {"tensorboard": False},
    })


def _cycle(loader: DataLoader) -> Iterator[Any]:
    while True:
        yield from loader


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def trainer_step(cfg: Config, device: torch.device) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(step, load_only)`` built with the trainer's own builders and its :class:`~medseg_tutorial.step.TrainStep`.

    ``step`` runs one optimizer step exactly as the loop in ``train.train`` does (with
    ``accumulate=1``); ``load_only`` just draws the next batch from the same kind of loader.
    """
    data = build_data(cfg)
    data.start_epoch(0)
    model, plan = build_network(cfg, device)
    optimizer = build_optimizer(cfg, plan)
    scheduler = build_scheduler(cfg, optimizer, steps_per_epoch=10**6)
    amp_dtype = autocast_dtype(cfg.train.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    net = torch.compile(model) if cfg.train.compile else model
    train_step = build_step(cfg, net, optimizer, scaler, amp_dtype, build_loss(cfg).to(device))
    batches, spare = _cycle(data.loader), _cycle(build_data(cfg).loader)
    net.train()
    plan.train_mode(model)

    def step() -> None:
        batch = next(batches)
        train_step(batch["image"], batch["mask"])
        scheduler.step()

    def load_only() -> None:
        next(spare)

    return step, load_only


class PlainDataset(Dataset):
    """What most tutorials write: arrays in, albumentations per item, tensors out."""

    def __init__(self, images: np.ndarray, masks: np.ndarray) -> None:
        self.images, self.masks = images, masks
        self.transform = A.Compose([  # the same light augmentations as data.train_transform
            A.HorizontalFlip(p=0.5),
            A.Affine(rotate=(-10, 10), scale=(0.9, 1.1), mask_interpolation=cv2.INTER_NEAREST, p=0.7),
            A.RandomBrightnessContrast(0.1, 0.1, p=0.5),
        ])

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.transform(image=self.images[i].transpose(1, 2, 0), mask=self.masks[i])
        image = torch.from_numpy(np.ascontiguousarray(out["image"].transpose(2, 0, 1), dtype=np.float32))
        return image, torch.from_numpy(out["mask"]).long()


def plain_step(cfg: Config, model: nn.Module, device: torch.device) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(step, load_only)`` of the float32 tutorial loop, on a copy of ``model``'s initial weights."""
    table = build_data(cfg).table  # the prepared slices (cached): the same data
    dataset = PlainDataset(table.images, table.masks)

    def loader() -> DataLoader:
        return DataLoader(dataset, batch_size=cfg.train.batch_size, shuffle=True, drop_last=True,
                          num_workers=cfg.train.num_workers)

    model = model.to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.optim.lr)
    loss_fn = build_loss(cfg).to(device)
    batches, spare = _cycle(loader()), _cycle(loader())
    model.train()
    running = 0.0

    def step() -> None:
        nonlocal running
        x, y = next(batches)
        x, y = x.to(device), y.to(device)
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        running += loss.item()  # the usual running-loss print

    def load_only() -> None:
        next(spare)

    return step, load_only


# ==================================================================================================
# FLOPs and timing
# ==================================================================================================


def training_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one training step of ``model`` on batch ``x``: 3 x the counted forward FLOPs.

    The backward pass of a convolution or linear layer costs two products of the forward's size
    (gradients for the input and for the weights), hence the usual factor 3. The backward pass is
    not counted directly because ``FlopCounterMode`` prices a grouped (depthwise) convolution's
    backward as if it were dense: for ``groups=32`` it reports 34 x the forward instead of 3 x,
    which would inflate EfficientNet's TFLOP/s about threefold (chapter 9 shows the check).
    """
    model = copy.deepcopy(model)  # a forward pass in train mode would move BatchNorm's running stats
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return 3 * int(counter.get_total_flops())


def peak_tflops(device: torch.device) -> tuple[float | None, str]:
    """(dense bf16 peak in TFLOP/s, device name); the peak is None on CPUs and unknown cards."""
    if device.type != "cuda":
        return None, cpu_name()
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None), name


def _time(fn: Callable[[], None], steps: int, device: torch.device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for ``steps`` calls of ``fn``."""
    _sync(device)
    start, cpu = time.perf_counter(), time.process_time()
    for _ in range(steps):
        fn()
    _sync(device)
    return time.perf_counter() - start, time.process_time() - cpu


def run_bench(bc: BenchConfig, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run the interleaved benchmark; returns the JSON-ready report (see :func:`format_report`)."""
    say = progress or (lambda _: None)
    if bc.threads:
        torch.set_num_threads(bc.threads)
    device = select_device(bc.device)
    cfg = _train_config(bc, device)
    torch.manual_seed(0)
    step, load = trainer_step(cfg, device)
    torch.manual_seed(0)  # the plain loop starts from the same random weights
    plain_model, _ = build_network(cfg, torch.device("cpu"))
    p_step, p_load = plain_step(cfg, plain_model, device)
    contestants = {"trainer": step, "plain": p_step, "loader": load, "plain_loader": p_load}

    say(f"warm-up: {bc.warmup} steps each")
    for fn in contestants.values():
        for _ in range(bc.warmup):
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in contestants}
    cpu_seconds: dict[str, list[float]] = {name: [] for name in contestants}
    for r in range(bc.repeats):
        for name, fn in contestants.items():  # interleaved: A, B, C, D, A, B, C, D, ...
            wall, cpu = _time(fn, bc.steps, device)
            seconds[name].append(wall)
            cpu_seconds[name].append(cpu)
        say(f"repeat {r + 1}/{bc.repeats}: " + ", ".join(f"{n} {s[-1]:.2f}s" for n, s in seconds.items()))

    batch, (size, _) = cfg.train.batch_size, cfg.data.size
    x = torch.randn(batch, cfg.model.in_channels, size, size, device=device)
    flops = training_flops(plain_model, x)
    peak, device_name = peak_tflops(device)
    results = {}
    for name, runs in seconds.items():
        per_step = statistics.median(runs) / bc.steps
        row: dict[str, Any] = {"images_per_s": batch / per_step, "ms_per_step": 1000 * per_step,
                               "repeats_s": [round(s, 4) for s in runs],
                               # CPU time of this process: on a busy shared CPU it varies less than wall time
                               "cpu_ms_per_step": 1000 * statistics.median(cpu_seconds[name]) / bc.steps}
        if name in ("trainer", "plain"):
            row["tflops"] = flops / per_step / 1e12
            row["fraction_of_peak"] = row["tflops"] / peak if peak else None
        results[name] = row
    return {
        "config": {**asdict(bc), "size": size, "batch_size": batch, "channels_last": cfg.train.channels_last,
                   "device": str(device)},
        "amp": str(autocast_dtype(cfg.train.amp, device) or "float32").replace("torch.", ""),
        "device_name": device_name,
        "peak_tflops": peak,
        "peak_note": "dense bf16 tensor-core peak of the card" if peak else "n/a",
        "flops_per_step": flops,
        "results": results,
        "speedup_trainer_vs_plain": results["plain"]["ms_per_step"] / results["trainer"]["ms_per_step"],
        # > 1: the loader produces images faster than the step consumes them
        "loader_headroom": results["loader"]["images_per_s"] / results["trainer"]["images_per_s"],
        "environment": {"torch": torch.__version__, "package_version": __version__,
                        "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
                        "python": platform.python_version()},
    }


def format_report(report: dict[str, Any]) -> str:
    """The table ``medseg bench`` prints."""
    c = report["config"]
    lines = [f"{c['arch']}/{c['encoder']}, {c['size']}x{c['size']}, batch {c['batch_size']}, "
             f"{report['device_name']} ({c['device']}), amp {report['amp']}, channels_last {c['channels_last']}, "
             f"compile {c['compile']}, {c['repeats']} repeats x {c['steps']} steps (median)",
             f"FLOPs per training step (forward + backward): {report['flops_per_step'] / 1e9:.2f} GFLOP; "
             f"peak: {report['peak_tflops'] or 'n/a'} ({report['peak_note']})",
             "",
             f"{'':<20}{'images/s':>10}{'ms/step':>10}{'CPU ms':>9}{'TFLOP/s':>10}{'of peak':>9}"]
    for name, label in (("trainer", "trainer step"), ("plain", "plain loop (fp32)"),
                        ("loader", "our loader alone"), ("plain_loader", "plain loader alone")):
        r = report["results"][name]
        tflops = f"{r['tflops']:.3f}" if "tflops" in r else ""
        frac = "" if "tflops" not in r else f"{r['fraction_of_peak']:.1%}" if r["fraction_of_peak"] else "n/a"
        lines.append(f"{label:<20}{r['images_per_s']:>10.1f}{r['ms_per_step']:>10.1f}{r['cpu_ms_per_step']:>9.1f}"
                     f"{tflops:>10}{frac:>9}")
    env = report["environment"]
    load = env["load_average"]
    lines += ["",
              f"speed-up of the trainer step over the plain loop: {report['speedup_trainer_vs_plain']:.2f}x; our loader delivers "
              f"{report['loader_headroom']:.1f}x the images the trainer step consumes",
              f"torch {env['torch']}, {env['threads']} threads, {env['cpu_count']} CPUs"
              + (f", load average {load[0]:.1f}" if load else "")]
    return "\n".join(lines)


def save_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write the report as JSON (atomically)."""
    return write_json(path, report)
