"""Granite 3.3: reasoning ``<think>``...``</think>`` and the answer in ``<response>``...``</response>``
(both only when the template's own ``thinking`` switch is on), tool calls ``<|tool_call|>`` then a
JSON list of ``{"name": ..., "arguments": {...}}`` objects."""

from __future__ import annotations

from .base import CallSyntax, Family
from .qwen3 import JsonCalls

FAMILY = Family(
    name="granite",
    call_block=JsonCalls,
    think_start="<think>",
    think_end="</think>",
    tool_call_start="<|tool_call|>",
    silent_markers=("<response>", "</response>"),
    syntax=CallSyntax(start="<|tool_call|>[", end="]", named='{"name": "{name}", "arguments": ', separator=", "),
    thinking_switches=("thinking", "enable_thinking"),
    own_markers=True,
)
