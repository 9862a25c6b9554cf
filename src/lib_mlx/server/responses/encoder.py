"""Responses wire shapes built from core events: a pure ``(state, event) -> [stream events]``.

``ResponseEncoder`` owns one response's state: the output items in order, the item being
written, and the ``sequence_number`` counter. ``start()`` gives ``response.created`` and
``response.in_progress``; ``encode(event)`` gives the stream events for one core event, and
after ``Done``/``Failed`` the terminal ``response.completed`` / ``response.incomplete`` /
``response.failed`` carrying the whole response, which ``response`` also holds (the
non-streaming body). Per output item the events follow the lifecycle

    output_item.added
      reasoning: content_part.added, reasoning_text.delta... reasoning_text.done, content_part.done
      message:   content_part.added, output_text.delta... output_text.done, content_part.done
      call:      function_call_arguments.delta... function_call_arguments.done
    output_item.done

openai-node's stream accumulator needs the reasoning item's ``content_part.added`` before its
first delta. When the request asks for ``reasoning.summary``, the reasoning item also carries
one ``summary_text`` part with the same text (a local model writes no separate summary: its
reasoning is the honest one), streamed as ``reasoning_summary_part.added``,
``reasoning_summary_text.delta``... ``.done``, ``reasoning_summary_part.done`` beside the
content events -- LangChain, pydantic-ai and the AI SDK show reasoning only from summaries.

Events are plain dicts in the exact shapes of ``openai.types.responses`` (the tests validate
them there), so the server needs no ``openai`` package. Text is kept as lists of pieces and
joined once when an item closes: nothing is O(length) per token.
"""

from __future__ import annotations

