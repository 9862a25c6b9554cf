"""The Responses API: ``POST /v1/responses`` (JSON or SSE), ``GET`` and ``DELETE
/v1/responses/{id}``.

request -> (earlier turns from the store) -> chat prompt -> engine -> ``ResponseEncoder`` ->
SSE frames (``event: <type>`` + ``data:``) or the final response object.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...core import SamplingParams
from ...core.events import Event
from ...errors import LibMlxError, NotFoundError
from .. import rules, sse, structured
from ..context import ServerContext
from ..multipart import read_payload
from ..streaming import run_to_end, sse_response, stream
from .convert import to_chat_prompt
from .encoder import ResponseEncoder, new_id
from .protocol import ResponsesRequest, parse_request
from .store import ResponseStore


def store_of(request: Request) -> ResponseStore:
    return request.app.state.responses


def to_sampling(req: ResponsesRequest) -> SamplingParams:
    reasoning = req.reasoning
    explicit_budget = req.thinking_budget if req.thinking_budget is not None else (reasoning.max_tokens if reasoning else None)
    structured.check_strict_tools([t.model_dump() for t in req.tools or []])
    return SamplingParams(
        max_tokens=req.max_output_tokens,
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        logit_bias=structured.logit_bias_pairs(req.logit_bias),
        grammar=structured.text_format_grammar(req.text),
        logprobs=structured.responses_logprobs(req.include, req.top_logprobs),
        thinking_budget=structured.thinking_budget(
            explicit_budget, reasoning.effort if reasoning else None, param="reasoning.max_tokens"
        ),
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
        "top_logprobs": req.top_logprobs,
        "max_tool_calls": req.max_tool_calls,
        "truncation": req.truncation or "disabled",
        "usage": None,
    }


@dataclass
class ResponsesWire:
    """Responses over SSE: ``event: <type>`` frames; a failure is ``response.failed``. The
    response is stored (``finish``) before the client can read its terminal event."""

    encoder: ResponseEncoder
    finish: Callable[[], None]

    def _framed(self, events: list[dict[str, Any]]) -> list[bytes]:
        if self.encoder.finished:
            self.finish()
        return [sse.frame(event, event=event["type"]) for event in events]

    def opening(self) -> Iterable[bytes]:
        return self._framed(self.encoder.start())

    def frames(self, event: Event) -> Iterable[bytes]:
        return self._framed(self.encoder.encode(event))

    def failure(self, error: LibMlxError) -> Iterable[bytes]:
        return self._framed(self.encoder.fail(error))

    def keepalive(self) -> bytes:
        return sse.KEEPALIVE

    def closing(self) -> Iterable[bytes]:
        return ()


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

    rendered = await rules.prepare(ctx, to_chat_prompt(req, items), param="input")
    params = to_sampling(req)
    await ctx.check(rendered, params)
    generation = ctx.submit(rendered, params)
    encoder = ResponseEncoder(base=response_skeleton(req, req.model or ctx.model_id))

    def finish() -> None:
        if req.store and encoder.response is not None:
            store.put(encoder.response, items)

    if req.stream:
        return sse_response(stream(ctx, generation, ResponsesWire(encoder, finish)))
    await run_to_end(ctx, generation, encoder.encode)
    finish()
    return JSONResponse(encoder.response)


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
