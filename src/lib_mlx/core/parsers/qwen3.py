"""Qwen3 style: ``<think>``…``</think>``, tool calls ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``.

The block's JSON is read as it arrives. The call is committed once ``"name"`` is read, and the
``"arguments"`` object is re-written compactly and streamed as it is read (what came before
the name is held until the name arrives). Also accepted: ``"parameters"`` for
``"arguments"``, arguments given as a JSON string, a missing ``"arguments"`` (``{}``), a list
of call objects, several call objects in one block, a missing final ``}`` once the arguments
are complete, and stray text after a complete call (ignored). Canonical text:
``json.loads(ToolCallEnd.arguments)`` equals what ``mlx_lm.tool_parsers.json_tools`` parses.
"""

from __future__ import annotations

import json

from ._json import JsonReader, JsonWriter, Malformed, compact
from .base import CallBlock, CallSyntax, Family

_ARGUMENT_KEYS = ("arguments", "parameters")


class JsonCalls(CallBlock):
    """One ``<tool_call>`` block of JSON call objects."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._reader = JsonReader(self)
        self._depth = 0  # containers open in the reader
        self._array = False  # the block's value is a list of calls
        self._ignoring = False
        self._in = False  # inside a call object
        self._reset()

    def _reset(self) -> None:
        self._level = 0  # depth of the call object's members
        self._key: str | None = None
        self._name: str | None = None
        self._collect: str | None = None  # "name" / "args" while reading that string
        self._parts: list[str] = []
        self._args: str | None = None  # None (not seen), "stream", "done"
        self._args_depth = 0
        self._direct = ""  # arguments that did not stream through the writer
        self._writer = JsonWriter()

    # -- CallBlock ---------------------------------------------------------------------------
    def _consume(self, text: str) -> int | None:
        if self._ignoring:
            return None
        k = self._reader.feed(text)
        if k is None:
            return None
        if self._in and self._open is not None and self._complete_enough():
            self._end(k - 1)
            self._in = False
        if not self._in and self.completed:
            self._ignoring = True  # trailing junk after complete calls
            return None
        return k

    def _in_call(self) -> bool:
        return self._in

    def _pending_args(self) -> str:
        text = self._writer.take() + self._direct
        self._direct = ""
        return text

    def _closer(self) -> str:
        return self._writer.closer() if self._args == "stream" else ""

    def _complete_enough(self) -> bool:
        return self._args == "done" and self._collect is None

    # -- the reader's sink -------------------------------------------------------------------
    @property
    def _routing(self) -> bool:
        return self._args == "stream"

    def _call_position(self, depth: int) -> bool:
        return depth == 0 or (self._array and depth == 1)

    def _member(self, depth: int) -> bool:
        return self._in and depth == self._level

    def obj_begin(self) -> None:
        depth = self._depth
        self._depth += 1
        if self._routing:
            self._writer.obj_begin()
        elif self._call_position(depth):
            self._reset()
            self._in = True
            self._level = depth + 1
        elif self._member(depth) and self._key in _ARGUMENT_KEYS and self._args is None:
            self._args = "stream"
            self._args_depth = depth
            self._writer.obj_begin()

    def obj_end(self) -> None:
        self._depth -= 1
        if self._routing:
            self._writer.obj_end()
            if self._depth == self._args_depth:
                self._args = "done"
        elif self._in and self._depth == self._level - 1:
            if self._name is None:
                raise Malformed
            self._end(self._reader.i)
            self._in = False

    def arr_begin(self) -> None:
        depth = self._depth
        self._depth += 1
        if self._routing:
            self._writer.arr_begin()
        elif depth == 0:
            self._array = True
        elif self._call_position(depth) or self._member(depth) and self._names_value():
            raise Malformed

    def arr_end(self) -> None:
        self._depth -= 1
        if self._routing:
            self._writer.arr_end()

    def key(self, key_json: str, key: str) -> None:
        if self._routing:
            self._writer.key(key_json)
        elif self._member(self._depth):
            self._key = key

    def str_begin(self) -> None:
        if self._routing:
            self._writer.str_begin()
        elif self._call_position(self._depth):
            raise Malformed
        elif self._member(self._depth) and self._names_value():
            self._collect = "name" if self._key == "name" else "args"
            self._parts = []

    def str_chunk(self, json_text: str) -> None:
        if self._routing:
            self._writer.str_chunk(json_text)
        elif self._collect:
            self._parts.append(json_text)

    def str_end(self) -> None:
        if self._routing:
            self._writer.str_end()
            return
        if not self._collect:
            return
        value = json.loads('"' + "".join(self._parts) + '"')
        collect, self._collect = self._collect, None
        if collect == "name":
            if not value:
                raise Malformed
            self._name = value
            self._commit(value)
            return
        try:
            args = json.loads(value)
        except ValueError:
            raise Malformed from None
        if not isinstance(args, dict):
            raise Malformed
        self._args, self._direct = "done", compact(args)

    def scalar(self, json_text: str) -> None:
        if self._routing:
            self._writer.scalar(json_text)
        elif self._call_position(self._depth):
            raise Malformed
        elif self._member(self._depth) and self._names_value():
            if self._key == "name" or json_text != "null":
                raise Malformed
            self._args, self._direct = "done", "{}"

    def _names_value(self) -> bool:
        """The member being read is the call's name or arguments (first time)."""
        if self._key == "name":
            return self._name is None
        return self._key in _ARGUMENT_KEYS and self._args is None


FAMILY = Family(
    name="qwen3",
    call_block=JsonCalls,
    think_start="<think>",
    think_end="</think>",
    tool_call_start="<tool_call>",
    tool_call_end="</tool_call>",
    syntax=CallSyntax(start="<tool_call>\n", end="\n</tool_call>", named='{"name": "{name}", "arguments": '),
)
