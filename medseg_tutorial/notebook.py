"""What the first cell of every chapter calls: seeds, plot style, and a record of the environment.

The book promises that every number it shows names its hardware and software; ``setup()`` prints
them at the top of each chapter.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ._version import __version__
from .paths import cache_dir, data_root
from .provenance import git_commit, seed_everything


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
    datasets: tuple[str, ...] = ()  # the registered datasets found under the data root

    def __str__(self) -> str:
        # what a reader can use, not the build machine's paths (env.data_root has the folder)
        return (
            f"medseg-tutorial {self.package_version} (commit {self.commit}), Python {self.python}, "
            f"torch {self.torch} on {self.device} ({self.cpu_threads} CPU threads)\n"
            f"datasets found under the data root ($MEDSEG_DATA_ROOT): {', '.join(self.datasets) or 'none yet'}"
        )


def device_name() -> str:
    """Human-readable accelerator name, or the CPU model."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "Apple MPS"
    return platform.processor() or platform.machine() or "CPU"


def setup(seed: int = 0, quiet: bool = False, datasets: Sequence[str] = ()) -> Environment:
    """Seed every RNG, set a readable plot style, report the environment, and fetch missing data.

    ``datasets`` are the public datasets the chapter cannot do without: each missing one is
    downloaded (checksum-verified, cached) into the data root; if that is impossible, a
    :class:`~medseg_tutorial.data.DataError` says why and how to get it, before any other cell runs.

    Used in chapters 1-10.
    """
    import torch

    seed_everything(seed)
    try:
        import matplotlib.pyplot as plt

        plt.rcParams.update({"figure.dpi": 110, "axes.grid": False, "image.cmap": "gray"})
    except ImportError:  # plotting is optional for scripts
        pass
    env = Environment(
        package_version=__version__,
        commit=git_commit(short=True),
        python=platform.python_version(),
        torch=torch.__version__,
        device=device_name(),
        cpu_threads=torch.get_num_threads(),
        data_root=data_root(),
        cache_dir=cache_dir(),
        datasets=_present(),
    )
    if not quiet:
        print(env)
    for name in datasets:
        require_dataset(name, say=(lambda _: None) if quiet else print)
    return env


def require_dataset(name: str, say: Callable[[str], None] = print) -> None:
    """Make sure dataset ``name`` is under the data root, downloading it if it is public."""
    from .data.errors import DataError
    from .data.registry import dataset_info, dataset_path
    from .tools.catalog import ensure_dataset

    if ensure_dataset(name, say=say):
        say(f"{name}: ready (licence {dataset_info(name).licence}; citation on the datasets page)")
    else:
        raise DataError(dataset_path(name), f"this chapter needs {name}, which is neither here nor downloadable "
                        f"now (see the message above); `medseg data fetch {name}` gets it")


def _present() -> tuple[str, ...]:
    from .data import dataset_info, list_datasets

    return tuple(n for n in list_datasets() if dataset_info(n).subdir and dataset_available(dataset_info(n).subdir))


def medseg(command: str, check: bool = True) -> str:
    """Run a ``medseg ...`` command line in its own process, as a terminal would, and print what it prints.

    The notebook shows the exact command a reader types; a failing command raises with its output.
    Used on the "Your own data" page.
    """
    import shlex
    import subprocess
    import sys

    args = shlex.split(command)
    if args and args[0] == "medseg":
        args = args[1:]
    print(f"$ medseg {shlex.join(args)}")
    done = subprocess.run([sys.executable, "-m", "medseg_tutorial.cli", *args], capture_output=True, text=True)
    output = (done.stdout + done.stderr).rstrip()
    print(output)
    if check and done.returncode != 0:
        raise RuntimeError(f"medseg {args[0] if args else ''} exited with {done.returncode}: {output[-500:]}")
    return output


def dataset_available(subdir: str) -> bool:
    """Whether ``subdir`` exists under the data root (chapters fall back to committed results if not).

    Used in chapters 1, 2, 3, 4 and 5.
    """
    return (data_root() / subdir).exists()


def fast_mode() -> bool:
    """True when ``MEDSEG_BOOK_FAST=1``: live training cells shrink further (used by CI smoke runs).

    Used in chapters 5, 6, 7 and 8.
    """
    return os.environ.get("MEDSEG_BOOK_FAST") == "1"
