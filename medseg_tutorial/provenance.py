"""Where a number came from: the commit, the hardware and the seeds of a run (every results row records them)."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .paths import REPO

__all__ = ["git_commit", "seed_everything"]


def git_commit(short: bool = False) -> str:
    """The commit of this package's checkout, or ``"unknown"``.

    ``"-dirty"`` is appended when tracked files differ from that commit: such a number was not made
    by the commit alone (run experiments from a clean ``git worktree``).
    """
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10,
                              check=True).stdout.strip()

    try:
        commit = git("rev-parse", *(["--short"] if short else []), "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit + "-dirty" if dirty else commit) if commit else "unknown"


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo`` on Linux, else what ``platform`` knows), or ``"cpu"``."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _cpu_count() -> int | None:
    try:
        return len(os.sched_getaffinity(0))  # what this process may use (containers, taskset)
    except AttributeError:  # macOS, Windows
        return os.cpu_count()


def hardware(device: torch.device) -> dict[str, Any]:
    """Device name, torch version and CPU count, for ``run.json``."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "cuda": torch.version.cuda, "cpu_count": _cpu_count(), "python": platform.python_version(),
            "platform": platform.platform()}


def hardware_label(hw: dict[str, Any]) -> str:
    """One line for a results table: the GPU's name, or ``"<CPU model>, N CPUs"``."""
    if not str(hw.get("device", "")).startswith("cpu"):
        return str(hw.get("device_name") or hw.get("device", ""))
    return f"{hw.get('device_name') or cpu_name()}, {hw.get('cpu_count')} CPUs"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (the legacy global RNG is what third-party code draws from)
    torch.manual_seed(seed)


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
