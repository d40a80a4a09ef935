"""Looking a name up in a registry, with one "unknown X; did you mean" message for every registry.

The config turns :func:`lookup`'s ``KeyError`` into an error that names the config key.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import TypeVar

__all__ = ["lookup"]

T = TypeVar("T")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def lookup(table: Mapping[str, T], name: str, what: str) -> T:
    """``table[name]``, or a ``KeyError`` that says what is known and what was probably meant."""
    try:
        return table[name]
    except (KeyError, TypeError):
        known = sorted(table)
        raise KeyError(f"unknown {what} {name!r}{did_you_mean(name, known)} (known: {', '.join(known)})") from None
