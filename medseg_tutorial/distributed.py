"""Data-parallel training with ``torchrun``: small helpers so the training loop stays readable.

``torchrun --standalone --nproc_per_node=N -m medseg_tutorial.cli train ...`` starts N processes and
sets ``RANK``, ``LOCAL_RANK`` (the GPU on this machine) and ``WORLD_SIZE`` in each. Every process holds
a full copy of the model and trains on its own shard of each batch; DistributedDataParallel averages
the gradients, so the copies stay identical. In a plain ``python`` run every helper is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

__all__ = ["DistInfo"]  # init_distributed and wrap_model are for train() alone: torchrun goes through the CLI


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in a (possibly one-process) group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    backend: str | None = None  # "nccl" (CUDA) or "gloo" (CPU); None when not distributed

    @property
    def enabled(self) -> bool:
        """More than one process: gradients and metrics must be synchronised."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone logs, shows progress bars and writes files."""
        return self.rank == 0


def init_distributed(device_type: str | None = None) -> DistInfo:
    """Join the process group that ``torchrun`` set up (NCCL on CUDA, one GPU each, else Gloo), or
    return a single-process ``DistInfo``. ``device_type`` defaults to CUDA when available."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    on_cuda = (device_type or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    backend = "nccl" if on_cuda else "gloo"
    if on_cuda:  # object collectives and NCCL use the *current* device: set it before anything else
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)  # env:// rendezvous: MASTER_ADDR/PORT come from torchrun
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world_size, backend=backend)


def cleanup_distributed(info: DistInfo) -> None:
    """Leave the process group (call once, at the end of training)."""
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every process (e.g. until rank 0 has written a checkpoint)."""
    if info.enabled:
        dist.barrier()


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Wrap in DistributedDataParallel when distributed. DDP registers the trainable parameters *when it is
    built*, so the trainer wraps again after a strategy unfreezes layers."""
    if not info.enabled:
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain model inside DDP and/or ``torch.compile`` wrappers (for saving and strategies)."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return model


def train_sampler(dataset: Any, info: DistInfo, seed: int) -> DistributedSampler:
    """Rank r's part (positions r, r+N, ...) of one permutation per epoch, which depends only on
    ``(seed, epoch)`` once ``set_epoch`` is called: what lets an interrupted run resume exactly."""
    return DistributedSampler(dataset, num_replicas=info.world_size, rank=info.rank, shuffle=True,
                              seed=seed, drop_last=False)


def shard(indices: np.ndarray, info: DistInfo) -> np.ndarray:
    """This process's share of ``indices`` (every world_size-th one; no padding, no duplicates)."""
    return np.asarray(indices)[info.rank :: info.world_size]


def sync_buffers(model: nn.Module, info: DistInfo) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every process: after the last training
    batch each holds statistics updated with its own shard, and validation should use one set."""
    if info.enabled:
        for buffer in unwrap(model).buffers():
            dist.broadcast(buffer, src=0)


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order; ``[obj]`` for a single process."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def all_reduce_mean(value: float, info: DistInfo) -> float:
    """Mean of a number over processes (e.g. the training loss for the log)."""
    if not info.enabled:
        return float(value)
    device = torch.device("cuda", torch.cuda.current_device()) if info.backend == "nccl" else None
    t = torch.tensor([float(value)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return float(t.item()) / info.world_size
