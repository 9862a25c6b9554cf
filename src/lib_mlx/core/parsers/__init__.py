"""Family parsers: generated text -> typed events (the seam between generation and the wire).

Interface (stable; the engine depends only on this):

    spec = parser_spec_from_tokenizer(tokenizer)      # once per loaded model
    parser = make_parser(spec, tools=tools, starts_in_reasoning=False)  # once per request
    events = parser.feed(text)    # once per generated token, with that token's decoded text
    parser.in_reasoning           # True if the last fed token belonged to the reasoning block
    events = parser.finish()      # at the end: flushes held-back text, completes tool calls
    parser.reasoning_tokens       # exact count of reasoning tokens (final after finish())

Events are ``core.events`` types (TextDelta, ReasoningDelta, ToolCall*). A ``Family`` (one
module each: ``qwen3``, ``gemma4``, ``generic`` ...) holds everything family-specific -- its
parser's markers and call syntax, how a forced call opens, how history is prepared, its
thinking switches and tool-call ids -- and registers by name (``register_family``).
``detect.DETECTION`` picks the family from what the model ships (markers, template text,
special tokens); ``ParserSpec.family`` (the load config's ``family``) overrides detection.
``strip_reasoning`` removes inline reasoning from a prior assistant turn; ``parse_text``
parses a whole text at once. The rules (whitespace, malformed calls, reasoning-token
counting) are in ``base``'s docstring.
"""

from __future__ import annotations

from .base import KEEP_ALL, KEEP_NONE, KEEP_TOOL_LOOP, CallBlock, CallSyntax, Family, ParserSpec, StreamParser
from .detect import DETECTION, Evidence, detect_family
from .registry import family_of, get_family, make_parser, parser_spec_from_tokenizer, register_family
from .text import ParsedOutput, parse_text, split_reasoning, strip_reasoning

__all__ = [
    "DETECTION",
    "KEEP_ALL",
    "KEEP_NONE",
    "KEEP_TOOL_LOOP",
    "CallBlock",
    "CallSyntax",
    "Evidence",
    "Family",
    "ParsedOutput",
    "ParserSpec",
    "StreamParser",
    "detect_family",
    "family_of",
    "get_family",
    "make_parser",
    "parse_text",
    "parser_spec_from_tokenizer",
    "register_family",
    "split_reasoning",
    "strip_reasoning",
]
