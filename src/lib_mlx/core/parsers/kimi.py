"""Kimi K2 (Instruct, Thinking): tool calls in ``<|tool_calls_section_begin|>`` ...
``<|tool_calls_section_end|>``, each ``<|tool_call_begin|>functions.NAME:N<|tool_call_argument_begin|>{...}<|tool_call_end|>``;
the model's ``functions.NAME:N`` is kept as the call's id (the template numbers the calls
itself). Reasoning (K2 Thinking): ``<think>``...``</think>``.

Kimi's templates call ``list.append``/``pop``, which transformers' immutable sandbox refuses:
``core.template`` renders such templates in a sandbox that allows list mutation."""

from __future__ import annotations

import regex

from ._headers import HeaderJsonCalls
from .base import CallSyntax, Family

BEGIN, END = "<|tool_calls_section_begin|>", "<|tool_calls_section_end|>"
_HEADER = regex.compile(
    r"\s*<\|tool_call_begin\|>\s*(?P<id>(?:functions\.)?(?P<name>[\w\-.]+?)(?::\d+)?)\s*<\|tool_call_argument_begin\|>"
)


class KimiCalls(HeaderJsonCalls):
    first = following = _HEADER
    trailer = regex.compile(r"\s*<\|tool_call_end\|>\s*")


FAMILY = Family(
    name="kimi",
    call_block=KimiCalls,
    think_start="<think>",
    think_end="</think>",
    tool_call_start=BEGIN,
    tool_call_end=END,
    syntax=CallSyntax(
        start=BEGIN + "<|tool_call_begin|>", end="<|tool_call_end|>" + END,
        named="functions.{name}:0<|tool_call_argument_begin|>",
    ),
    own_markers=True,
)
