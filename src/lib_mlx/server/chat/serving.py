"""Chat Completions: request -> prompt -> engine -> chunks or one completion object."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ...core import ChatPrompt, Generation, SamplingParams
from ...core.events import Done, Failed
from ...core.failures import classify
from ...errors import CancelledError
from .. import sse
from ..context import ServerContext
from ..media import decode_prompt_media
from ..multipart import read_payload
from ..streaming import Keepalive, collect, events_with_keepalive
from .encoder import ChatChunkEncoder, completion_body
from .protocol import ChatCompletionRequest

log = logging.getLogger("lib_mlx.server")

STOPPED = "the generation was cancelled: the server is stopping or the model is unloading"

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def to_chat_prompt(req: ChatCompletionRequest) -> ChatPrompt:
    tool_choice: Any = req.tool_choice
    if tool_choice is not None and not isinstance(tool_choice, str):
        tool_choice = tool_choice.model_dump()
    return ChatPrompt(
        messages=[m.model_dump(exclude_none=True) for m in req.messages],
        tools=[t.model_dump(exclude_none=True) for t in req.tools] if req.tools else None,
        tool_choice=tool_choice,
        thinking=req.thinking_flag(),
        parallel_tool_calls=req.parallel_tool_calls if req.parallel_tool_calls is not None else True,
        template_kwargs={
            k: v for k, v in (req.chat_template_kwargs or {}).items() if k not in ("enable_thinking", "thinking")
        },
    )


def to_sampling(req: ChatCompletionRequest) -> SamplingParams:
    return SamplingParams(
        max_tokens=req.max_new_tokens(),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        min_p=req.min_p,
        seed=req.seed,
        stop=req.stop_list(),
        ignore_eos=req.ignore_eos,
    )


async def create_chat_completion(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    req = ctx.parse(ChatCompletionRequest, await read_payload(ctx, request))
    ctx.check_model(req.model)
    prompt = to_chat_prompt(req)
    await decode_prompt_media(ctx, prompt)
    rendered = await ctx.render(prompt)
    ctx.check_context(rendered)
    generation = ctx.submit(rendered, to_sampling(req))
    model = req.model or ctx.model_id
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        encoder = ChatChunkEncoder(model=model, include_usage=include_usage)
        return StreamingResponse(
            stream_chat(ctx, generation, encoder), media_type="text/event-stream", headers=SSE_HEADERS
        )
    result = await collect(ctx, generation)
    if result.done is not None and result.done.finish_reason == "cancelled":
        raise CancelledError(STOPPED)
    return JSONResponse(completion_body(model, result))


async def stream_chat(ctx: ServerContext, generation: Generation, encoder: ChatChunkEncoder) -> AsyncIterator[bytes]:
    for chunk in encoder.start():
        yield sse.frame(chunk)
    try:
        async for event in events_with_keepalive(ctx, generation):
            if isinstance(event, Keepalive):
                yield sse.KEEPALIVE
            elif isinstance(event, Failed):
                yield sse.frame(event.error.to_openai())  # type: ignore[attr-defined]
                break
            elif isinstance(event, Done) and event.finish_reason == "cancelled":
                # Only a client that is still listening sees this: the server is stopping or
                # the model unloading. Say so rather than pass a cut answer off as finished.
                yield sse.frame(CancelledError(STOPPED).to_openai())
                break
            else:
                for chunk in encoder.encode(event):
                    yield sse.frame(chunk)
    except Exception as exc:  # noqa: BLE001 - a bug here must still end the stream properly
        log.exception("chat stream failed")
        yield sse.frame(classify(exc).to_openai())
    yield sse.DONE
