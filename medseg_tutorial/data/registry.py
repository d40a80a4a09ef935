"""A registry of datasets: a name maps to its description and an importer ``(root: Path) -> Iterator[Case]``.

The built-in importer modules and any plugin are imported here, once, on the first lookup. A
registration lasts as long as its process; to make a dataset exist in every process (a later
``medseg evaluate``), declare the module that registers it in the ``medseg_tutorial.datasets``
entry-point group of its package's ``pyproject.toml``::

    [project.entry-points."medseg_tutorial.datasets"]
    my_scans = "my_package.medseg_datasets"      # importing the module calls register_dataset

A plugin that fails to import is reported with a warning naming it. Images and masks in a plain
folder need no code at all: see :mod:`.folder`.
"""

from __future__ import annotations

import importlib
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from ..paths import data_root
from ._io import FileLayout
from .types import Case, DatasetInfo

Importer = Callable[[Path], Iterator[Case]]


@dataclass(frozen=True)
class _Entry:
    info: DatasetInfo
    importer: Importer


_REGISTRY: dict[str, _Entry] = {}
# modules of this package whose import registers datasets (by name: they import this module)
BUILTIN_IMPORTERS = ("phantom", "msd", "acdc", "lgg_covid")
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
        module = ep.value.split(":")[0].strip()
        try:
            importlib.import_module(module)
        except Exception as err:  # one broken plugin must not take the built-in datasets down with it
            warnings.warn(f"dataset plugin {ep.name!r} ({module}, entry point group {PLUGIN_GROUP!r}) failed to "
                          f"import and registers nothing: {type(err).__name__}: {err}", RuntimeWarning, stacklevel=3)


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
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(_REGISTRY))} (a dataset registered "
                       f"by your own code exists only in that Python process: declare its module in the entry-point "
                       f"group {PLUGIN_GROUP!r}, or use the 'folder' dataset)") from None


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
    return get_dataset(name, root).cases()


@dataclass(frozen=True)
class Dataset:
    """A dataset ready to read: its description, its importer and the folder the importer is given.

    ``source`` and ``settings`` (the importer's options) go into the prepared-cache key and the run
    folder, so that a dataset built from options (the ``folder`` dataset) needs no code later.
    """

    info: DatasetInfo
    importer: Importer
    path: Path  # what the importer is called with
    source: str  # resolved folder, or "<generated:NAME>"
    settings: Mapping[str, Any] = field(default_factory=dict)
    extra_files: tuple[Path, ...] = ()  # files outside the importer's listing that shape the data (a spacing CSV)
    hint: str = ""  # appended to "not found": how to obtain the data

    @property
    def generated(self) -> bool:
        """Whether the data are made in memory (nothing is read from disk)."""
        return self.source.startswith("<generated:")

    def require(self) -> None:
        """Raise ``FileNotFoundError`` (with how to get the data) unless the folder exists."""
        if not self.generated and not self.path.exists():
            raise FileNotFoundError(f"dataset {self.info.name!r} not found at {self.path}{self.hint}")

    def cases(self) -> Iterator[Case]:
        """The cases of the dataset, read by its importer."""
        self.require()
        return self.importer(self.path)

    def files(self) -> list[Path]:
        """The files the dataset is read from (what the prepared-cache key fingerprints).

        A :class:`~._io.FileLayout` lists exactly the files it reads; for another importer every file
        under the folder counts.
        """
        if self.generated:
            return list(self.extra_files)
        self.require()
        if isinstance(self.importer, FileLayout):
            items = self.importer.list_items(self.path)
            listed = [p for item in items for p in (item.image, item.mask, *item.extra_masks)]
        else:
            listed = [Path(d) / f for d, _, names in os.walk(self.path) for f in names]
        return sorted(set(listed) | set(self.extra_files))


def get_dataset(name: str, root: str | Path | None = None) -> Dataset:
    """The registered dataset ``name`` under the data root ``root`` (default ``$MEDSEG_DATA_ROOT``)."""
    entry = _entry(name)
    path = dataset_path(name, root)
    # a dataset without a download folder is generated in memory (the phantom)
    source = str(path.expanduser().resolve()) if entry.info.subdir else f"<generated:{name}>"
    hint = f"; set MEDSEG_DATA_ROOT or run `medseg data fetch {name}`"
    return Dataset(entry.info, entry.importer, path, source, hint=hint)
