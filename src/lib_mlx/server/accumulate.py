"""Collect a generation's events into the whole answer (the non-streaming paths)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..core.events import Done, Event, Failed, ReasoningDelta, TextDelta, TokenLogprob, ToolCallEnd, Usage


@dataclass
class Accumulated:
    content: list[str] = field(default_factory=list)
    reasoning: list[str] = field(default_factory=list)
    tool_calls: list[ToolCallEnd] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    done: Done | None = None

    def add(self, event: Event) -> None:
        if isinstance(event, TextDelta):
            self.content.append(event.text)
        elif isinstance(event, ReasoningDelta):
            self.reasoning.append(event.text)
        elif isinstance(event, TokenLogprob):
            self.logprobs.append(event)
        elif isinstance(event, ToolCallEnd):
            self.tool_calls.append(event)
        elif isinstance(event, Done):
            self.done = event
        elif isinstance(event, Failed):
            raise event.error

    @property
    def text(self) -> str:
        return "".join(self.content)

    @property
    def reasoning_text(self) -> str:
        return "".join(self.reasoning)

    @property
    def usage(self) -> Usage:
        return self.done.usage if self.done else Usage()

    @property
    def finish_reason(self) -> str:
        return self.done.finish_reason if self.done else "stop"
