"""The Anthropic Messages API: ``POST /v1/messages`` (JSON or SSE) and ``POST
/v1/messages/count_tokens``.

request -> ``convert`` -> chat prompt -> engine -> ``MessageEncoder`` -> SSE frames (``event:
<type>`` + ``data:``, ``ping`` as keepalive, ``error`` when a stream fails) or the message.
Errors on these routes are in Anthropic's shape (``server.errors.error_body``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...core.events import Event
from ...errors import LibMlxError
from .. import rules, sse
from ..context import ServerContext
from ..multipart import read_payload
from ..streaming import run_to_end, sse_response, stream
from .convert import to_chat_prompt, to_sampling
from .encoder import MessageEncoder, error_event
from .protocol import parse_count_request, parse_message_request

PING = sse.frame({"type": "ping"}, event="ping")


def _framed(events: list[dict]) -> list[bytes]:
    return [sse.frame(event, event=event["type"]) for event in events]


@dataclass
class MessagesWire:
    """Messages over SSE: ``event: <type>`` frames, ``ping`` keepalives, an ``error`` event."""

    encoder: MessageEncoder

    def opening(self) -> Iterable[bytes]:
        return [*_framed(self.encoder.start()), PING]

    def frames(self, event: Event) -> Iterable[bytes]:
        return _framed(self.encoder.encode(event))

    def failure(self, error: LibMlxError) -> Iterable[bytes]:
        return _framed([error_event(error)])

    def keepalive(self) -> bytes:
        return PING

    def closing(self) -> Iterable[bytes]:
        return ()


async def create_message(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    req = parse_message_request(await read_payload(ctx, request))
    ctx.check_model(req.model)
    rendered = await rules.prepare(ctx, to_chat_prompt(req))
    generation = ctx.submit(rendered, to_sampling(req))
    encoder = MessageEncoder(model=req.model or ctx.model_id, input_tokens=len(rendered.tokens))
    if req.stream:
        return sse_response(stream(ctx, generation, MessagesWire(encoder)))
    await run_to_end(ctx, generation, encoder.encode)
    return JSONResponse(encoder.message)


async def count_tokens(request: Request) -> Response:
    """The prompt's token count as the template renders it (what ``usage`` then reports as
    ``input_tokens`` + ``cache_read_input_tokens``)."""
    ctx: ServerContext = request.app.state.ctx
    req = parse_count_request(await read_payload(ctx, request))
    ctx.check_model(req.model)
    rendered = await rules.prepare(ctx, to_chat_prompt(req), generate=False)
    return JSONResponse({"input_tokens": await asyncio.to_thread(ctx.core.count_tokens, rendered)})
