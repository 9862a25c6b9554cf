"""Whole-text helpers over the streaming parser: collecting events, stripping reasoning."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ..events import Event, ReasoningDelta, TextDelta, ToolCallEnd
from .base import ParserSpec, StreamParser
from .registry import family_of, make_parser


@dataclass
class ParsedOutput:
    """Events gathered into one message (the non-streaming view of a generation)."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCallEnd] = field(default_factory=list)

    def add(self, events: Iterable[Event]) -> ParsedOutput:
        for event in events:
            if isinstance(event, TextDelta):
                self.content += event.text
            elif isinstance(event, ReasoningDelta):
                self.reasoning += event.text
            elif isinstance(event, ToolCallEnd):
                self.tool_calls.append(event)
        return self


def parse_text(
    text: str, spec: ParserSpec, *, tools: list[dict] | None = None, starts_in_reasoning: bool = False
) -> ParsedOutput:
    """Parse a whole output at once (exactly what streaming it would give)."""
    parser = make_parser(spec, tools=tools, starts_in_reasoning=starts_in_reasoning)
    return ParsedOutput().add(parser.feed(text)).add(parser.finish())


def split_reasoning(text: str, spec: ParserSpec) -> tuple[str, str]:
    """A prior assistant turn's content split into (the answer as the client saw it, its inline
    reasoning). A block the template opened in the prompt — an end marker with no start marker
    before it — counts too, and so does an unterminated block. Tool-call text is left as it
    is."""
    family = family_of(spec)
    start, end = family.markers(spec)[:2]
    if not text or not start or (start not in text and end not in text):
        return text, ""
    opened = end in text and (start not in text or text.index(end) < text.index(start))
    parser = StreamParser(spec, family, starts_in_reasoning=opened, parse_tools=False)
    parsed = ParsedOutput().add(parser.feed(text)).add(parser.finish())
    return parsed.content, parsed.reasoning


def strip_reasoning(text: str, spec: ParserSpec) -> str:
    """A prior assistant turn's content without its inline reasoning blocks."""
    return split_reasoning(text, spec)[0]
