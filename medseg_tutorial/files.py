"""Writing files so that a crash never leaves half of one: the one atomic writer of the package.

Every file that something later reads back goes through :func:`atomic_write`, so a reader sees the
old file or the new one, never a mix; a killed writer leaves at most a ``.NAME.*.tmp`` file.
"""

from __future__ import annotations

import csv
import json
import os
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import RunError

__all__ = ["atomic_write"]  # write_json, write_csv and exclusive_lock are the package's own helpers


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file next to ``path`` (``mode`` ``"wb"`` or ``"w"``); on success fsync and rename it
    over ``path``, on an exception remove it (``path`` is left as it was)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # same folder: os.replace is then a rename on one filesystem; a unique name, so concurrent writers never collide
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, mode.replace("w", "x"), **({} if "b" in mode else {"newline": "", "encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # readable like a normally created file (caches may be shared)
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is None and err.errno is not None:  # a full disk mid-write names no file: say which
            raise OSError(err.errno, err.strerror, str(path)) from err
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Replace ``path`` with ``obj`` as indented JSON, atomically."""
    with atomic_write(path, "w") as f:
        f.write(json.dumps(obj, indent=2, default=str) + "\n")
    return Path(path)


def write_csv(path: str | os.PathLike, rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Replace ``path`` with ``rows`` as CSV, atomically; columns default to every key, in first-seen order."""
    columns = list(columns) if columns is not None else list(dict.fromkeys(k for row in rows for k in row))
    with atomic_write(path, "w") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` for the ``with`` block; ``RunError`` naming ``what`` if it is taken
    (``wait``: block until the other holder is done instead).

    The lock dies with its process, so a killed run never leaves a stale lock behind.
    """
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks; one process per folder is then the user's job
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "another process"
            raise RunError(f"{what} is in use by {owner}; wait for it to finish or choose another folder") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete the ``.NAME.*.tmp`` files killed writers left in ``folder``; call it only where no other
    process writes there (e.g. under a run folder's lock)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
