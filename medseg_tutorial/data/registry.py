"""A registry of datasets: a name maps to its description and an importer.

An importer is a function ``(root: Path) -> Iterator[Case]`` that reads one download layout.
New datasets register themselves with :func:`register_dataset`, as smp does for encoders.

The built-in importer modules and any plugin (a package that declares a module in the
``medseg_tutorial.datasets`` entry-point group) are imported here, once, on the first lookup: no
other module has to import an importer for its datasets to exist.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from ..paths import data_root
from .types import Case, DatasetInfo

Importer = Callable[[Path], Iterator[Case]]


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    importer: Importer


_REGISTRY: dict[str, _Entry] = {}
# modules of this package whose import registers datasets (by name: they import this module)
BUILTIN_IMPORTERS = ("phantom", "msd", "acdc", "paired")
PLUGIN_GROUP = "medseg_tutorial.datasets"
_loaded = False


def _load_importers() -> None:
    """Import the built-in importer modules and the plugins, once."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_IMPORTERS:
        importlib.import_module(f"{__package__}.{module}")
    for ep in entry_points(group=PLUGIN_GROUP):
        importlib.import_module(ep.value.split(":")[0])


def register_dataset(info: DatasetInfo) -> Callable[[Importer], Importer]:
    """Decorator: register ``importer`` under ``info.name``."""

    def deco(importer: Importer) -> Importer:
        if info.name in _REGISTRY:
            raise ValueError(f"dataset {info.name!r} is already registered")
        _REGISTRY[info.name] = _Entry(info, importer)
        return importer

    return deco


def _entry(name: str) -> _Entry:
    _load_importers()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def list_datasets() -> list[str]:
    """Names of all registered datasets. Used in chapter 1."""
    _load_importers()
    return sorted(_REGISTRY)


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` registered under ``name``. Used in chapters 1, 2, 3, 4 and 5."""
    return _entry(name).info


def dataset_importer(name: str) -> Importer:
    """The importer function registered under ``name``."""
    return _entry(name).importer


def dataset_path(name: str, root: str | Path | None = None) -> Path:
    """Folder of dataset ``name`` under the data root (``root`` overrides ``$MEDSEG_DATA_ROOT``)."""
    return data_root(root) / _entry(name).info.subdir


def iter_cases(name: str, root: str | Path | None = None) -> Iterator[Case]:
    """Read dataset ``name`` case by case from its download layout under the data root. Used in chapters 1 and 3."""
    entry = _entry(name)
    path = dataset_path(name, root)
    if entry.info.subdir and not path.exists():
        raise FileNotFoundError(
            f"dataset {name!r} not found at {path}; set MEDSEG_DATA_ROOT or run `medseg data fetch {name}`"
        )
    return entry.importer(path)
