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
def _honoured(why: str) -> FieldRule:
    return FieldRule("honoured", why)


def _ignored(why: str) -> FieldRule:
    return FieldRule("ignored", why)


def _refused(why: str, refuse_if: Callable[[Any], bool] | None = None) -> FieldRule:
    return FieldRule("refused", why, refuse_if)


# Reasons shared by both OpenAI APIs.
_COMMON: dict[str, FieldRule] = {
    "model": _honoured("must name the served model (404 otherwise); may be omitted"),
    "temperature": _honoured("sampling temperature (0 = greedy)"),
    "top_p": _honoured("nucleus sampling"),
    "tools": _honoured("function tools, rendered by the model's chat template; strict tools' arguments are enforced"),
    "tool_choice": _honoured("auto / none / required / a named function; a forced call is enforced in the family's call syntax"),
    "parallel_tool_calls": _honoured("false ends the answer after the first call (and a forced call allows one)"),
    "stream": _honoured("server-sent events"),
    "top_logprobs": _honoured("0-20 alternatives per answer token (reasoning tokens have none)"),
    "user": _ignored("an end-user id for OpenAI's abuse monitoring: nothing to monitor on a local server"),
    "safety_identifier": _ignored("an end-user id for OpenAI's safety checks: nothing to check it against locally"),
    "service_tier": _ignored("one local tier"),
    "prompt_cache_key": _ignored("prompt caching is automatic (longest cached prefix of this model's conversations)"),
    "prompt_cache_retention": _ignored("cache lifetime is the server's (LRU within prompt_cache_bytes)"),
    "prompt_cache_options": _ignored("as prompt_cache_key: no explicit breakpoints needed"),
    "moderation": _refused("moderation models are not available on a local server"),
    # lib_mlx extensions, shared by both endpoints
    "top_k": _honoured("extension: top-k sampling"),
    "min_p": _honoured("extension: min-p sampling"),
    "thinking": _honoured("extension: the thinking toggle (see reasoning_effort)"),
    "chat_template_kwargs": _honoured("extension: passed to the chat template (enable_thinking also toggles thinking)"),
    "thinking_budget": _honoured("extension: caps reasoning tokens, then the family's end-of-thinking marker is forced"),
    "presence_penalty": _honoured("OpenAI's additive penalty (-2..2) on tokens already in the answer"),
    "frequency_penalty": _honoured("OpenAI's additive penalty (-2..2) per earlier occurrence in the answer"),
    "repetition_penalty": _honoured("extension (mlx-lm / vLLM): multiplicative penalty on tokens already in the answer"),
    "logit_bias": _honoured("token id -> bias (-100..100) added to the logits; ids outside the vocabulary are refused"),
    "seed": _honoured("the request's own random stream: the same tokens alone or in a batch"),
}

# Every field of openai-python's request types for the two endpoints is listed (a test walks
# them); fields not listed (other clients' extensions) are accepted and ignored, logged at debug.
FIELDS: dict[str, dict[str, FieldRule]] = {
    "chat": {
        **_COMMON,
        "messages": _honoured("the conversation, rendered by the model's chat template"),
        "max_tokens": _honoured("token budget (clamped to the room the context has left)"),
        "max_completion_tokens": _honoured("as max_tokens (takes precedence)"),
        "max_output_tokens": _honoured("extension: as max_tokens"),
        "stop": _honoured("up to 4 stop strings"),
        "stream_options": _honoured("include_usage"),
        "n": _refused("only n=1 is supported", lambda n: n != 1),
        "reasoning_effort": _honoured("none: thinking off; minimal/low/medium/high: thinking on with a budget of 256/1024/4096/16384 reasoning tokens; xhigh/max: no cap"),
        "response_format": _honoured("text / json_object / json_schema, enforced while decoding"),
        "logprobs": _honoured("log-probabilities of the answer's tokens"),
        "ignore_eos": _honoured("extension (vLLM): generate through end-of-sequence up to max_tokens"),
        "audio": _refused("audio output is not supported"),
        "modalities": _refused("only text output is supported", lambda v: list(v) != ["text"]),
        "functions": _refused("deprecated: use tools"),
        "function_call": _refused("deprecated: use tool_choice"),
        "web_search_options": _refused("web search is not available on a local server"),
        "verbosity": _refused("only the default verbosity (medium) is supported", lambda v: v != "medium"),
        "prediction": _ignored("Predicted Outputs only speed up an answer, never change it"),
        "store": _ignored("stored chat completions (evals, distillation) are an OpenAI platform feature"),
        "metadata": _ignored("tags of stored chat completions: nothing is stored"),
    },
    "responses": {
        **_COMMON,
        "input": _honoured("text or input items (messages, function calls and outputs, reasoning)"),
        "instructions": _honoured("a system message ahead of the input"),
        "max_output_tokens": _honoured("token budget (clamped to the room the context has left)"),
        "reasoning": _honoured("effort as reasoning_effort in chat; max_tokens (extension) as thinking_budget; summary echoed"),
        "store": _honoured("responses are kept in memory for previous_response_id"),
        "previous_response_id": _honoured("continues a stored response"),
        "metadata": _honoured("echoed on the response"),
        "text": _honoured("format: text / json_object / json_schema, enforced while decoding; verbosity: medium only"),
        "truncation": _honoured("disabled: a prompt over the context is refused (auto is treated the same)"),
        "include": _honoured("message.output_text.logprobs; other values have nothing to include"),
        "max_tool_calls": _honoured("caps the calls in one response (the answer ends at the cap)"),
        "stream_options": _ignored("include_obfuscation pads events against network side channels: loopback only"),
        "background": _refused("background responses are not supported", bool),
        "background_options": _refused("background responses are not supported"),
        "conversation": _refused("the Conversations API is not supported: use previous_response_id"),
        "prompt": _refused("stored prompt templates are not supported"),
        "context_management": _refused("server-side compaction is not supported"),
        "image": _refused("image output is not supported"),
        "access_programs": _refused("access programs are an OpenAI platform feature"),
    },
    "messages": _fields(
        (
            "model", "messages", "system", "max_tokens", "temperature", "top_p", "top_k",
            "stop_sequences", "stream", "tools", "tool_choice", "thinking",
        ),
        (
            "metadata",
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
    reasoning_effort: str | None = None,
) -> ChatPrompt:
    """The core prompt every endpoint builds (``kwargs``: the client's template kwargs;
    ``reasoning_effort``: passed to templates that read one, e.g. gpt-oss's)."""
    return ChatPrompt(
        messages=messages,
        tools=tools,
        tool_choice=tool_choice,
        thinking=thinking,
        reasoning_effort=reasoning_effort,
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


def fields_markdown(apis: tuple[str, ...] = ("chat", "responses")) -> str:
    """The README's field table: field × endpoint × handling, with the reason (one line each)."""
    names = sorted({name for api in apis for name in FIELDS[api]})
    head = "| field | " + " | ".join(f"`{api}`" for api in apis) + " | what happens |"
    lines = [head, "| --- | " + " | ".join("---" for _ in apis) + " | --- |"]
    for name in names:
        rules_ = [FIELDS[api].get(name) for api in apis]
        cells = [r.handling if r is not None else "—" for r in rules_]
        reasons = list(dict.fromkeys(r.reason for r in rules_ if r is not None and r.reason))
        lines.append(f"| `{name}` | " + " | ".join(cells) + " | " + "; ".join(reasons) + " |")
    return "\n".join(lines)
