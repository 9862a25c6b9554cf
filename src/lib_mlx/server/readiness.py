"""Answer 503 while the model is not there to answer: a server started on a handle that is
still loading (``start_server`` with ``"wait": false``) or whose load failed.

``/health``, ``/tokenize``, ``/detokenize``, ``/apply-template`` and every ``/v1/*`` route get the API's error body (OpenAI's, Anthropic's on
``/v1/messages``) with status 503: ``Retry-After``
and ``model_not_ready`` (naming the load's phase) while loading, the load's own error (e.g.
``model_load_failed``) once it failed. A sleeping model (idle unload) is not refused: the next
request loads it again. Pure ASGI; one attribute read per request.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import LibMlxError, NotReadyError
from .errors import error_response


# Routes that need the model, besides /v1/* (the chat page's files do not).
_MODEL_ROUTES = frozenset({"/health", "/tokenize", "/detokenize", "/apply-template"})


def not_ready_error(core: Any) -> LibMlxError | None:
    """Why ``core`` cannot take a request now, or None."""
    status = getattr(core, "state", "ready")
    if status == "loading" and getattr(core, "loads", 1) == 0:
        progress = (core.describe().get("progress") or {}) if hasattr(core, "describe") else {}
        done, total = progress.get("bytes_done", 0), progress.get("bytes_total", 0)
        share = f", {100 * done // total}% of {total} bytes" if total else ""
        phase = progress.get("phase", "resolve")
        return NotReadyError(f"the model is loading (phase {phase}{share}); retry shortly")
    if status == "failed":
        error = getattr(core, "error", None)
        failed = error if isinstance(error, LibMlxError) else NotReadyError("the model failed to load")
        out = LibMlxError(failed.message, code=failed.code)
        out.status, out.type = 503, "server_error"
        return out
    return None


class ReadinessMiddleware:
    def __init__(self, app: ASGIApp, *, core: Any) -> None:
        self.app = app
        self.core = core

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope.get("path", "")
            if path in _MODEL_ROUTES or path.startswith("/v1/"):
                error = not_ready_error(self.core)
                if error is not None:
                    await error_response(error, path)(scope, receive, send)  # the API's own shape
                    return
        await self.app(scope, receive, send)
