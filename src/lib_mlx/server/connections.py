"""Per-connection limits on top of uvicorn's h11 protocol: read timeouts and a connection cap.

uvicorn times out only idle keep-alive connections between requests. A client that opens a
connection and sends nothing, trickles its headers, or stops in the middle of its body would
otherwise hold a socket (a file descriptor) for ever, and enough of them exhaust the process's
descriptors so that new clients hang. Here:

- ``HEADER_TIMEOUT`` seconds from a connection's start (or, on a kept-alive connection, from the
  first byte of the next request) until the request's headers are complete, in total, however
  slowly they trickle in: then 408 and close (a connection that sent nothing is just closed);
- ``BODY_IDLE_TIMEOUT`` seconds without a byte while a request body is being read: close (the
  route sees the client gone; a generation it started is cancelled);
- at most ``MAX_CONNECTIONS`` open connections: one more is answered at once with a 503
  ``too_many_connections`` error body and closed, never left waiting.

The values are read when a server starts.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

HEADER_TIMEOUT = 30.0
BODY_IDLE_TIMEOUT = 60.0
MAX_CONNECTIONS = 512


def _error_response(status: int, reason: str, message: str, code: str, type_: str) -> bytes:
    body = json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY = _error_response(
    503,
    "Service Unavailable",
    "too many open connections to this server; close idle ones or retry later",
    "too_many_connections",
    "server_error",
)
_HEADER_TIMEOUT = _error_response(
    408, "Request Timeout", "the request's headers did not arrive in time", "request_timeout", "invalid_request_error"
)


def guarded_protocol(
    *, header_timeout: float | None = None, body_idle_timeout: float | None = None, max_connections: int | None = None
) -> type[asyncio.Protocol]:
    """An ``H11Protocol`` class with these limits (module defaults where None)."""
    limits = (
        HEADER_TIMEOUT if header_timeout is None else header_timeout,
        BODY_IDLE_TIMEOUT if body_idle_timeout is None else body_idle_timeout,
        MAX_CONNECTIONS if max_connections is None else max_connections,
    )

    class GuardedH11Protocol(_Guarded):
        header_timeout, body_idle_timeout, max_connections = limits

    return GuardedH11Protocol


class _Guarded(H11Protocol):
    header_timeout: float
    body_idle_timeout: float
    max_connections: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_kind: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            transport.write(_TOO_MANY)
            transport.close()
            return
        self._arm("headers", self.header_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.SEND_BODY:
            self._arm("body", self.body_idle_timeout)  # idle time: re-armed by every chunk
        elif state is h11.IDLE:
            if self._deadline_kind != "headers":
                self._arm("headers", self.header_timeout)  # total: not re-armed while it trickles
        else:
            self._disarm()  # the request is in: the route's own rules apply

    def on_response_complete(self) -> None:
        self._disarm()  # uvicorn's keep-alive timeout covers the idle time until the next request
        super().on_response_complete()

    def _arm(self, kind: str, delay: float) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline_kind = kind
        self._deadline = self.loop.call_later(delay, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = self._deadline_kind = None

    def _expired(self) -> None:
        kind, self._deadline, self._deadline_kind = self._deadline_kind, None, None
        if self.transport.is_closing():
            return
        if kind == "headers" and self.conn.our_state is h11.IDLE and self.conn.trailing_data[0]:
            self.transport.write(_HEADER_TIMEOUT)  # part of a request arrived: say why it ends
        self.transport.close()


__all__ = ["BODY_IDLE_TIMEOUT", "HEADER_TIMEOUT", "MAX_CONNECTIONS", "guarded_protocol"]
