"""Mapping errors to OpenAI error bodies and HTTP statuses (the one HTTP boundary)."""

from __future__ import annotations

import logging
from typing import Any

import pydantic
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import InvalidRequestError, LibMlxError, NotFoundError, from_exception

log = logging.getLogger("lib_mlx.server")


def error_response(error: LibMlxError) -> JSONResponse:
    return JSONResponse(error.to_openai(), status_code=error.status, headers=error.headers or None)


def param_of(loc: tuple[Any, ...]) -> str:
    """pydantic's error location as an OpenAI ``param``: ``messages[0].role``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def from_validation_error(exc: pydantic.ValidationError) -> InvalidRequestError:
    first = exc.errors()[0]
    # Drop pydantic's union/tagged-union branch names from the location.
    loc = tuple(p for p in first.get("loc", ()) if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
    param = param_of(loc) or None
    message = first.get("msg", "invalid request")
    return InvalidRequestError(f"{param}: {message}" if param else message, param=param)


async def handle_lib_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LibMlxError)
    return error_response(exc)


async def handle_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        err: LibMlxError = NotFoundError(f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        err = InvalidRequestError(f"method {request.method} is not allowed on {request.url.path}", code="method_not_allowed")
        err.status = 405
    else:
        err = LibMlxError(str(exc.detail))
        err.status = exc.status_code
    return error_response(err)


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    return error_response(from_exception(exc))
