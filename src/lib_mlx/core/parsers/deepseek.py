"""DeepSeek-R1 (distills, R1-0528) and V3.1: reasoning ``<think>``...``</think>`` (the templates
open it in the prompt), tool calls in ``<｜tool▁calls▁begin｜>`` ... ``<｜tool▁calls▁end｜>``:

    R1:   <｜tool▁call▁begin｜>function<｜tool▁sep｜>NAME\\n```json\\n{...}\\n```<｜tool▁call▁end｜>
    V3.1: <｜tool▁call▁begin｜>NAME<｜tool▁sep｜>{...}<｜tool▁call▁end｜>
"""

from __future__ import annotations

import regex

from ._headers import HeaderJsonCalls
from .base import CallSyntax, Family

BEGIN, END = "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>"
_CALL, _SEP, _CALL_END = "<｜tool▁call▁begin｜>", "<｜tool▁sep｜>", "<｜tool▁call▁end｜>"
_HEADER = regex.compile(
    r"\s*" + regex.escape(_CALL) + r"(?|function" + regex.escape(_SEP) + r"(?P<name>[^\n<]+)\n```(?:json)?[ \t]*\n"
    r"|(?!function" + regex.escape(_SEP) + r")(?P<name>[^\n<]+)" + regex.escape(_SEP) + r")"
)


class DeepSeekCalls(HeaderJsonCalls):
    first = following = _HEADER
    trailer = regex.compile(r"\s*(?:```)?\s*" + regex.escape(_CALL_END) + r"\s*")


FAMILY = Family(
    name="deepseek",
    call_block=DeepSeekCalls,
    think_start="<think>",
    think_end="</think>",
    tool_call_start=BEGIN,
    tool_call_end=END,
    syntax=CallSyntax(start=BEGIN + _CALL, end=_CALL_END + END, named="function" + _SEP + "{name}\n```json\n"),
    thinking_switches=("enable_thinking", "thinking"),  # R1 distills (llama.cpp's copies) / V3.1
    own_markers=True,
)
