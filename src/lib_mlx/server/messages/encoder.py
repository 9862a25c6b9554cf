"""Anthropic Messages wire shapes built from core events: a pure ``(state, event) -> [events]``.

``MessageEncoder`` owns one message: its content blocks in order, the block being written and
the open tool calls. ``start()`` gives ``message_start``; ``encode(event)`` the stream events
for one core event; after ``Done``, ``message_delta`` (stop reason, usage) and
``message_stop``, and ``message`` holds the whole message (the non-streaming body). Per block:

    content_block_start
      thinking: thinking_delta... signature_delta
      text:     text_delta...
      tool_use: input_json_delta... (the arguments as the model writes them)
    content_block_stop

Events are plain dicts in the exact shapes of ``anthropic.types`` (the tests validate them
there). Usage follows Anthropic's accounting: ``input_tokens`` are the prompt tokens not read
from the prompt cache, ``cache_read_input_tokens`` those that were (their sum is the prompt).
A thinking block's ``signature`` is a digest of its text: local models need no proof of
origin, but clients hand the block back with its signature intact.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from ...core.events import (
    Done,
    Event,
    ReasoningDelta,
    TextDelta,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ...errors import LibMlxError

StreamEvent = dict[str, Any]

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def new_message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def signature_of(thinking: str) -> str:
    return "lib_mlx-" + hashlib.sha256(thinking.encode()).hexdigest()


def usage_body(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def stop_reason_of(done: Done) -> str:
    if done.finish_reason == "stop" and done.stop_sequence is not None:
        return "stop_sequence"
    return STOP_REASONS.get(done.finish_reason, "end_turn")


def error_event(error: LibMlxError) -> StreamEvent:
    return error.to_anthropic()


@dataclass
class _Block:
    kind: str  # "thinking" | "text" | "tool_use"
    index: int
    pieces: list[str] = field(default_factory=list)


@dataclass
class MessageEncoder:
    model: str
    input_tokens: int = 0  # the prompt's tokens, for message_start (before the cache is known)
    id: str = field(default_factory=new_message_id)
    content: list[dict[str, Any]] = field(default_factory=list)
    message: dict[str, Any] | None = None  # set once finished
    _current: _Block | None = None  # the thinking or text block being written
    _calls: dict[int, _Block] = field(default_factory=dict)  # open tool_use blocks by the core's index

    @property
    def finished(self) -> bool:
        return self.message is not None

    def _body(self, stop_reason: str | None, stop_sequence: str | None, usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": [dict(block) for block in self.content],
            "stop_reason": stop_reason,
            "stop_sequence": stop_sequence,
            "usage": usage,
        }

    # public -------------------------------------------------------------------------------
    def start(self) -> list[StreamEvent]:
        usage = {"input_tokens": self.input_tokens, "output_tokens": 0}
        return [{"type": "message_start", "message": self._body(None, None, usage)}]

    def encode(self, event: Event) -> list[StreamEvent]:
        if self.finished:
            return []
        if isinstance(event, TextDelta):
            return self._text("text", event.text)
        if isinstance(event, ReasoningDelta):
            return self._text("thinking", event.text)
        if isinstance(event, ToolCallStart):
            return self._call_start(event)
        if isinstance(event, ToolCallArgumentsDelta):
            return self._call_delta(event.index, event.delta)
        if isinstance(event, ToolCallEnd):
            return self._call_end(event)
        if isinstance(event, Done):
            return self._done(event)
        return []

    # blocks -----------------------------------------------------------------------------------
    def _open(self, kind: str, block: dict[str, Any]) -> tuple[_Block, StreamEvent]:
        state = _Block(kind=kind, index=len(self.content))
        self.content.append(block)
        return state, {"type": "content_block_start", "index": state.index, "content_block": dict(block)}

    def _text(self, kind: str, text: str) -> list[StreamEvent]:
        if not text:
            return []
        out: list[StreamEvent] = []
        current = self._current
        if current is None or current.kind != kind:
            out += self._close_current()
            empty = {"type": "thinking", "thinking": "", "signature": ""} if kind == "thinking" else {"type": "text", "text": ""}
            current, started = self._open(kind, empty)
            self._current = current
            out.append(started)
        current.pieces.append(text)
        delta = {"type": "thinking_delta", "thinking": text} if kind == "thinking" else {"type": "text_delta", "text": text}
        out.append({"type": "content_block_delta", "index": current.index, "delta": delta})
        return out

    def _close_current(self) -> list[StreamEvent]:
        current, self._current = self._current, None
        if current is None:
            return []
        text = "".join(current.pieces)
        block = self.content[current.index]
        out: list[StreamEvent] = []
        if current.kind == "thinking":
            block.update(thinking=text, signature=signature_of(text))
            delta = {"type": "signature_delta", "signature": block["signature"]}
            out.append({"type": "content_block_delta", "index": current.index, "delta": delta})
        else:
            block["text"] = text
        out.append({"type": "content_block_stop", "index": current.index})
        return out

    def _call_start(self, event: ToolCallStart) -> list[StreamEvent]:
        out = self._close_current()
        call, started = self._open("tool_use", {"type": "tool_use", "id": event.id, "name": event.name, "input": {}})
        self._calls[event.index] = call
        out.append(started)
        return out

    def _call_delta(self, index: int, delta: str) -> list[StreamEvent]:
        call = self._calls.get(index)
        if call is None or not delta:
            return []
        return self._call_delta_to(call, delta)

    def _call_end(self, event: ToolCallEnd) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if event.index not in self._calls:  # a call announced only at its end
            out += self._call_start(ToolCallStart(event.index, event.id, event.name))
        call = self._calls.pop(event.index)
        streamed = "".join(call.pieces)
        if event.arguments.startswith(streamed) and event.arguments != streamed:
            # Whatever the deltas did not carry yet, so that they add up to the final input.
            out += self._call_delta_to(call, event.arguments[len(streamed) :])
        self.content[call.index]["input"] = _input_of(event.arguments)
        out.append({"type": "content_block_stop", "index": call.index})
        return out

    def _call_delta_to(self, call: _Block, delta: str) -> list[StreamEvent]:
        call.pieces.append(delta)
        return [{"type": "content_block_delta", "index": call.index, "delta": {"type": "input_json_delta", "partial_json": delta}}]

    # the end -----------------------------------------------------------------------------------
    def _done(self, done: Done) -> list[StreamEvent]:
        out = self._close_current()
        for index in sorted(self._calls):  # cut off mid-call (max_tokens): what was written
            call = self._calls.pop(index)
            self.content[call.index]["input"] = _input_of("".join(call.pieces))
            out.append({"type": "content_block_stop", "index": call.index})
        stop_reason = stop_reason_of(done)
        usage = usage_body(done.usage)
        self.message = self._body(stop_reason, done.stop_sequence if stop_reason == "stop_sequence" else None, usage)
        out.append(
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": self.message["stop_sequence"]},
                "usage": usage,
            }
        )
        out.append({"type": "message_stop"})
        return out


def _input_of(arguments: str) -> dict[str, Any]:
    """A call's input as an object: its arguments parsed; ``{}`` for none or for arguments cut
    off before they closed."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
