"""Request fields that steer decoding, turned into core values, and the log-probability wire
shapes: structured output (``response_format``, Responses ``text.format``), log-probabilities,
``logit_bias``, and the thinking budget. Pure functions; each problem is a 400 naming its field.

What the core does with them: ``core.grammar`` (grammar per request), ``core.processors``
(penalties, bias, budget), ``core.logprobs`` (which log-probabilities these are).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from ..core.events import TokenLogprob
from ..core.grammar import GrammarSpec
from ..core.logprobs import MAX_TOP_LOGPROBS
from ..core.processors import EFFORT_BUDGETS
from ..errors import InvalidRequestError

LOGPROBS_INCLUDE = "message.output_text.logprobs"


def _bad(param: str, message: str) -> InvalidRequestError:
    return InvalidRequestError(f"{param}: {message}", param=param)


# --- structured output ------------------------------------------------------------------------


def _schema_grammar(schema: Any, param: str) -> GrammarSpec:
    if schema is None:
        schema = {}  # OpenAI: a json_schema format without a schema allows any JSON
    if not isinstance(schema, dict):
        raise _bad(param, "the schema must be a JSON object")
    return GrammarSpec.json_schema(schema, param=param.split(".")[0])


def response_format_grammar(value: Any) -> GrammarSpec | None:
    """Chat ``response_format``: ``text`` (None), ``json_object``, or ``json_schema`` with
    ``{"name", "schema", "strict", "description"}``."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _bad("response_format", "must be an object with a type")
    kind = value.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec.json_object(param="response_format")
    if kind == "json_schema":
        spec = value.get("json_schema")
        if not isinstance(spec, Mapping) or not isinstance(spec.get("name"), str):
            raise _bad("response_format", "json_schema needs an object with a name and a schema")
        return _schema_grammar(spec.get("schema"), "response_format")
    raise _bad("response_format", f"unsupported type {kind!r}; expected text, json_object or json_schema")


def text_format_grammar(text: Any) -> GrammarSpec | None:
    """Responses ``text``: ``format`` is ``text`` (None), ``json_object`` or ``json_schema``
    with ``{"name", "schema", "strict", "description"}`` flat; ``verbosity`` has no meaning
    for a local model other than the default ("medium") and is refused otherwise."""
    if text is None:
        return None
    if not isinstance(text, Mapping):
        raise _bad("text", "must be an object")
    verbosity = text.get("verbosity")
    if verbosity not in (None, "medium"):
        raise _bad("text.verbosity", "only the default verbosity is supported")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, Mapping):
        raise _bad("text.format", "must be an object with a type")
    kind = fmt.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return GrammarSpec.json_object(param="text.format")
    if kind == "json_schema":
        if not isinstance(fmt.get("name"), str):
            raise _bad("text.format", "json_schema needs a name and a schema")
        return GrammarSpec.json_schema(_schema_or_empty(fmt.get("schema"), "text.format"), param="text.format")
    raise _bad("text.format", f"unsupported type {kind!r}; expected text, json_object or json_schema")


def _schema_or_empty(schema: Any, param: str) -> dict[str, Any]:
    if schema is None:
        return {}
    if not isinstance(schema, dict):
        raise _bad(param, "the schema must be a JSON object")
    return schema


def check_strict_tools(tools: Iterable[Mapping[str, Any]] | None, param: str = "tools") -> None:
    """A ``strict`` tool needs a parameters schema (OpenAI refuses one without)."""
    for i, tool in enumerate(tools or ()):
        fn = tool.get("function", tool)
        if fn.get("strict") and fn.get("parameters") is not None and not isinstance(fn.get("parameters"), dict):
            raise _bad(f"{param}[{i}].parameters", "a strict tool's parameters must be a JSON schema object")


# --- log-probabilities ------------------------------------------------------------------------


def chat_logprobs(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """Chat ``logprobs``/``top_logprobs`` -> how many alternatives per token (None: off)."""
    if top_logprobs is not None:
        if not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
            raise _bad("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
        if not logprobs:
            raise _bad("top_logprobs", "needs logprobs: true")
    return (top_logprobs or 0) if logprobs else None


def responses_logprobs(include: Iterable[str] | None, top_logprobs: int | None) -> int | None:
    """Responses ``include: ["message.output_text.logprobs"]`` and ``top_logprobs``."""
    if top_logprobs is not None and not 0 <= top_logprobs <= MAX_TOP_LOGPROBS:
        raise _bad("top_logprobs", f"must be between 0 and {MAX_TOP_LOGPROBS}")
    wanted = LOGPROBS_INCLUDE in (include or ()) or top_logprobs is not None
    return (top_logprobs or 0) if wanted else None


def chat_logprob(event: TokenLogprob) -> dict[str, Any]:
    """One ``choices[].logprobs.content[]`` entry."""
    return {
        "token": event.token,
        "logprob": event.logprob,
        "bytes": list(event.bytes),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(b)} for t, lp, b in event.top],
    }


def responses_logprob(event: TokenLogprob) -> dict[str, Any]:
    """One ``output_text.logprobs[]`` / ``response.output_text.delta`` ``logprobs[]`` entry."""
    return {
        "token": event.token,
        "logprob": event.logprob,
        "bytes": list(event.bytes),
        "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(b)} for t, lp, b in event.top],
    }


# --- penalties, bias, thinking budget ---------------------------------------------------------


def logit_bias_pairs(value: Mapping[str, Any] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's ``{"token id": bias}`` (bias -100..100) -> ``((id, bias), ...)``."""
    if not value:
        return ()
    out = []
    for key, bias in value.items():
        try:
            token = int(key)
        except (TypeError, ValueError):
            raise _bad("logit_bias", f"keys are token ids; got {key!r}") from None
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise _bad("logit_bias", f"the bias of token {key} must be a number between -100 and 100")
        out.append((token, float(bias)))
    return tuple(out)


def thinking_budget(explicit: int | None, effort: str | None, *, param: str = "thinking_budget") -> int | None:
    """An explicit budget, else the documented budget of a reasoning effort
    (``core.processors.EFFORT_BUDGETS``); None: no cap."""
    if explicit is not None:
        if isinstance(explicit, bool) or explicit < 0:
            raise _bad(param, "must be a non-negative integer")
        return explicit
    if effort is None or effort == "none":
        return None
    if effort not in EFFORT_BUDGETS:
        raise _bad("reasoning_effort", f"unknown effort {effort!r}; expected one of none, {', '.join(EFFORT_BUDGETS)}")
    return EFFORT_BUDGETS[effort]


__all__ = [
    "LOGPROBS_INCLUDE",
    "chat_logprob",
    "chat_logprobs",
    "check_strict_tools",
    "logit_bias_pairs",
    "response_format_grammar",
    "responses_logprob",
    "responses_logprobs",
    "text_format_grammar",
    "thinking_budget",
]
