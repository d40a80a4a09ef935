"""What the first cell of every chapter calls: seeds, plot style, and a record of the environment.

The book promises that every number it shows names its hardware and software; ``setup()`` prints
them at the top of each chapter.
"""

from __future__ import annotations

import os
import platform
import random
import subprocess
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ._paths import cache_dir, data_root
from ._version import __version__

REPO = Path(__file__).resolve().parents[1]


def results_dir() -> Path:
    """Folder of the committed results tables: the repo's book/results, else ./results (course copies)."""
    in_repo = REPO / "book" / "results"
    return in_repo if in_repo.is_dir() else Path.cwd() / "results"


@dataclass(frozen=True)
class Environment:
    """Where and on what a chapter ran."""

    package_version: str
    commit: str
    python: str
    torch: str
    device: str
    cpu_threads: int
    data_root: Path
    cache_dir: Path

    def __str__(self) -> str:
        return (
            f"medseg-tutorial {self.package_version} (commit {self.commit}), Python {self.python}, "
            f"torch {self.torch} on {self.device} ({self.cpu_threads} CPU threads)\n"
            f"data root: {self.data_root}\ncache: {self.cache_dir}"
        )


def git_commit(path: Path = REPO) -> str:
    """Short commit hash of the checkout, or "unknown" outside a git clone."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def device_name() -> str:
    """Human-readable accelerator name, or the CPU model."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "Apple MPS"
    return platform.processor() or platform.machine() or "CPU"


def setup(seed: int = 0, quiet: bool = False) -> Environment:
    """Seed every RNG, set a readable plot style and report the environment."""
    import torch

    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002  (seeds legacy global state that libraries still use)
    torch.manual_seed(seed)
    try:
        import matplotlib.pyplot as plt

        plt.rcParams.update({"figure.dpi": 110, "axes.grid": False, "image.cmap": "gray"})
    except ImportError:  # plotting is optional for scripts
        pass
    env = Environment(
        package_version=__version__,
        commit=git_commit(),
        python=platform.python_version(),
        torch=torch.__version__,
        device=device_name(),
        cpu_threads=torch.get_num_threads(),
        data_root=data_root(),
        cache_dir=cache_dir(),
    )
    if not quiet:
        print(env)
    return env


def dataset_available(subdir: str) -> bool:
    """Whether ``subdir`` exists under the data root (chapters fall back to committed results if not)."""
    return (data_root() / subdir).exists()


def fast_mode() -> bool:
    """True when ``MEDSEG_BOOK_FAST=1``: live training cells shrink further (used by CI smoke runs)."""
    return os.environ.get("MEDSEG_BOOK_FAST") == "1"
