"""A request id on every response: ``x-request-id`` (the OpenAI SDKs' ``request_id``), and
Anthropic's ``request-id`` as well on ``/v1/messages`` (the anthropic SDK's ``_request_id``).

A client's own ``x-request-id`` is echoed when it is a short plain token (so a caller can
trace its request through a proxy); otherwise the server makes one: ``req_`` + 32 hex digits.
"""

from __future__ import annotations

import re
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = b"x-request-id"
ANTHROPIC_HEADER = b"request-id"
_CLIENT_ID = re.compile(rb"[A-Za-z0-9._:\-]{1,128}")


def request_id_of(scope: Scope) -> bytes:
    for name, value in scope.get("headers", ()):
        if name == HEADER and _CLIENT_ID.fullmatch(value):
            return value
    return f"req_{uuid.uuid4().hex}".encode()


def id_headers(path: str, request_id: bytes) -> list[tuple[bytes, bytes]]:
    """The id headers a response to ``path`` carries."""
    headers = [(HEADER, request_id)]
    if path == "/v1/messages" or path.startswith("/v1/messages/"):
        headers.append((ANTHROPIC_HEADER, request_id))
    return headers


class RequestIdMiddleware:
    """Pure ASGI and outermost, so that refusals (401, 403, 413) carry the header too. The id
    is kept in ``scope["state"]`` for the 500 handler, which Starlette runs outside."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_of(scope)
        scope.setdefault("state", {})["request_id"] = request_id.decode()
        added = id_headers(scope.get("path", ""), request_id)
        names = {name for name, _ in added}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() not in names]
                message = {**message, "headers": [*headers, *added]}
            await send(message)

        await self.app(scope, receive, send_with_id)
