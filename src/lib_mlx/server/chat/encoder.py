"""Chat Completions wire shapes built from core events: pure functions of (state, event)."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ...core.events import (
    Done,
    Event,
    ReasoningDelta,
    TextDelta,
    TokenLogprob,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from ..accumulate import Accumulated
from ..structured import chat_logprob


def new_completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage_body(usage: Usage) -> dict[str, Any]:
    """OpenAI's names, plus the design note's ``input/output_tokens`` twins."""
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "input_tokens": usage.prompt_tokens,
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
    }


def finish_reason_of(done: Done) -> str:
    # "cancelled" never reaches a client that is still listening except on server stop.
    return done.finish_reason if done.finish_reason in ("stop", "length", "tool_calls") else "stop"


@dataclass
class ChatChunkEncoder:
    """Turns events into ``chat.completion.chunk`` dicts."""

    model: str
    include_usage: bool = False
    id: str = field(default_factory=new_completion_id)
    created: int = field(default_factory=lambda: int(time.time()))
    # ``TokenLogprob``s whose text has not been sent: they ride on the next content chunk (a
    # token's log-probability comes before its text, which a parser may hold back a while)
    pending_logprobs: list[dict[str, Any]] = field(default_factory=list)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        logprobs = None
        if self.pending_logprobs and ("content" in delta or finish_reason is not None):
            logprobs = {"content": self.pending_logprobs, "refusal": None}
            self.pending_logprobs = []
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }
        if self.include_usage:
            chunk["usage"] = None
        return chunk

    def start(self) -> list[dict[str, Any]]:
        return [self._chunk({"role": "assistant", "content": ""})]

    def encode(self, event: Event) -> list[dict[str, Any]]:
        if isinstance(event, TextDelta):
            return [self._chunk({"content": event.text})]
        if isinstance(event, TokenLogprob):
            self.pending_logprobs.append(chat_logprob(event))
            return []
        if isinstance(event, ReasoningDelta):
            return [self._chunk({"reasoning_content": event.text, "reasoning": event.text})]
        if isinstance(event, ToolCallStart):
            call = {
                "index": event.index,
                "id": event.id,
                "type": "function",
                "function": {"name": event.name, "arguments": ""},
            }
            return [self._chunk({"tool_calls": [call]})]
        if isinstance(event, ToolCallArgumentsDelta):
            return [self._chunk({"tool_calls": [{"index": event.index, "function": {"arguments": event.delta}}]})]
        if isinstance(event, ToolCallEnd):
            return []
        if isinstance(event, Done):
            out = [self._chunk({}, finish_reason_of(event))]
            if self.include_usage:
                out.append(
                    {
                        "id": self.id,
                        "object": "chat.completion.chunk",
                        "created": self.created,
                        "model": self.model,
                        "choices": [],
                        "usage": usage_body(event.usage),
                    }
                )
            return out
        return []


def completion_body(model: str, result: Accumulated, *, logprobs: bool = False) -> dict[str, Any]:
    """The non-streaming ``chat.completion`` object (``logprobs``: the request asked for them)."""
    message: dict[str, Any] = {"role": "assistant", "content": result.text or (None if result.tool_calls else "")}
    if result.reasoning:
        message["reasoning_content"] = result.reasoning_text
        message["reasoning"] = result.reasoning_text
    if result.tool_calls:
        message["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in result.tool_calls
        ]
    assert result.done is not None
    return {
        "id": new_completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": message,
                "logprobs": {"content": [chat_logprob(e) for e in result.logprobs], "refusal": None} if logprobs else None,
                "finish_reason": finish_reason_of(result.done),
            }
        ],
        "usage": usage_body(result.usage),
    }
