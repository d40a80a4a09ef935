"""The errors the package raises on purpose: each one is something the user can fix, in one line.

The command line (``cli.main``) prints any :class:`MedsegError` as ``medseg CMD: error: MESSAGE`` and
exits with status 2; everything else is a bug and keeps its traceback. The subclasses live where
the problem is found (:class:`ConfigError` here, re-exported by ``config``; ``data.errors.DataError``,
``models.checkpoint.CheckpointError``) and :class:`RunError` for run folders.
"""

from __future__ import annotations

__all__ = ["ConfigError", "MedsegError", "RunError"]


class MedsegError(Exception):
    """Base of the package's deliberate errors: the message names the file, key or value at fault."""


class ConfigError(MedsegError, ValueError):
    """A config key or value is wrong; the message names the key (e.g. ``optim.lr``)."""


class RunError(MedsegError, RuntimeError):
    """A run folder cannot be used: it is locked by another process, or holds a run already."""
