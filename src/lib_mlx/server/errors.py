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
from .request_id import id_headers

log = logging.getLogger("lib_mlx.server")


# Routes that speak another API's error shape; everything else gets OpenAI's.
_SHAPES = (("/v1/messages", LibMlxError.to_anthropic),)


def error_body(error: LibMlxError, path: str = "") -> dict[str, Any]:
    """The error in the shape of the API that ``path`` belongs to."""
    for prefix, shape in _SHAPES:
        if path == prefix or path.startswith(prefix + "/"):
            return shape(error)
    return error.to_openai()


def error_response(error: LibMlxError, path: str = "") -> JSONResponse:
    return JSONResponse(error_body(error, path), status_code=error.status, headers=error.headers or None)


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


def _is_branch_tag(part: Any, tags: frozenset[str] = frozenset(), after_index: bool = False) -> bool:
    """pydantic names union branches in the location (``str``, ``list[ContentPart]``,
    ``NamedToolChoice``, ``literal['auto','none']``, ``function-after[...]``); our field names
    are lower snake_case, so anything else is a branch tag, not a place in the request."""
    if not isinstance(part, str):
        return False
    if after_index and part in tags:
        return True  # a discriminated union's tag after a list index: ``input[0]``, not ``input[0].message``
    return part in _TYPE_TAGS or part[:1].isupper() or any(c in part for c in "[](),'-")


def _clean(loc: tuple[Any, ...], tags: frozenset[str]) -> tuple[Any, ...]:
    return tuple(
        p for i, p in enumerate(loc) if not _is_branch_tag(p, tags, i > 0 and isinstance(loc[i - 1], int))
    )


def from_validation_error(exc: pydantic.ValidationError, *, tags: frozenset[str] = frozenset()) -> InvalidRequestError:
    """The most specific problem, with its place as an OpenAI ``param`` (``messages[0].role``).

    For a union every branch reports; the deepest location is the branch the client meant
    (``content[0].text`` beats ``content`` being "not a string"). Branches that fail at the
    same place are joined: ``messages[0].content: Input should be a valid string or a valid
    list``. ``tags`` name a discriminated union's branches, dropped after a list index."""
    errors = exc.errors(include_url=False)
    if not errors:
        return InvalidRequestError("invalid request")
    located = [(_clean(tuple(e.get("loc", ())), tags), e) for e in errors]
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
    return error_response(exc, request.url.path)


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
    return error_response(err, request.url.path)


async def handle_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s", request.url.path)
    response = error_response(classify(exc), request.url.path)
    # Starlette answers these from outside every middleware: name the request here too.
    request_id = getattr(request.state, "request_id", None)
    if request_id:
        for name, value in id_headers(request.url.path, request_id.encode()):
            response.headers[name.decode()] = value.decode()
    return response
