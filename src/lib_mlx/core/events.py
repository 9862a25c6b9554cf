"""Typed events: the contract between core (MLX) and server (HTTP).

Plain frozen dataclasses, safe to pass between threads. A family parser turns generated text
into these; the Chat Completions and Responses encoders turn them into wire frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the visible answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of the model's reasoning (thinking), never part of the answer."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCallStart:
    """A tool call begins. ``index`` counts calls within one response from 0."""

    index: int
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class ToolCallArgumentsDelta:
    """A piece of the call's arguments as JSON text; the pieces concatenate to valid JSON."""

    index: int
    delta: str


@dataclass(frozen=True, slots=True)
class ToolCallEnd:
    """A tool call is complete; ``arguments`` is the whole JSON object text."""

    index: int
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class Timings:
    """Wall-clock figures of one generation (seconds / tokens per second)."""

    prompt_seconds: float = 0.0
    decode_seconds: float = 0.0
    prompt_tps: float = 0.0
    decode_tps: float = 0.0


@dataclass(frozen=True, slots=True)
class Done:
    """The generation ended. ``finish_reason``: ``stop``, ``length``, ``tool_calls`` or
    ``cancelled``. ``stop_sequence``: the request's stop string that ended it, if one did."""

    finish_reason: str
    usage: Usage
    timings: Timings = field(default_factory=Timings)
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The generation failed; ``error`` is a ``LibMlxError`` (already classified)."""

    error: Exception




@dataclass(frozen=True, slots=True)
class TokenLogprob:
    """One answer token's log-probability (``logprobs`` requests only; reasoning and tool-call
    tokens have none). ``top``: the most likely alternatives as ``(token, logprob, bytes)``,
    most likely first. Comes before the text deltas of the same token."""

    token: str
    logprob: float
    bytes: tuple[int, ...]
    top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()


Event = TextDelta | ReasoningDelta | ToolCallStart | ToolCallArgumentsDelta | ToolCallEnd | TokenLogprob | Done | Failed
