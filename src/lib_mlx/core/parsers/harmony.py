"""gpt-oss (OpenAI Harmony): the output is a sequence of messages, each a header then a body,

    <|channel|>analysis<|message|>...<|end|>                       -> reasoning
    <|start|>assistant<|channel|>final<|message|>...<|return|>     -> content
    <|start|>assistant<|channel|>commentary to=functions.NAME <|constrain|>json<|message|>{...}<|call|>
                                                                   -> a tool call (arguments stream)

(the prompt ends with ``<|start|>assistant``, so the first header has no ``<|start|>``; the
recipient may also stand in the role part: ``<|start|>assistant to=functions.NAME<|channel|>...``).
A commentary message without a recipient is a preamble to the user: content. ``<|call|>`` and
``<|return|>`` are stop tokens, so a body usually just ends with the generation.

This is not a marker language (a channel's meaning is in its header), so the family has a parser
of its own with ``StreamParser``'s interface. The template reads the reasoning effort from
``reasoning_effort``; a kept reasoning goes back as the message's ``thinking`` (transformers
copies ``reasoning_content`` there), one tool call per assistant message (the template renders
only the first).
"""

from __future__ import annotations

import re
from typing import Any

from ..events import Event, ReasoningDelta, TextDelta, ToolCallArgumentsDelta, ToolCallEnd, ToolCallStart
from ._json import JsonReader, JsonWriter, Malformed
from .base import CallSyntax, Family, ParserSpec, append_coalesced, tool_names
from .llama3 import one_call_per_message

_BODY_ENDS = ("<|end|>", "<|call|>", "<|return|>")
_STOPS = (*_BODY_ENDS, "<|start|>")
_RECIPIENT = re.compile(r"to=functions\.([^\s<]+)")
_CHANNEL = re.compile(r"<\|channel\|>\s*(\w+)")
_HEADER_LIMIT = 400  # a "header" longer than this is text the model wrote without one

_HEADER, _BODY, _BETWEEN = range(3)


class _Args:
    def __init__(self) -> None:
        self.writer = JsonWriter()
        self.depth = 0
        self.done = False

    def obj_begin(self) -> None:
        if self.done:
            raise Malformed
        self.depth += 1
        self.writer.obj_begin()

    def obj_end(self) -> None:
        self.depth -= 1
        self.writer.obj_end()
        if self.depth == 0:
            self.done = True

    def arr_begin(self) -> None:
        if self.depth == 0:
            raise Malformed
        self.depth += 1
        self.writer.arr_begin()

    def arr_end(self) -> None:
        self.depth -= 1
        self.writer.arr_end()

    def key(self, key_json: str, key: str) -> None:
        self.writer.key(key_json)

    def str_begin(self) -> None:
        if self.depth == 0:
            raise Malformed
        self.writer.str_begin()

    def str_chunk(self, json_text: str) -> None:
        self.writer.str_chunk(json_text)

    def str_end(self) -> None:
        self.writer.str_end()

    def scalar(self, json_text: str) -> None:
        if self.depth == 0:
            raise Malformed
        self.writer.scalar(json_text)


