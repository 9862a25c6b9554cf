"""Mapping errors to OpenAI error bodies and HTTP statuses (the one HTTP boundary)."""

from __future__ import annotations

import logging
from typing import Any

import pydantic
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from ..core.failures import classify
from ..errors import InvalidRequestError, LibMlxError, NotFoundError

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


_TYPE_TAGS = frozenset({"str", "int", "float", "bool", "none", "bytes", "dict", "list", "tuple", "any"})


def _is_branch_tag(part: Any) -> bool:
    """pydantic names union branches in the location (``str``, ``list[ContentPart]``,
    ``NamedToolChoice``, ``literal['auto','none']``, ``function-after[...]``); our field names
    are lower snake_case, so anything else is a branch tag, not a place in the request."""
    if not isinstance(part, str):
        return False
    return part in _TYPE_TAGS or part[:1].isupper() or any(c in part for c in "[](),'-")


def from_validation_error(exc: pydantic.ValidationError) -> InvalidRequestError:
    """The most specific problem, with its place as an OpenAI ``param`` (``messages[0].role``).

    For a union every branch reports; the deepest location is the branch the client meant
    (``content[0].text`` beats ``content`` being "not a string"). Branches that fail at the
    same place are joined: ``messages[0].content: Input should be a valid string or a valid
    list``."""
    errors = exc.errors(include_url=False)
    if not errors:
        return InvalidRequestError("invalid request")
    located = [(tuple(p for p in e.get("loc", ()) if not _is_branch_tag(p)), e) for e in errors]
    depth = max(len(loc) for loc, _ in located)
    loc = next(loc for loc, _ in located if len(loc) == depth)
    messages: list[str] = []
    for other, error in located:
        msg = str(error.get("msg") or "invalid value").removeprefix("Value error, ")
        if other == loc and msg not in messages:
            messages.append(msg)
    message = messages[0] + "".join(
        " or " + m.removeprefix("Input should be ") for m in messages[1:3]
    )
    param = param_of(loc) or None
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
    return error_response(classify(exc))
