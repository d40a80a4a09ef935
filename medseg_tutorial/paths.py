"""Where raw datasets live (``$MEDSEG_DATA_ROOT``, may be read-only) and where prepared slices, downloads
and weights are cached (``$MEDSEG_CACHE_DIR``); a function argument overrides either."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pooch

DATA_ROOT_ENV = "MEDSEG_DATA_ROOT"
CACHE_DIR_ENV = "MEDSEG_CACHE_DIR"


def cache_dir(path: str | os.PathLike | None = None) -> Path:
    """Return the writable cache directory (argument, then ``$MEDSEG_CACHE_DIR``, then the OS cache)."""
    chosen = path or os.environ.get(CACHE_DIR_ENV) or pooch.os_cache("medseg-tutorial")
    out = Path(chosen).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    return out


def data_root(path: str | os.PathLike | None = None) -> Path:
    """Return the raw-data root (argument, then ``$MEDSEG_DATA_ROOT``, then ``<cache>/datasets``)."""
    chosen = path or os.environ.get(DATA_ROOT_ENV)
    return Path(chosen).expanduser() if chosen else cache_dir() / "datasets"


# The checkout this package runs from (a source tree or an editable install): configs/, book/, .git
REPO = Path(__file__).resolve().parents[1]


def shown(path: str | os.PathLike) -> str:
    """``path`` as a reader can use it: relative to the working folder, ``~/...``, ``$MEDSEG_CACHE_DIR/...``
    or ``<tmp>/...``, instead of the absolute path of the machine that printed it. Used in chapter 10."""
    path = Path(path).expanduser().resolve()
    cache = os.environ.get(CACHE_DIR_ENV)
    bases = {"": Path.cwd(), "<tmp>/": Path(tempfile.gettempdir()), "~/": Path.home(),
             **({f"${CACHE_DIR_ENV}/": Path(cache).expanduser()} if cache else {})}
    found = []
    for name, base in bases.items():
        base = base.resolve()
        if len(base.parts) > 1 and path.is_relative_to(base):  # never relative to the filesystem root
            found.append((len(base.parts), name, path.relative_to(base)))
    if not found:
        return str(path)
    _, name, rel = max(found, key=lambda f: f[0])  # the closest folder: a cache inside $HOME shows as the cache
    return f"{name}{rel}" if rel.parts else name.rstrip("/") or "."
