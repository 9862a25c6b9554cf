"""Families by name (lazily imported), detection from a tokenizer, and the parser factory."""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any, Callable

from ...errors import InvalidConfigError
from .base import Family, ParserSpec, StreamParser

_FAMILIES: dict[str, str | Family] = {
    "qwen3": "lib_mlx.core.parsers.qwen3:FAMILY",
    "gemma4": "lib_mlx.core.parsers.gemma4:FAMILY",
    "mlx_lm": "lib_mlx.core.parsers.generic:FAMILY",
    "plain": "lib_mlx.core.parsers.generic:PLAIN",
}

# Detection, first match wins. The tool parser decides first: a model whose calls are not
# JSON must not get the JSON family just because it also thinks with <think>.
_DETECT: tuple[tuple[str, Callable[[ParserSpec], bool]], ...] = (
    ("gemma4", lambda s: s.tool_parser == "gemma4"),
    ("qwen3", lambda s: s.tool_parser == "json_tools"),
    ("mlx_lm", lambda s: s.tool_parser is not None),
    ("gemma4", lambda s: s.think_start == "<|channel>thought"),
    ("qwen3", lambda s: s.think_start == "<think>"),
    ("mlx_lm", lambda s: s.think_start is not None),
    ("plain", lambda s: True),
)


def register_family(name: str, family: str | Family) -> None:
    """Register a family: a ``Family`` or ``"module:attribute"`` naming one (imported on use)."""
    _FAMILIES[name] = family


def get_family(name: str) -> Family:
    try:
        family = _FAMILIES[name]
    except KeyError:
        raise InvalidConfigError(
            f"unknown parser family {name!r} (known: {', '.join(sorted(_FAMILIES))})", param="family"
        ) from None
    if isinstance(family, str):
        module, _, attribute = family.partition(":")
        family = _FAMILIES[name] = getattr(importlib.import_module(module), attribute)
    return family


def detect_family(spec: ParserSpec) -> str:
    return next(name for name, test in _DETECT if test(spec))


def _tool_parser_name(tokenizer: Any) -> str | None:
    parser = getattr(tokenizer, "tool_parser", None)
    module = getattr(parser, "__module__", "") or ""
    if module.startswith("mlx_lm.tool_parsers."):
        return module.rsplit(".", 1)[1]
    kwargs = getattr(tokenizer, "init_kwargs", None)
    return kwargs.get("tool_parser_type") if isinstance(kwargs, dict) else None


def parser_spec_from_tokenizer(tokenizer: Any, family: str | None = None) -> ParserSpec:
    """Read markers from mlx-lm's ``TokenizerWrapper`` (which infers them from the vocabulary
    and the chat template); ``family`` overrides detection."""
    thinking = bool(getattr(tokenizer, "has_thinking", False))
    spec = ParserSpec(
        family="auto",
        think_start=tokenizer.think_start if thinking else None,
        think_end=tokenizer.think_end if thinking else None,
        tool_call_start=getattr(tokenizer, "tool_call_start", None) or None,
        tool_call_end=getattr(tokenizer, "tool_call_end", None) or None,
        tool_parser=_tool_parser_name(tokenizer),
    )
    return replace(spec, family=family or detect_family(spec))


def make_parser(
    spec: ParserSpec,
    *,
    tools: list[dict] | None = None,
    starts_in_reasoning: bool = False,
    prefill: str = "",
    parse_tools: bool = True,
) -> StreamParser:
    """A parser for one request.

    ``tools``: the request's tools; a call to a function not among them comes back as text
    (``None``: no check, for whole-text helpers; the server decides what ``tool_choice``
    allows). ``starts_in_reasoning``: the prompt already opened the reasoning block. ``prefill``: text the prompt already placed at
    the start of the assistant turn (an opened ``<think>``, a forced ``<tool_call>``…); it is
    parsed as if generated but counts as no token and is never given back as text, and the
    events it completes (a ``ToolCallStart`` for a forced function name) come with the first
    ``feed()``.
    ``parse_tools=False`` (``tool_choice: "none"``): tool-call markup stays answer text.
    """
    name = detect_family(spec) if spec.family == "auto" else spec.family
    return StreamParser(
        spec,
        get_family(name),
        tools=tools,
        starts_in_reasoning=starts_in_reasoning,
        prefill=prefill,
        parse_tools=parse_tools,
    )
