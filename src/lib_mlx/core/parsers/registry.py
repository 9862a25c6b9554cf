"""Families by name (each imported on first use), and the parser factory."""

from __future__ import annotations

import importlib
from dataclasses import replace
from typing import Any

from ...errors import InvalidConfigError
from .base import Family, ParserSpec, StreamParser
from .detect import detect_family, evidence_from_tokenizer

_FAMILIES: dict[str, str | Family] = {
    "qwen3": "lib_mlx.core.parsers.qwen3:FAMILY",
    "gemma4": "lib_mlx.core.parsers.gemma4:FAMILY",
    "mlx_lm": "lib_mlx.core.parsers.generic:FAMILY",
    "plain": "lib_mlx.core.parsers.generic:PLAIN",
    "mistral": "lib_mlx.core.parsers.mistral:FAMILY",
    "llama3": "lib_mlx.core.parsers.llama3:FAMILY",
    "deepseek": "lib_mlx.core.parsers.deepseek:FAMILY",
    "kimi": "lib_mlx.core.parsers.kimi:FAMILY",
    "granite": "lib_mlx.core.parsers.granite:FAMILY",
    "harmony": "lib_mlx.core.parsers.harmony:FAMILY",
}


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


def parser_spec_from_tokenizer(tokenizer: Any, family: str | None = None, config: dict | None = None) -> ParserSpec:
    """The model's ``ParserSpec``: markers read from mlx-lm's ``TokenizerWrapper``, the family
    detected (``detect.DETECTION``) unless ``family`` names one."""
    evidence = evidence_from_tokenizer(tokenizer, config)
    if family:
        get_family(family)  # an unknown name fails at load
    return replace(evidence.spec, family=family or detect_family(evidence))


def family_of(spec: ParserSpec) -> Family:
    """The registered family a spec names (detected from its markers when ``"auto"``)."""
    return get_family(detect_family(spec) if spec.family == "auto" else spec.family)


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
    family = family_of(spec)
    factory = family.parser or StreamParser
    return factory(
        spec,
        family,
        tools=tools,
        starts_in_reasoning=starts_in_reasoning,
        prefill=prefill,
        parse_tools=parse_tools,
    )
