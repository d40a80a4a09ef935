"""The errors the package raises on purpose: each one is something the user can fix, in one line.

``cli.main`` prints a :class:`MedsegError` as ``medseg CMD: error: MESSAGE`` (exit status 2); any
other exception is a bug and keeps its traceback. Subclasses live where the problem is found
(``data.errors.DataError``, ``models.checkpoint.CheckpointError``).
"""

from __future__ import annotations

__all__ = ["ConfigError", "MedsegError", "RunError"]


class MedsegError(Exception):
    """Base of the package's deliberate errors: the message names the file, key or value at fault."""


class ConfigError(MedsegError, ValueError):
    """A config key or value is wrong; the message names the key (e.g. ``optim.lr``)."""


class RunError(MedsegError, RuntimeError):
    """A run folder cannot be used: it is locked by another process, or holds a run already."""
