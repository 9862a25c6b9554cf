"""Access control for a loopback server: a bearer token and a Host allow-list.

A localhost port is reachable by every process on the device and, through DNS rebinding, by web
pages; so every ``/v1/*`` request must carry the server's token (``Authorization: Bearer`` or
Anthropic's ``x-api-key``), and every request must name the
bound address or ``localhost`` in its ``Host`` header. A server bound to every interface
(``0.0.0.0``/``::``) also accepts any IP address as ``Host``: a rebinding page always sends the
DNS name it was loaded from, never a bare address. Request bodies are capped at
``max_body_bytes`` (``BodyLimitMiddleware``). Pure ASGI (no per-chunk overhead on streams).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import (
    AuthenticationError,
    ForbiddenError,
    LibMlxError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from .errors import error_response


def allowed_hosts(bound_host: str, port: int) -> frozenset[str]:
    """Host header values accepted: the bound address and the loopback names, with or without
    the port."""
    names = {bound_host, "localhost", "127.0.0.1", "[::1]"}
    if ":" in bound_host and not bound_host.startswith("["):
        names.add(f"[{bound_host}]")
    out = set(names)
    out.update(f"{n}:{port}" for n in names)
    return frozenset(h.lower() for h in out)


_WILDCARDS = frozenset({"0.0.0.0", "::", "[::]"})


def _is_ip_address(host: str) -> bool:
    """Whether a Host header value names a bare IP address (with or without a port)."""
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else ""
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _refuse(error: LibMlxError, scope: Scope) -> JSONResponse:
    return error_response(error, scope.get("path", ""))


def body_too_large(limit: int) -> PayloadTooLargeError:
    # Connection: close -- the client may still be sending a body we will not read.
    return PayloadTooLargeError(
        f"request body is larger than the {limit}-byte limit (max_body_bytes)",
        headers={"Connection": "close"},
    )


class BodyLimitMiddleware:
    """Caps every request body at ``max_body_bytes`` (413), whatever route or parser reads it:
    a declared ``Content-Length`` over the cap is refused before any of it is read, and a
    chunked body is counted as it arrives (the route's read raises ``PayloadTooLargeError``)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "").strip()
        if declared.isdigit() and int(declared) > self.limit:
            await _refuse(body_too_large(self.limit), scope)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise body_too_large(self.limit)
            return message

        await self.app(scope, counted, send)


# Paths that need the token: the API, and the prompt-inspection routes beside it.
PROTECTED = ("/v1", "/tokenize", "/detokenize", "/apply-template")

_BODY_TYPES = ("application/json", "multipart/form-data")


def check_content_type(scope: Scope, headers: Headers) -> LibMlxError | None:
    """POST bodies must say they are JSON or multipart. A web page may send a "simple" cross-site
    POST (``text/plain``, form-encoded) without a CORS preflight; with ``auth: "none"`` it could
    otherwise make the model generate, as every body used to be parsed as JSON whatever its type."""
    if scope.get("method") != "POST":
        return None
    declared = headers.get("content-type", "")
    media_type = declared.split(";", 1)[0].strip().lower()
    if media_type in _BODY_TYPES:
        return None
    shown = f"{media_type!r}" if media_type else "no Content-Type"
    return UnsupportedMediaTypeError(
        f"POST bodies must be sent as application/json or multipart/form-data, not {shown}",
        param="Content-Type",
    )


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, api_key: str | None, hosts: Iterable[str], public_paths: Iterable[str] = ("/", "/health")) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.hosts = frozenset(hosts)
        self.public_paths = frozenset(public_paths)
        self.any_address = bool(self.hosts & _WILDCARDS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = self._check(scope, headers) or check_content_type(scope, headers)
        if error is not None:
            await _refuse(error, scope)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, headers: Headers) -> LibMlxError | None:
        host = headers.get("host", "").lower()
        if host not in self.hosts and not (self.any_address and _is_ip_address(host)):
            return ForbiddenError(f"Host header {host!r} is not allowed; use the server's own address or localhost")
        path: str = scope.get("path", "")
        if self.api_key is None or path in self.public_paths or not path.startswith(PROTECTED):
            return None
        if scope.get("method") == "OPTIONS":
            return None  # CORS preflight carries no credentials
        if not self._authorized(headers):
            return AuthenticationError(
                "Missing or invalid API key: send 'Authorization: Bearer <api_key>' (or 'x-api-key: <api_key>')"
                " as returned by start_server",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None

    def _authorized(self, headers: Headers) -> bool:
        """The token as ``Authorization: Bearer`` (OpenAI's clients) or ``x-api-key``
        (Anthropic's); either one that matches will do."""
        assert self.api_key is not None
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key):
            return True
        key = headers.get("x-api-key")
        return key is not None and hmac.compare_digest(key.strip().encode(), self.api_key)
