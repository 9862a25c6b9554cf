"""Families without a streaming call syntax of their own.

``mlx_lm``: any markers the tokenizer declares, and tool calls parsed by the model's
``mlx_lm.tool_parsers`` module when the block ends (each call then arrives as
``ToolCallStart``, one ``ToolCallArgumentsDelta`` and ``ToolCallEnd`` together).
``plain``: no markers at all; the text is the answer, verbatim.
"""

from __future__ import annotations

import importlib
import json
import logging

from ._json import compact
from .base import CallBlock, Family

log = logging.getLogger(__name__)


def load_tool_parser(name: str):
    """``mlx_lm.tool_parsers.<name>.parse_tool_call``."""
    return importlib.import_module(f"mlx_lm.tool_parsers.{name}").parse_tool_call


class MlxLmCalls(CallBlock):
    """A whole block handed to an mlx-lm tool parser once it ends."""

    def _consume(self, text: str) -> int | None:
        return None

    def _in_call(self) -> bool:
        return True

    def close(self) -> bool:
        marker = len(self._raw[0])
        body = "".join(self._raw)[marker:]
        name = self._parser.spec.tool_parser or "json_tools"
        try:
            parsed = load_tool_parser(name)(body, self.tools)
            calls = []
            for call in parsed if isinstance(parsed, list) else [parsed]:
                args = call.get("arguments", {})
                if isinstance(args, str):
                    args = json.loads(args)
                if not isinstance(call["name"], str) or not isinstance(args, dict):
                    raise ValueError("not a function call")
                calls.append((call["name"], compact(args)))
        except Exception as e:  # a model's malformed call is content, never a failure
            log.info("tool call not parsed by %s (%s: %s)", name, type(e).__name__, e)
            return True
        if not calls or not all(self._parser.offers(name) for name, _ in calls):
            return True  # nothing, or a function that was not offered: the block is text
        self._base = 0
        for name, args in calls:
            self._commit(name)
            self._delta(args)
            self._end(self.fed - 1)
        return False


FAMILY = Family(name="mlx_lm", call_block=MlxLmCalls)
PLAIN = Family(name="plain", use_markers=False)
