"""Access control for a loopback server: a bearer token and a Host allow-list.

A localhost port is reachable by every process on the device and, through DNS rebinding, by web
pages; so every ``/v1/*`` request must carry the server's token, and every request must name the
bound address or ``localhost`` in its ``Host`` header. Pure ASGI (no per-chunk overhead on
streams).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import AuthenticationError, ForbiddenError, LibMlxError


def allowed_hosts(bound_host: str, port: int) -> frozenset[str]:
    """Host header values accepted: the bound address and the loopback names, with or without
    the port."""
    names = {bound_host, "localhost", "127.0.0.1", "[::1]"}
    if ":" in bound_host and not bound_host.startswith("["):
        names.add(f"[{bound_host}]")
    out = set(names)
    out.update(f"{n}:{port}" for n in names)
    return frozenset(h.lower() for h in out)


class AccessMiddleware:
    def __init__(self, app: ASGIApp, *, api_key: str | None, hosts: Iterable[str], public_paths: Iterable[str] = ("/", "/health")) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.hosts = frozenset(hosts)
        self.public_paths = frozenset(public_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        error = self._check(scope, headers)
        if error is not None:
            response = JSONResponse(error.to_openai(), status_code=error.status, headers=error.headers or None)
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _check(self, scope: Scope, headers: Headers) -> LibMlxError | None:
        host = headers.get("host", "").lower()
        if host not in self.hosts:
            return ForbiddenError(f"Host header {host!r} is not allowed; use the server's own address or localhost")
        path: str = scope.get("path", "")
        if self.api_key is None or path in self.public_paths or not path.startswith("/v1"):
            return None
        if scope.get("method") == "OPTIONS":
            return None  # CORS preflight carries no credentials
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key):
            return AuthenticationError(
                "Missing or invalid API key: send 'Authorization: Bearer <api_key>' as returned by start_server",
                headers={"WWW-Authenticate": "Bearer"},
            )
        return None