import copy
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ...core.events import (
    Done,
    Event,
    Failed,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ...errors import CancelledError
from ..structured import responses_logprob

StreamEvent = dict[str, Any]


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def usage_body(usage: Usage) -> dict[str, Any]:
    """``ResponseUsage``: every field its type requires (``cache_write_tokens`` included)."""
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {
            "cached_tokens": usage.cached_tokens,
            "cache_write_tokens": getattr(usage, "cache_write_tokens", 0),
        },
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def error_code_of(error: Exception) -> str:
    """``ResponseError.code`` admits a fixed list; a local generation failure is a server error."""
    return "rate_limit_exceeded" if getattr(error, "status", None) == 429 else "server_error"


@dataclass
class _Item:
    """An output item being written: its index, id, and text pieces (or call arguments)."""

    kind: str  # "reasoning" | "message" | "function_call"
    index: int
    id: str
    pieces: list[str] = field(default_factory=list)
    call_id: str = ""
    name: str = ""
    logprobs: list[dict[str, Any]] = field(default_factory=list)  # message items


@dataclass
class ResponseEncoder:
    """One response's streaming state. ``base`` is the response object without its output
    (id, model, echoed request parameters); see ``serving.response_skeleton``."""

    base: dict[str, Any]
    sequence_number: int = 0
    output: list[dict[str, Any]] = field(default_factory=list)
    response: dict[str, Any] | None = None  # set once finished
    _current: _Item | None = None  # the reasoning or message item being written
    _calls: dict[int, _Item] = field(default_factory=dict)  # open calls by the core's index
    # log-probabilities of answer tokens whose text has not been sent yet (a token's
    # ``TokenLogprob`` comes before its text, which a parser may hold back a while)
    _logprobs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def id(self) -> str:
        return self.base["id"]

    @property
    def finished(self) -> bool:
        return self.response is not None

    @property
    def summarize(self) -> bool:
        """The request asked for ``reasoning.summary`` (any of auto/concise/detailed)."""
        return bool((self.base.get("reasoning") or {}).get("summary"))

    # public -------------------------------------------------------------------------------
    def snapshot(self, status: str) -> dict[str, Any]:
        body = dict(self.base)
        body.update(status=status, output=[copy.deepcopy(item) for item in self.output])
        return body

    def start(self) -> list[StreamEvent]:
        return [
            self._event("response.created", response=self.snapshot("in_progress")),
            self._event("response.in_progress", response=self.snapshot("in_progress")),
        ]

    def encode(self, event: Event) -> list[StreamEvent]:
        if self.finished:
            return []
        if isinstance(event, TextDelta):
            return self._text("message", event.text)
        if isinstance(event, TokenLogprob):
            self._logprobs.append(responses_logprob(event))
            return []
        if isinstance(event, ReasoningDelta):
            return self._text("reasoning", event.text)
        if isinstance(event, ToolCallStart):
            return self._call_start(event)
        if isinstance(event, ToolCallArgumentsDelta):
            return self._call_delta(event)
        if isinstance(event, ToolCallEnd):
            return self._call_end(event)
        if isinstance(event, Done):
            return self._done(event)
        if isinstance(event, Failed):
            return self.fail(event.error)
        return []

    def fail(self, error: Exception) -> list[StreamEvent]:
        """Close what is open (as incomplete) and end with ``response.failed``."""
        if self.finished:
            return []
        out = self._close_all("incomplete")
        message = getattr(error, "message", None) or str(error) or type(error).__name__
        body = self.snapshot("failed")
        body["error"] = {"code": error_code_of(error), "message": message}
        self.response = body
        out.append(self._event("response.failed", response=body))
        return out

    # items ---------------------------------------------------------------------------------
    def _event(self, kind: str, **fields: Any) -> StreamEvent:
        event = {"type": kind, "sequence_number": self.sequence_number, **fields}
        self.sequence_number += 1
        return event

    def _open(self, kind: str, item: dict[str, Any]) -> tuple[_Item, StreamEvent]:
        state = _Item(kind=kind, index=len(self.output), id=item["id"])
        self.output.append(item)
        return state, self._event("response.output_item.added", output_index=state.index, item=copy.deepcopy(item))

    def _text(self, kind: str, text: str) -> list[StreamEvent]:
        if not text:
            return []
        out: list[StreamEvent] = []
        current = self._current
        if current is None or current.kind != kind:
            out += self._close_current("completed")
            current = self._open_text(kind, out)
        current.pieces.append(text)
        if kind == "reasoning":
            out.append(
                self._event(
                    "response.reasoning_text.delta",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    delta=text,
                )
            )
            if self.summarize:
                out.append(
                    self._event(
                        "response.reasoning_summary_text.delta",
                        item_id=current.id,
                        output_index=current.index,
                        summary_index=0,
                        delta=text,
                    )
                )
        else:
            logprobs, self._logprobs = self._logprobs, []
            current.logprobs += logprobs
            out.append(
                self._event(
                    "response.output_text.delta",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    delta=text,
                    logprobs=logprobs,
                )
            )
        return out

    def _open_text(self, kind: str, out: list[StreamEvent]) -> _Item:
        if kind == "reasoning":
            item = {"id": new_id("rs"), "type": "reasoning", "summary": [], "content": [], "status": "in_progress"}
            current, added = self._open(kind, item)
            out.append(added)
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    part=_reasoning_text(""),
                )
            )
            if self.summarize:
                out.append(
                    self._event(
                        "response.reasoning_summary_part.added",
                        item_id=current.id,
                        output_index=current.index,
                        summary_index=0,
                        part=_summary_text(""),
                    )
                )
        else:
            item = {"id": new_id("msg"), "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            current, added = self._open(kind, item)
            out.append(added)
            out.append(
                self._event(
                    "response.content_part.added",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    part=_output_text(""),
                )
            )
        self._current = current
        return current

    def _close_current(self, status: str) -> list[StreamEvent]:
        current, self._current = self._current, None
        if current is None:
            return []
        text = "".join(current.pieces)
        item = self.output[current.index]
        item["status"] = status
        out: list[StreamEvent] = []
        if current.kind == "reasoning":
            item["content"] = [_reasoning_text(text)]
            out.append(
                self._event(
                    "response.reasoning_text.done",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    text=text,
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    part=_reasoning_text(text),
                )
            )
            if self.summarize:
                item["summary"] = [_summary_text(text)]
                out.append(
                    self._event(
                        "response.reasoning_summary_text.done",
                        item_id=current.id,
                        output_index=current.index,
                        summary_index=0,
                        text=text,
                    )
                )
                out.append(
                    self._event(
                        "response.reasoning_summary_part.done",
                        item_id=current.id,
                        output_index=current.index,
                        summary_index=0,
                        part=_summary_text(text),
                    )
                )
        else:
            current.logprobs += self._logprobs  # tokens whose text never came (held back, cut)
            self._logprobs = []
            item["content"] = [_output_text(text, current.logprobs)]
            out.append(
                self._event(
                    "response.output_text.done",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    text=text,
                    logprobs=list(current.logprobs),
                )
            )
            out.append(
                self._event(
                    "response.content_part.done",
                    item_id=current.id,
                    output_index=current.index,
                    content_index=0,
                    part=_output_text(text, current.logprobs),
                )
            )
        out.append(self._event("response.output_item.done", output_index=current.index, item=copy.deepcopy(item)))
        return out

    def _call_start(self, event: ToolCallStart) -> list[StreamEvent]:
        out = self._close_current("completed")
        item = {
            "id": new_id("fc"),
            "type": "function_call",
            "call_id": event.id,
            "name": event.name,
            "arguments": "",
            "status": "in_progress",
        }
        call, added = self._open("function_call", item)
        call.call_id, call.name = event.id, event.name
        self._calls[event.index] = call
        out.append(added)
        return out

    def _call_delta(self, event: ToolCallArgumentsDelta) -> list[StreamEvent]:
        call = self._calls.get(event.index)
        if call is None or not event.delta:
            return []
        call.pieces.append(event.delta)
        return [
            self._event(
                "response.function_call_arguments.delta",
                item_id=call.id,
                output_index=call.index,
                delta=event.delta,
            )
        ]

    def _call_end(self, event: ToolCallEnd) -> list[StreamEvent]:
        out: list[StreamEvent] = []
        if event.index not in self._calls:  # a call announced only at its end
            out += self._call_start(ToolCallStart(event.index, event.id, event.name))
        call = self._calls[event.index]
        streamed = "".join(call.pieces)
        if event.arguments.startswith(streamed) and event.arguments != streamed:
            # Whatever the deltas did not carry yet, so that they add up to the final text.
            out += self._call_delta(ToolCallArgumentsDelta(event.index, event.arguments[len(streamed) :]))
        del self._calls[event.index]
        return out + self._finish_call(call, event.arguments, "completed")

    def _finish_call(self, call: _Item, arguments: str, status: str) -> list[StreamEvent]:
        item = self.output[call.index]
        item.update(arguments=arguments, status=status)
        return [
            self._event(
                "response.function_call_arguments.done",
                item_id=call.id,
                output_index=call.index,
                arguments=arguments,
            ),
            self._event("response.output_item.done", output_index=call.index, item=copy.deepcopy(item)),
        ]

    def _close_all(self, status: str) -> list[StreamEvent]:
        out = self._close_current(status)
        for index in sorted(self._calls):
            call = self._calls.pop(index)
            out += self._finish_call(call, "".join(call.pieces), "incomplete")
        return out

    # the end ---------------------------------------------------------------------------------
    def _done(self, done: Done) -> list[StreamEvent]:
        if done.finish_reason == "cancelled":
            return self.fail(CancelledError("the generation was cancelled before it finished"))
        truncated = done.finish_reason == "length"
        out = self._close_all("incomplete" if truncated else "completed")
        body = self.snapshot("incomplete" if truncated else "completed")
        body["usage"] = usage_body(done.usage)
        body["completed_at"] = int(time.time())
        if truncated:
            body["incomplete_details"] = {"reason": "max_output_tokens"}
        self.response = body
        out.append(self._event("response.incomplete" if truncated else "response.completed", response=body))
        return out


def _output_text(text: str, logprobs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": list(logprobs or [])}


def _reasoning_text(text: str) -> dict[str, Any]:
    return {"type": "reasoning_text", "text": text}


def _summary_text(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}
