"""The rendered prompt, shown: ``POST /tokenize`` and ``POST /detokenize`` in vLLM's shapes,
``POST /apply-template`` in llama.cpp's. A chat-shaped body renders exactly as the chat endpoint
would (``rules.parse`` with the chat field table, ``to_chat_prompt``, ``rules.prepare``: the same
family rules, thinking toggle and history preparation), so the tokens are the prompt a chat
request with that body runs on."""

from __future__ import annotations

import asyncio
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..core import RenderedPrompt
from ..errors import InvalidRequestError
from . import rules
from .chat.protocol import ChatCompletionRequest
from .chat.serving import to_chat_prompt
from .context import ServerContext


class _TextTokenize(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    prompt: str
    add_special_tokens: bool = True


class _Detokenize(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int] = Field(max_length=1_000_000)


async def _render_chat(ctx: ServerContext, data: dict[str, Any]) -> RenderedPrompt:
    for name, default in (("add_generation_prompt", True), ("continue_final_message", False)):
        if name in data and data[name] != default:
            raise InvalidRequestError(
                f"{name}={data[name]!r} is not supported (chat always renders a generation prompt)", param=name
            )
    body = {k: v for k, v in data.items() if k not in ("add_generation_prompt", "continue_final_message")}
    req = rules.parse(ChatCompletionRequest, body, api="chat")
    ctx.check_model(req.model)
    return await rules.prepare(ctx, to_chat_prompt(req), generate=False)


async def tokenize(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    data = await ctx.read_json(request)
    if "messages" in data:
        tokens = list((await _render_chat(ctx, data)).tokens)
    else:
        req = rules.parse(_TextTokenize, data)
        ctx.check_model(req.model)
        tokens = await asyncio.to_thread(ctx.core.tokenize, req.prompt, add_special_tokens=req.add_special_tokens)
    return JSONResponse({"count": len(tokens), "max_model_len": ctx.core.context_length, "tokens": tokens})


async def detokenize(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    req = rules.parse(_Detokenize, await ctx.read_json(request))
    ctx.check_model(req.model)
    return JSONResponse({"prompt": await asyncio.to_thread(ctx.core.detokenize, req.tokens)})


async def apply_template(request: Request) -> Response:
    ctx: ServerContext = request.app.state.ctx
    rendered = await _render_chat(ctx, await ctx.read_json(request))
    return JSONResponse({"prompt": rendered.text})
