"""The Responses API: ``POST /v1/responses`` (JSON or SSE), ``GET`` and ``DELETE
/v1/responses/{id}``.

request -> (earlier turns from the store) -> chat prompt -> engine -> ``ResponseEncoder`` ->
SSE frames (``event: <type>`` + ``data:``) or the final response object.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ...core import Generation, SamplingParams
from ...core.events import Failed
from ...errors import InvalidRequestError, NotFoundError
from .. import sse
from ..context import ServerContext
from ..media import decode_prompt_media
from ..multipart import read_payload
from ..streaming import Keepalive, events_with_keepalive
from .convert import to_chat_prompt
from .encoder import ResponseEncoder, new_id
from .protocol import ResponsesRequest, parse_request
from .store import ResponseStore

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def store_of(request: Request) -> ResponseStore:
    return request.app.state.responses


def to_sampling(req: ResponsesRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
    )


def response_skeleton(req: ResponsesRequest, model: str) -> dict[str, Any]:
    """The response object before any output: identity and the echoed request parameters."""
    reasoning = req.reasoning
    return {
        "id": new_id("resp"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens,
        "metadata": dict(req.metadata or {}),
        "model": model,
        "output": [],
        "parallel_tool_calls": req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        "previous_response_id": req.previous_response_id,
        "reasoning": {
            "effort": reasoning.effort if reasoning else None,
            "summary": reasoning.summary if reasoning else None,
        },
        "temperature": req.temperature,
        "text": req.text or {"format": {"type": "text"}},
        "tool_choice": req.tool_choice_wire(),
        "tools": [t.model_dump(include={"type", "name", "description", "parameters", "strict"}) for t in req.tools or []],
        "top_p": req.top_p,
        "truncation": req.truncation or "disabled",
        "usage": None,
    }


async def create_response(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    store = store_of(request)
    req = parse_request(await read_payload(ctx, request))
    ctx.check_model(req.model)

    items = store.resolve(req.input_items())
    if req.previous_response_id is not None:
        previous = store.get(req.previous_response_id)
        if previous is None:
            raise NotFoundError(
                f"Previous response with id '{req.previous_response_id}' not found.", param="previous_response_id"
            )
        items = previous.conversation() + items

    prompt = to_chat_prompt(req, items)
    await decode_prompt_media(ctx, prompt, param_prefix="input")
    try:
        rendered = await ctx.render(prompt)
        ctx.check_context(rendered)
    except InvalidRequestError as exc:
        if exc.param == "messages":  # the core speaks chat; here the conversation is ``input``
            exc.param = "input"
        raise
    generation = ctx.submit(rendered, to_sampling(req))
    encoder = ResponseEncoder(base=response_skeleton(req, req.model or ctx.model_id))

    def finish() -> None:
        if req.store and encoder.response is not None:
            store.put(encoder.response, items)

    if req.stream:
        return StreamingResponse(
            stream_response(ctx, generation, encoder, finish), media_type="text/event-stream", headers=SSE_HEADERS
        )
    async for event in events_with_keepalive(ctx, generation):
        if isinstance(event, Failed):
            raise event.error
        if not isinstance(event, Keepalive):
            encoder.encode(event)
    finish()
    return JSONResponse(encoder.response)


async def stream_response(
    ctx: ServerContext, generation: Generation, encoder: ResponseEncoder, finish: Any
) -> AsyncIterator[bytes]:
    for event in encoder.start():
        yield sse.frame(event, event=event["type"])
    async for item in events_with_keepalive(ctx, generation):
        if isinstance(item, Keepalive):
            yield sse.KEEPALIVE
            continue
        events = encoder.encode(item)
        if encoder.finished:
            finish()  # stored before the client can read the terminal event and continue
        for event in events:
            yield sse.frame(event, event=event["type"])


async def get_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    entry = store_of(request).get(response_id)
    if entry is None:
        raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
    return JSONResponse(entry.response)


async def delete_response(request: Request) -> Response:
    response_id = request.path_params["response_id"]
    if not store_of(request).delete(response_id):
        raise NotFoundError(f"Response with id '{response_id}' not found.", param="response_id")
    return JSONResponse({"id": response_id, "object": "response", "deleted": True})
