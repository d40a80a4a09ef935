"""A loopback HTTP answer with ``Range`` support, shared by the download tests (no network needed)."""

from __future__ import annotations

import re
from http.server import BaseHTTPRequestHandler


def send_with_range(handler: BaseHTTPRequestHandler, data: bytes) -> int | None:
    """Send the status and headers for ``data`` as a real server would, honouring ``Range: bytes=N-``.

    Returns the offset the body starts at (206 for a range, 200 otherwise), or None when a 416 was
    sent because the range starts past the end.
    """
    start = 0
    if match := re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or ""):
        start = int(match.group(1))
        if start >= len(data):
            handler.send_error(416)
            return None
        handler.send_response(206)
        handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
    else:
        handler.send_response(200)
    handler.send_header("Content-Length", str(len(data) - start))
    handler.end_headers()
    return start
