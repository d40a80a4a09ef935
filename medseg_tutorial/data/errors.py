"""The one exception the data layer raises for bad input: it always names the file at fault."""

from __future__ import annotations

from pathlib import Path

from ..errors import MedsegError

# The kinds of problem an importer or the checker can find (``DataError.kind``, ``Problem.kind``).
PROBLEM_KINDS = {
    "missing_file": "a file or folder the layout promises is absent",
    "missing_mask": "an image has no mask",
    "unreadable": "a file is truncated, corrupt or not in the expected format",
    "shape_mismatch": "image and mask (or the slices of one case) disagree in shape",
    "bad_labels": "mask values outside the declared classes",
    "invalid": "the file reads but its content breaks the layout's rules",
    "duplicate": "one case is stored in several files",
    "empty": "no images found",
    "checksum": "a downloaded archive does not match its known checksum",
    "download": "an archive could not be downloaded (no network, server error, no space)",
}


class DataError(MedsegError, ValueError):
    """A dataset file is missing, unreadable or inconsistent.

    ``path`` is the file (or folder) at fault, ``kind`` one of :data:`PROBLEM_KINDS` and
    ``message`` the problem in words; ``str(error)`` reads ``"<path>: <message>"``.
    """

    def __init__(self, path: str | Path, message: str, kind: str = "invalid") -> None:
        self.path = str(path)
        self.message = message
        self.kind = kind
        super().__init__(f"{self.path}: {message}")
