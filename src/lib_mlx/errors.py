"""One error hierarchy for the whole package.

Each class carries its HTTP status and its OpenAI error ``type``/``code``. The server maps any
``LibMlxError`` to ``{"error": {...}}`` and the ABI to ``{"ok": false, "error": {...}}`` in one
place each (``server.errors`` and ``abi``); anything else that reaches a boundary is made one of
these by ``core.failures.classify``. Never classify errors by their message text (MLX's
allocation failures, which have no type of their own, are the one documented exception there).
"""

from __future__ import annotations

from typing import Any


class LibMlxError(Exception):
    """Base class: a failure with a stable machine-readable code."""

    status: int = 500
    type: str = "server_error"
    code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def to_openai(self) -> dict[str, Any]:
        """The OpenAI wire shape: ``{"error": {"message", "type", "param", "code"}}``."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def to_anthropic(self) -> dict[str, Any]:
        """Anthropic's wire shape: ``{"type": "error", "error": {"type", "message"}}``, its
        ``type`` chosen by the HTTP status as Anthropic's API does."""
        return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(self.status, "api_error"), "message": self.message}}

    def to_abi(self) -> dict[str, Any]:
        """The lifecycle ABI shape: ``{"ok": false, "error": {"code", "message"}}``."""
        return {"ok": False, "error": {"code": self.code, "message": self.message}}


# Anthropic's error types by HTTP status (``LibMlxError.to_anthropic``).
ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "request_too_large",
    415: "invalid_request_error",
    429: "rate_limit_error",
    503: "overloaded_error",
}


# --- request / config problems (400) -------------------------------------------------------


class InvalidRequestError(LibMlxError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJsonError(InvalidRequestError):
    code = "invalid_json"


class InvalidConfigError(InvalidRequestError):
    code = "invalid_config"


class ContextLengthExceededError(InvalidRequestError):
    code = "context_length_exceeded"


# --- auth / access ---------------------------------------------------------------------------


class AuthenticationError(LibMlxError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class ForbiddenError(LibMlxError):
    status = 403
    type = "permission_error"
    code = "forbidden_host"


# --- not found (404) -------------------------------------------------------------------------


class NotFoundError(LibMlxError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFoundError(NotFoundError):
    code = "model_not_found"


class UnknownHandleError(NotFoundError):
    code = "unknown_handle"


# --- size / capacity -------------------------------------------------------------------------


class PayloadTooLargeError(LibMlxError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class UnsupportedMediaTypeError(LibMlxError):
    status = 415
    type = "invalid_request_error"
    code = "unsupported_media_type"


class QueueFullError(LibMlxError):
    status = 429
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, message: str = "The model's request queue is full; retry shortly.", **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kw)


# --- lifecycle state ---------------------------------------------------------------------------


class ServerNotRunningError(LibMlxError):
    status = 409
    type = "invalid_request_error"
    code = "server_not_running"


class PortInUseError(LibMlxError):
    status = 409
    type = "invalid_request_error"
    code = "port_in_use"


class ServerStartError(LibMlxError):
    code = "server_start_failed"


class ModelLoadError(LibMlxError):
    code = "model_load_failed"


class NotReadyError(LibMlxError):
    status = 503
    type = "server_error"
    code = "model_not_ready"

    def __init__(self, message: str = "The model is not ready yet; retry shortly.", **kw: Any) -> None:
        kw.setdefault("headers", {"Retry-After": "1"})
        super().__init__(message, **kw)


class InsufficientMemoryError(LibMlxError):
    """Loading would need more memory than MLX can use on this device (the memory guard)."""

    status = 503
    type = "server_error"
    code = "insufficient_memory"


# --- generation ------------------------------------------------------------------------------


class RankFailedError(NotReadyError):
    """A model sharded over several processes lost one of them (it died, or stopped answering
    within ``distributed_timeout_s``): the model cannot generate until it is loaded again."""

    code = "rank_failed"


class GenerationError(LibMlxError):
    status = 500
    type = "server_error"
    code = "generation_failed"


class OutOfMemoryError(GenerationError):
    code = "out_of_memory"


class CancelledError(LibMlxError):
    """A generation was cancelled (client gone, server stopping, model unloading). A client
    that is still there to read the answer only sees this when the server goes away: 503."""

    status = 503
    type = "server_error"
    code = "cancelled"

