"""Request -> generation: the rules every endpoint applies, in one place.

An endpoint is a protocol module (its request model, validated here with ``parse``), a
converter to a ``ChatPrompt`` + ``SamplingParams`` built with the helpers below, and an encoder
driven by ``server.streaming``. What is shared:

- **fields**: ``FIELDS`` says, per API, which request fields are honoured, refused (400 naming
  the field) or accepted and ignored; ``check_fields`` applies it before validation;
- **validation errors**: ``parse`` turns pydantic's errors into one 400 naming the field;
- **thinking**: ``thinking_flag`` -- an explicit toggle, then ``chat_template_kwargs``, then an
  effort ("none" turns it off); ``None`` leaves the load config's default;
- **tools**: ``check_tool_choice`` (a forced or named choice needs tools; a name must be one
  of them), ``chat_tools`` (every API's tools in the one shape the core renders);
- **template kwargs**: ``template_kwargs`` passes the client's kwargs on, less the thinking
  keys (the toggle owns those);
- **budget and stops**: ``budget`` picks the token budget among the API's names for it (the
  core clamps it to the room the context has left: the answer then ends with ``length``);
  ``stop_tuple`` normalises stop strings;
- **prompt**: ``prepare`` decodes media, renders, and refuses a prompt that fills the context,
  naming the API's own field for the conversation.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import pydantic

from ..core import ChatPrompt, RenderedPrompt
from ..errors import InvalidRequestError
from .errors import from_validation_error
from .media import decode_prompt_media

log = logging.getLogger("lib_mlx.server")

_M = TypeVar("_M", bound=pydantic.BaseModel)

THINKING_KWARGS = ("enable_thinking", "thinking")

# --- the field table ------------------------------------------------------------------------

Handling = Literal["honoured", "refused", "ignored"]


@dataclass(frozen=True)
class FieldRule:
    """How an API treats one request field. A ``refused`` field is refused only when
    ``refuse_if(value)`` holds (``None``: any value but null), with ``reason`` as the message."""

    handling: Handling
    reason: str = ""
    refuse_if: Callable[[Any], bool] | None = None

    def refuses(self, value: Any) -> bool:
        if self.handling != "refused" or value is None:
            return False
        return True if self.refuse_if is None else self.refuse_if(value)


HONOURED = FieldRule("honoured")
IGNORED = FieldRule("ignored")


def _fields(honoured: Iterable[str], ignored: Iterable[str] = (), **refused: FieldRule) -> dict[str, FieldRule]:
    table = {name: HONOURED for name in honoured}
    table.update({name: IGNORED for name in ignored})
    table.update(refused)
    return table


# Fields not listed are accepted and ignored (logged at debug level): clients send many
# optional hints. Add a field here when an endpoint starts honouring or refusing it.
FIELDS: dict[str, dict[str, FieldRule]] = {
    "chat": _fields(
        (
            "model", "messages", "temperature", "top_p", "top_k", "min_p", "max_tokens",
            "max_completion_tokens", "max_output_tokens", "stop", "seed", "stream", "stream_options",
            "n", "tools", "tool_choice", "parallel_tool_calls", "thinking", "chat_template_kwargs",
            "reasoning_effort", "ignore_eos",
        ),
        ("user", "store", "metadata", "service_tier", "frequency_penalty", "presence_penalty"),
        n=FieldRule("refused", "only n=1 is supported", lambda n: n != 1),
    ),
    "responses": _fields(
        (
            "model", "input", "instructions", "tools", "tool_choice", "parallel_tool_calls",
            "max_output_tokens", "temperature", "top_p", "reasoning", "thinking", "store", "stream",
            "previous_response_id", "metadata", "text", "truncation", "background",
            "chat_template_kwargs", "top_k", "min_p", "seed",
        ),
        ("user", "service_tier", "include", "prompt_cache_key", "safety_identifier"),
        background=FieldRule("refused", "background responses are not supported", bool),
    ),
    "messages": _fields(
        (
            "model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k",
            "stop_sequences", "stream", "tools", "tool_choice", "thinking", "metadata",
        ),
        (
            "service_tier", "container", "context_management", "mcp_servers", "cache_control",
            "inference_geo", "speed", "diagnostics", "user_profile_id", "workspace_id",
        ),
        # ``output_config.effort`` is a hint; a structured-output ``format`` cannot be honoured yet.
        output_config=FieldRule(
            "refused",
            "output_config.format (structured output) is not supported",
            lambda v: isinstance(v, dict) and v.get("format") is not None,
        ),
    ),
    "messages_count": _fields(("model", "messages", "system", "tools", "tool_choice", "thinking")),
}


def check_fields(api: str, data: Mapping[str, Any]) -> None:
    """Refuse, by name, a field the API cannot honour; note the ones it ignores."""
    table = FIELDS[api]
    ignored = []
    for name, value in data.items():
        rule = table.get(name)
        if rule is None or rule.handling == "ignored":
            ignored.append(name)
        elif rule.refuses(value):
            raise InvalidRequestError(f"{name}: {rule.reason}", param=name)
    if ignored:
        log.debug("ignoring unsupported %s fields: %s", api, sorted(ignored))


def parse(model: type[_M], data: Mapping[str, Any], *, api: str | None = None, tags: Iterable[str] = ()) -> _M:
    """Validate a request body against its protocol model (after the field table when ``api``
    is given); the most specific problem becomes one 400 naming its field. ``tags`` are the
    names of a discriminated union's branches, dropped from locations like pydantic's own."""
    if api is not None:
        check_fields(api, data)
    try:
        return model.model_validate(data)
    except pydantic.ValidationError as exc:
        raise from_validation_error(exc, tags=frozenset(tags)) from None


# --- thinking, tools, template kwargs ------------------------------------------------------


def thinking_flag(
    thinking: bool | None, template_kwargs: Mapping[str, Any] | None = None, effort: str | None = None
) -> bool | None:
    """The request's thinking toggle: ``thinking``, then ``chat_template_kwargs``
    (``enable_thinking``/``thinking``), then an effort ("none" turns it off, any other on);
    ``None`` leaves the model's default."""
    if thinking is not None:
        return thinking
    kwargs = template_kwargs or {}
    for key in THINKING_KWARGS:
        if isinstance(kwargs.get(key), bool):
            return kwargs[key]
    if effort is not None:
        return effort != "none"
    return None