class HarmonyParser:
    """Harmony output -> events; ``StreamParser``'s interface (see ``core.parsers``)."""

    def __init__(
        self,
        spec: ParserSpec,
        family: Family,
        *,
        tools: list[dict] | None = None,
        starts_in_reasoning: bool = False,
        prefill: str = "",
        parse_tools: bool = True,
    ) -> None:
        self.spec = spec
        self.family = family
        self.tools = tools
        self.parse_tools = parse_tools
        self.in_reasoning = False
        self.reasoning_tokens = 0
        self.answered = False
        self._events: list[Event] = []
        self._where = _HEADER
        self._head = ""  # header text read so far
        self._hold = ""  # body text that may be the start of an end marker
        self._kind = "final"  # the body's destination: reasoning / final / call
        self._reason_ws = ""
        self._reasoned = False
        self._reason_lstrip = False
        self._calls = 0
        self._call: list[Any] | None = None  # [index, id, name, reader, sink, raw, parts, failed]
        self._touched_reasoning = False
        if prefill:
            self._scan(prefill)

    # -- interface ---------------------------------------------------------------------------
    def feed(self, text: str, *, token: bool = True) -> list[Event]:
        self._touched_reasoning = False
        self._scan(text)
        self.in_reasoning = self._touched_reasoning
        if token and self._touched_reasoning:
            self.reasoning_tokens += 1
        return self._take()

    def finish(self) -> list[Event]:
        if self._where == _HEADER and self._head:
            self._route("final", "")  # text the model wrote without any header
            self._body(self._head)
            self._head = ""
        if self._hold:
            self._body(self._hold)
            self._hold = ""
        self._end_body()
        return self._take()

    # -- scanning ----------------------------------------------------------------------------
    def _scan(self, text: str) -> None:
        i = 0
        while i < len(text):
            if self._where == _BODY:
                i = self._scan_body(text, i)
            else:
                j = text.find("<|message|>", i)
                chunk = text[i:] if j < 0 else text[i : j + len("<|message|>")]
                self._head += chunk
                i += len(chunk)
                if self._head.endswith("<|message|>"):
                    self._open(self._head)
                    self._head = ""
                elif len(self._head) > _HEADER_LIMIT:
                    head, self._head = self._head, ""
                    self._route("final", "")
                    self._scan(head)

    def _scan_body(self, text: str, i: int) -> int:
        """Read body text from ``text[i:]``; the index where the body's message ended (or the end)."""
        held = len(self._hold)
        data = self._hold + text[i:]
        self._hold = ""
        k = data.find("<")
        while k >= 0:
            rest = data[k:]
            done = next((m for m in _STOPS if rest.startswith(m)), None)
            if done is not None:
                self._body(data[:k])
                self._end_body()
                self._where = _HEADER
                return i + k + len(done) - held
            if any(m.startswith(rest) for m in _STOPS):
                self._body(data[:k])
                self._hold = rest
                return len(text)
            k = data.find("<", k + 1)
        self._body(data)
        return len(text)

    def _offers(self, name: str) -> bool:
        """A call to a function the request did not offer stays text (as in ``StreamParser``)."""
        return self.tools is None or name in frozenset(tool_names(self.tools))

    # -- messages ----------------------------------------------------------------------------
    def _open(self, header: str) -> None:
        channel = _CHANNEL.search(header)
        recipient = _RECIPIENT.search(header)
        name = channel.group(1) if channel else "final"
        if recipient and self.parse_tools and self._offers(recipient.group(1)):
            self._route("call", recipient.group(1))
        elif name == "analysis":
            self._route("reasoning", "")
        else:
            self._route("final", "")

    def _route(self, kind: str, name: str) -> None:
        self._where, self._kind = _BODY, kind
        if kind == "reasoning":
            self._reason_lstrip = True
            self._reason_ws = "\n\n" if self._reasoned else ""
        elif kind == "call":
            index = self._calls
            self._calls += 1
            call_id = self.family.call_id()
            sink = _Args()
            self._call = [index, call_id, name, JsonReader(sink), sink, [], [], False]
            self._push(ToolCallStart(index, call_id, name))

    def _body(self, text: str) -> None:
        if not text:
            return
        kind = self._kind
        if kind == "reasoning":
            self._touched_reasoning = True
            if self._reason_lstrip:
                text = text.lstrip()
                if not text:
                    return
                self._reason_lstrip = False
            body = text.rstrip()
            if not body:
                self._reason_ws += text
                return
            self._push(ReasoningDelta(self._reason_ws + body))
            self._reason_ws = text[len(body) :]
            self._reasoned = True
        elif kind == "call":
            call = self._call
            call[5].append(text)
            if call[7]:
                return
            sink = call[4]
            k = call[3].feed(text)
            if k is not None and not (sink.done and not text[k:].strip()):
                call[7] = True
            self._delta(sink.writer.take())
        else:
            self._push(TextDelta(text))

    def _end_body(self) -> None:
        if self._where != _BODY:
            return
        if self._kind == "call" and self._call is not None:
            index, call_id, name, _, sink, raw, parts, failed = self._call
            if not sink.done:
                self._delta(sink.writer.take() + sink.writer.closer())
            if not parts:
                self._delta("{}")
            self._call = None
            self._push(ToolCallEnd(index, call_id, name, "".join(parts)))
            if failed or not sink.done:
                self._push(TextDelta("".join(raw)))
        self._reason_ws = ""
        self._where = _BETWEEN

    def _delta(self, text: str) -> None:
        if text and self._call is not None:
            self._call[6].append(text)
            self._push(ToolCallArgumentsDelta(self._call[0], text))

    def _push(self, event: Event) -> None:
        if type(event) is TextDelta and not self.answered and event.text.strip():
            self.answered = True
        append_coalesced(self._events, event)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events


def prepare_history(messages: list[dict[str, Any]]) -> None:
    """One call per assistant message; a call message keeps its reasoning or its text, not both
    (the template raises on both: the text was a preamble the user already saw)."""
    one_call_per_message(messages)
    for msg in messages:
        if msg["role"] == "assistant" and msg.get("tool_calls") and msg.get("reasoning_content"):
            msg["content"] = ""


FAMILY = Family(
    name="harmony",
    parser=HarmonyParser,
    syntax=CallSyntax(
        start="<|channel|>commentary to=functions.", end="<|call|>", named="{name} <|constrain|>json<|message|>"
    ),
    effort_variable="reasoning_effort",
    prepare_history=prepare_history,
)
