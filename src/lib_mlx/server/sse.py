"""Server-Sent Events framing, in one place."""

from __future__ import annotations

import json
from typing import Any

# No caching, and no buffering by a reverse proxy (nginx honours X-Accel-Buffering).
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
KEEPALIVE = b": keepalive\n\n"
DONE = b"data: [DONE]\n\n"


def dumps(data: Any) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def frame(data: Any, event: str | None = None) -> bytes:
    """One SSE frame: an optional ``event:`` line, then the ``data:`` line (JSON unless str)."""
    payload = data if isinstance(data, str) else dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()