def template_kwargs(kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """The client's chat-template kwargs, less the thinking keys (``thinking_flag`` owns them)."""
    return {k: v for k, v in (kwargs or {}).items() if k not in THINKING_KWARGS}


def check_tool_choice(tool_names: Iterable[str], *, forced: bool, name: str | None = None) -> None:
    """A choice that forces a call (``required``/``any``) or names one needs tools, and a named
    tool must be one of them. Raises ``ValueError`` (inside a validator: a 400)."""
    if not forced and name is None:
        return
    names = set(tool_names)
    if not names:
        raise ValueError("tool_choice requires tools")
    if name is not None and name not in names:
        raise ValueError(f"tool_choice names unknown function {name!r}")


def chat_tools(tools: Iterable[tuple[str, str | None, dict[str, Any] | None]]) -> list[dict[str, Any]] | None:
    """``(name, description, JSON schema)`` -> the chat ``{"type": "function", ...}`` tools the
    core renders (an absent schema is an empty object schema)."""
    out = []
    for name, description, parameters in tools:
        function: dict[str, Any] = {"name": name}
        if description is not None:
            function["description"] = description
        function["parameters"] = parameters if parameters is not None else {"type": "object", "properties": {}}
        out.append({"type": "function", "function": function})
    return out or None


def named_tool_choice(name: str) -> dict[str, Any]:
    """A forced call of one tool, as the core takes it."""
    return {"type": "function", "function": {"name": name}}


# --- budget and stops ----------------------------------------------------------------------


def budget(*values: int | None) -> int | None:
    """The first token budget given among an API's names for it (``None``: up to the context).
    The core clamps it to the room left after the prompt."""
    return next((v for v in values if v is not None), None)


def stop_tuple(stop: str | Iterable[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    return (stop,) if isinstance(stop, str) else tuple(stop)


# --- the prompt ----------------------------------------------------------------------------


def chat_prompt(
    messages: list[dict[str, Any]],
    *,
    tools: list[dict[str, Any]] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
    thinking: bool | None = None,
    parallel_tool_calls: bool | None = None,
    kwargs: Mapping[str, Any] | None = None,
) -> ChatPrompt:
    """The core prompt every endpoint builds (``kwargs``: the client's template kwargs)."""
    return ChatPrompt(
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        thinking=thinking,
        parallel_tool_calls=True if parallel_tool_calls is None else parallel_tool_calls,
        template_kwargs=template_kwargs(kwargs),
    )


async def prepare(ctx: Any, prompt: ChatPrompt, *, param: str = "messages", generate: bool = True) -> RenderedPrompt:
    """Decode the prompt's media, render it, and refuse a prompt that fills the context.
    ``param`` is the API's name for the conversation (``messages``, ``input``): errors name it.
    ``generate=False`` (counting tokens) renders without announcing a request to the engine."""
    await decode_prompt_media(ctx, prompt, param_prefix=param)
    try:
        rendered = await (ctx.render(prompt) if generate else asyncio.to_thread(ctx.core.render, prompt))
        ctx.check_context(rendered)
    except InvalidRequestError as exc:
        if exc.param == "messages":  # the core speaks chat
            exc.param = param
        raise
    return rendered
