"""Llama 3.1 / 3.2 / 3.3: tool calls as a bare JSON object ``{"name": ..., "parameters": {...}}``
at the start of the answer (the templates' own instruction), or after ``<|python_tag|>``;
several calls separated by ``;`` (as vLLM's ``llama3_json`` reads them). No reasoning.

History: the Llama 3.1 template renders one call per assistant message (it raises on more), so a
message with parallel calls is split into one message per call, each followed by its result.
"""

from __future__ import annotations

from typing import Any

from .base import CallSyntax, Family
from .qwen3 import JsonCalls

_BARE = '{"name"'


class LlamaCalls(JsonCalls):
    """JSON call objects; opened by ``<|python_tag|>`` or, at the start of the answer, by the
    object itself (its opening ``{"name"`` is the marker and is read as JSON)."""

    def __init__(self, parser, marker: str, origin: str, tools) -> None:
        super().__init__(parser, marker, origin, tools)
        self._bare = marker == _BARE
        self._refused = self._bare and (parser.answered or origin != "normal")
        if self._bare and not self._refused:
            self._base = 0
            self._reader.feed(marker)

    def _consume(self, text: str) -> int | None:
        if self._refused:
            return 0  # a JSON object inside prose is the answer's text
        if ";" not in text:
            return super()._consume(text)
        base, offset = self._base, 0
        for part in text.split(";"):
            if offset:
                if self._reader.idle and self.completed and not self._in:
                    self._ignoring = False  # ";" between calls
                else:
                    self._base = base + offset - 1
                    k = super()._consume(";")
                    if k is not None:
                        return offset - 1 + k
            self._base = base + offset
            k = super()._consume(part)
            if k is not None:
                return offset + k
            offset += len(part) + 1
        self._base = base
        return None


def one_call_per_message(messages: list[dict[str, Any]]) -> None:
    """[assistant(calls a, b), tool(a), tool(b)] -> [assistant(a), tool(a), assistant(b), tool(b)]."""
    out: list[dict[str, Any]] = []
    i = 0
    while i < len(messages):
        msg = messages[i]
        calls = msg.get("tool_calls") or []
        if msg["role"] != "assistant" or len(calls) < 2:
            out.append(msg)
            i += 1
            continue
        j = i + 1
        results = []
        while j < len(messages) and messages[j]["role"] == "tool":
            results.append(messages[j])
            j += 1
        by_id = {r.get("tool_call_id"): r for r in results}
        used = []
        for n, call in enumerate(calls):
            out.append({**msg, "content": msg.get("content") if n == 0 else "", "tool_calls": [call]})
            result = by_id.get(call.get("id")) or (results[n] if n < len(results) else None)
            if result is not None and result not in used:
                used.append(result)
                out.append(result)
        out.extend(r for r in results if r not in used)
        i = j
    messages[:] = out


FAMILY = Family(
    name="llama3",
    call_block=LlamaCalls,
    tool_call_start="<|python_tag|>",
    more_call_starts=(_BARE,),
    syntax=CallSyntax(start=_BARE, end=None, named=': "{name}", "parameters": ', separator="; "),
    prepare_history=one_call_per_message,
    own_markers=True,
)
