"""Everything a run writes besides ``last.pt``: config, split, ``run.json`` provenance, ``metrics.csv``,
console lines, TensorBoard events and ``best.pt`` (chapter 8: what a run folder holds)."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ._version import __version__
from .builders import normalization_stats
from .config import Config
from .data.splits import save_split
from .distributed import DistInfo
from .errors import RunError
from .files import exclusive_lock, write_csv, write_json
from .models import save_checkpoint
from .paths import shown
from .provenance import git_commit, hardware, now

__all__ = ["RunLog"]


class RunLog:
    """The run folder's files on rank 0, and one console line per event."""

    def __init__(self, run_dir: Path, cfg: Config, dist_info: DistInfo, resume: bool = False) -> None:
        """``resume=False`` refuses a folder that already holds a run (``last.pt``)."""
        self.run_dir, self.cfg, self.main = run_dir, cfg, dist_info.is_main
        self.info: dict[str, Any] = {}
        self.dataset_info: dict[str, Any] = {}
        self.writer = None
        self._lock = ExitStack()
        if self.main:  # two runs never write one folder at once (released in close, or when the process dies)
            self._lock.enter_context(exclusive_lock(run_dir / ".lock", f"run folder {run_dir}"))
        if not resume and (run_dir / "last.pt").exists():
            self._lock.close()
            raise RunError(f"{run_dir} already holds a run; resume it (resume=True / --resume) "
                           "or choose another run_dir")

    def say(self, message: str) -> None:
        """One line on stdout (rank 0); tqdm.write keeps progress bars intact."""
        if self.main:
            tqdm.write(message, file=sys.stdout)

    def start(self, device: torch.device, amp_dtype: torch.dtype | None, data: Any, counts: dict[str, int],
              resumed: bool, extra: dict[str, Any] | None = None) -> None:
        """Write ``config.yaml``, ``split.json`` and ``run.json`` (status ``running``)."""
        self.dataset_info = dataclasses.asdict(data.table.info)  # travels in best.pt: prediction needs no registry
        if not self.main:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.cfg.save(self.run_dir / "config.yaml")
        save_split(data.split, self.run_dir / "split.json", dataset=self.cfg.data.dataset)
        old = self.run_dir / "run.json"
        info = json.loads(old.read_text()) if resumed and old.exists() else {"created": now(), "resumes": []}
        if resumed:
            info["resumes"].append(now())
        unit = "volumes" if self.cfg.model.dims == 3 else "slices"  # what a row of the training table is
        info.update(package_version=__version__, git_commit=git_commit(), hardware=hardware(device),
                    world_size=int(os.environ.get("WORLD_SIZE", "1")), amp=str(amp_dtype).replace("torch.", ""),
                    dataset=self.cfg.data.dataset, **{f"train_{unit}": len(data.train_rows),
                                                      f"val_{unit}": len(data.val_rows)},
                    train_patients=len(set(data.table.patient_ids[data.train_rows])),
                    val_patients=len(data.split.val), parameters=counts, status="running", **(extra or {}))
        self.info = info
        write_json(self.run_dir / "run.json", self.info)
        if self.cfg.output.tensorboard:
            with contextlib.suppress(ImportError):  # only if installed; metrics.csv is the record either way
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        self.say(f"run {shown(self.run_dir)}: {self.cfg.data.dataset}, {self.cfg.model.arch}/{self.cfg.model.encoder}, "
                 f"strategy {self.cfg.strategy.name}, {info[f'train_{unit}']} train / {info[f'val_{unit}']} val "
                 f"{unit}, device {device}, amp {info['amp']}")

    def epoch_end(self, row: dict[str, Any], best_score: float, best_epoch: int, stopped_early: bool) -> None:
        if not self.main:
            return
        val = f"val dice {row['val_dice']:.4f} (best {best_score:.4f} @ {best_epoch})" \
            if "val_dice" in row else "no validation"
        self.say(f"epoch {row['epoch']}: loss {row['train_loss']:.4f}, {val}, lr {row['lr']:.2e}, "
                 f"{row['time']:.1f}s" + (" (early stop)" if stopped_early else ""))
        if self.writer is not None:
            for key, value in row.items():
                if isinstance(value, (int, float)) and key != "epoch" and not math.isnan(value):
                    self.writer.add_scalar(key, value, row["epoch"])

    def write_history(self, history: list[dict[str, Any]]) -> None:
        """Rewrite ``metrics.csv`` from the full history (small; atomic, so never half-written)."""
        if self.main:
            write_csv(self.run_dir / "metrics.csv", history)

    def save_best(self, model: nn.Module, epoch: int, score: float) -> None:
        if not self.main:
            return
        cfg = self.cfg
        mean, std = normalization_stats(cfg)
        save_checkpoint(self.run_dir / "best.pt", model, class_names=self.dataset_info["class_names"],
                        normalization={"mean": mean, "std": std, "input_norm": cfg.model.input_norm},
                        provenance={"dataset": cfg.data.dataset, "strategy": cfg.strategy.name, "epoch": epoch,
                                    "val_dice": score, "git_commit": self.info.get("git_commit", "unknown")},
                        extra={"config": cfg.to_dict(), "loss_mode": cfg.loss.mode, "size": list(cfg.data.size),
                               "dataset_info": self.dataset_info})

    def last_good_checkpoint(self) -> str:
        last = self.run_dir / "last.pt"
        return f"the last good checkpoint is {last} (kept)" if last.exists() else "no checkpoint was written yet"

    def finish(self, status: str, best_score: float, best_epoch: int, epochs_run: int, stopped_early: bool,
               seconds: float) -> None:
        """Record how the run ended in ``run.json`` (also when it failed)."""
        if not self.main or not self.info:
            return
        self.info.update(status=status, finished=now(), best_score=best_score, best_epoch=best_epoch,
                         epochs_run=epochs_run, stopped_early=stopped_early,
                         wall_time_s=round(seconds, 3))
        write_json(self.run_dir / "run.json", self.info)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self._lock.close()
