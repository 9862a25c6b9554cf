"""Chat Completions: request -> prompt -> engine -> chunks or one completion object.

The rules shared with the other endpoints (thinking, tools, template kwargs, budget, stops,
fields, errors) live in ``server.rules``; the stream is run by ``server.streaming``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ...core import ChatPrompt, SamplingParams
from ...core.events import Event
from ...errors import LibMlxError
from .. import rules, sse, structured
from ..context import ServerContext
from ..multipart import read_payload
from ..streaming import collect, sse_response, stream
from .encoder import ChatChunkEncoder, completion_body
from .protocol import ChatCompletionRequest


def to_chat_prompt(req: ChatCompletionRequest) -> ChatPrompt:
    tool_choice: Any = req.tool_choice
    if tool_choice is not None and not isinstance(tool_choice, str):
        tool_choice = rules.named_tool_choice(tool_choice.function.name)
    return rules.chat_prompt(
        [m.model_dump(exclude_none=True) for m in req.messages],
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
        tool_choice=tool_choice,
        thinking=req.thinking_flag(),
        reasoning_effort=req.reasoning_effort,
        parallel_tool_calls=req.parallel_tool_calls,
        kwargs=req.chat_template_kwargs,
    )


def to_sampling(req: ChatCompletionRequest) -> SamplingParams:
    structured.check_strict_tools([t.model_dump() for t in req.tools or []])
    return SamplingParams(
        max_tokens=req.max_new_tokens(),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
        presence_penalty=req.presence_penalty,
        frequency_penalty=req.frequency_penalty,
        repetition_penalty=req.repetition_penalty,
        logit_bias=structured.logit_bias_pairs(req.logit_bias),
        grammar=structured.response_format_grammar(req.response_format),
        logprobs=structured.chat_logprobs(req.logprobs, req.top_logprobs),
        thinking_budget=structured.thinking_budget(req.thinking_budget, req.reasoning_effort),
    )


@dataclass
class ChatWire:
    """Chat Completions over SSE: ``data:`` frames, an error body as a frame, ``[DONE]``."""

    encoder: ChatChunkEncoder

    def opening(self) -> Iterable[bytes]:
        return [sse.frame(chunk) for chunk in self.encoder.start()]

    def frames(self, event: Event) -> Iterable[bytes]:
        return [sse.frame(chunk) for chunk in self.encoder.encode(event)]

    def failure(self, error: LibMlxError) -> Iterable[bytes]:
        return [sse.frame(error.to_openai())]

    def keepalive(self) -> bytes:
        return sse.KEEPALIVE

    def closing(self) -> Iterable[bytes]:
        return [sse.DONE]


async def create_chat_completion(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    req = rules.parse(ChatCompletionRequest, await read_payload(ctx, request), api="chat")
    ctx.check_model(req.model)
    params = to_sampling(req)
    rendered = await rules.prepare(ctx, to_chat_prompt(req))
    await ctx.check(rendered, params)
    generation = ctx.submit(rendered, params)
    model = req.model or ctx.model_id
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        wire = ChatWire(ChatChunkEncoder(model=model, include_usage=include_usage))
        return sse_response(stream(ctx, generation, wire))
    result = await collect(ctx, generation)
    return JSONResponse(completion_body(model, result, logprobs=params.logprobs is not None))
