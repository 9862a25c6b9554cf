"""Mistral: tool calls after ``[TOOL_CALLS]`` in the three forms Mistral's templates write --
``name[CALL_ID]id[ARGS]{...}`` (Small 3.2), ``name[ARGS]{...}`` (Ministral 3, Magistral,
Devstral) and a JSON list ``[{"name": ..., "arguments": {...}, "id": "..."}]`` (Nemo) -- each call
opening with its own ``[TOOL_CALLS]``; reasoning ``[THINK]``...``[/THINK]`` (Magistral,
Ministral 3 Reasoning).

Ids: Mistral templates refuse any tool-call id but 9 alphanumeric characters, so the family
issues such ids, keeps an id the model wrote (``[CALL_ID]``, Nemo's ``"id"``), and rewrites a
client's other ids consistently. History: a kept reasoning goes back as the template's
``thinking`` chunk before the answer text (Ministral 3 renders ``[THINK]...[/THINK]`` from it).
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

import regex

from ._headers import HeaderJsonCalls
from ._json import compact
from .base import CallSyntax, Family

_ALNUM = string.ascii_letters + string.digits
_rng = random.SystemRandom()


def mistral_call_id() -> str:
    return "".join(_rng.choice(_ALNUM) for _ in range(9))


def valid_mistral_id(call_id: str) -> bool:
    return len(call_id) == 9 and call_id.isascii() and call_id.isalnum()


_NAME = r"(?P<name>[A-Za-z0-9_.\-]+)"
_REST = _NAME + r"(?:\[CALL_ID\](?P<id>[A-Za-z0-9]+))?\[ARGS\]"


class MistralCalls(HeaderJsonCalls):
    """``[TOOL_CALLS]name[CALL_ID]id[ARGS]{...}`` / ``[TOOL_CALLS]name[ARGS]{...}``, repeated; a
    JSON list (Nemo) is handed to ``NemoCalls``."""

    first = regex.compile(r"\s*" + _REST)
    following = regex.compile(r"\s*\[TOOL_CALLS\]\s*" + _REST)
    trailer = regex.compile(r"\s*")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._nemo: NemoCalls | None = None

    def _consume(self, text: str) -> int | None:
        if self._nemo is None and self._open is None and self.completed == 0 and not self._buf.strip():
            stripped = text.lstrip()
            if stripped[:1] in ("[", "{"):
                self._nemo = NemoCalls(self)
        if self._nemo is not None:
            return self._nemo.consume(text)
        return super()._consume(text)

    def _in_call(self) -> bool:
        return True if self._nemo is not None else super()._in_call()

    def close(self) -> bool:
        if self._nemo is not None:
            return self._nemo.close()
        return super().close()


class NemoCalls:
    """Mistral Nemo's ``[{"name": ..., "arguments": {...}, "id": "..."}]``: read whole (the id the
    model writes comes after the arguments), parsed when the block ends."""

    def __init__(self, block: MistralCalls) -> None:
        self.block = block
        self.text: list[str] = []

    def consume(self, text: str) -> int | None:
        self.text.append(text)
        return None

    def close(self) -> bool:
        block = self.block
        try:
            value = json.loads("".join(self.text))
            calls = value if isinstance(value, list) else [value]
            parsed = []
            for call in calls:
                args = call.get("arguments", {})
                if isinstance(args, str):
                    args = json.loads(args)
                if not isinstance(call.get("name"), str) or not isinstance(args, dict):
                    return True
                call_id = call.get("id")
                parsed.append((call["name"], compact(args), call_id if isinstance(call_id, str) else None))
        except (ValueError, AttributeError):
            return True
        if not parsed or not all(block._parser.offers(name) for name, _, _ in parsed):
            return True
        block._base = 0
        for name, args, call_id in parsed:
            block._commit(name, call_id)
            block._delta(args)
            block._end(block.fed - 1)
        return False


def thinking_chunks(messages: list[dict[str, Any]]) -> None:
    """A kept reasoning becomes the template's ``thinking`` chunk, ahead of the answer text."""
    for msg in messages:
        reasoning = msg.pop("reasoning_content", None)
        if msg["role"] == "assistant" and reasoning:
            chunks: list[dict[str, Any]] = [{"type": "thinking", "thinking": reasoning}]
            if msg.get("content"):
                chunks.append({"type": "text", "text": msg["content"]})
            msg["content"] = chunks


FAMILY = Family(
    name="mistral",
    call_block=MistralCalls,
    think_start="[THINK]",
    think_end="[/THINK]",
    tool_call_start="[TOOL_CALLS]",
    syntax=CallSyntax(start="[TOOL_CALLS]", end=None, named="{name}[ARGS]", separator=None),
    call_id=mistral_call_id,
    valid_call_id=valid_mistral_id,
    prepare_history=thinking_chunks,
    own_markers=True,
)
