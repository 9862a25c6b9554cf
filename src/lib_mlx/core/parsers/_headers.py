"""Calls written as a header (name, maybe an id) then a JSON object of arguments, then a trailer:
Mistral's ``name[CALL_ID]id[ARGS]{...}``, DeepSeek's ``<｜tool▁call▁begin｜>...<｜tool▁sep｜>{...}``,
Kimi K2's ``<|tool_call_begin|>functions.name:0<|tool_call_argument_begin|>{...}<|tool_call_end|>``.

A family subclasses ``HeaderJsonCalls`` with three regular expressions (the ``regex`` package,
which can tell a prefix that may still match from one that cannot): ``first`` (the first call's
header, right after the block's start marker), ``following`` (a later call's header) and
``trailer`` (what may follow a call's arguments). A header names ``name`` and optionally ``id``
(an id the model wrote, kept as the call's id). The call is committed when its header is
complete and its arguments then stream as JSON, re-written compactly.
"""

from __future__ import annotations

import regex

from ._json import JsonReader, JsonWriter, Malformed
from .base import CallBlock

_HEADER, _ARGS, _TRAILER, _IGNORE = range(4)


class _ArgsSink:
    """Routes the reader's events to the writer and notices the end of the top-level object."""

    def __init__(self, block: HeaderJsonCalls) -> None:
        self.block = block
        self.depth = 0

    def obj_begin(self) -> None:
        self.depth += 1
        self.block._writer.obj_begin()

    def obj_end(self) -> None:
        self.depth -= 1
        self.block._writer.obj_end()
        if self.depth == 0:
            self.block._args_done = True
            raise Malformed  # stops the reader right at the closing brace

    def arr_begin(self) -> None:
        if self.depth == 0:
            raise Malformed  # arguments are an object
        self.depth += 1
        self.block._writer.arr_begin()

    def arr_end(self) -> None:
        self.depth -= 1
        self.block._writer.arr_end()

    def key(self, key_json: str, key: str) -> None:
        self.block._writer.key(key_json)

    def str_begin(self) -> None:
        if self.depth == 0:
            raise Malformed
        self.block._writer.str_begin()

    def str_chunk(self, json_text: str) -> None:
        self.block._writer.str_chunk(json_text)

    def str_end(self) -> None:
        self.block._writer.str_end()

    def scalar(self, json_text: str) -> None:
        if self.depth == 0:
            raise Malformed
        self.block._writer.scalar(json_text)


class HeaderJsonCalls(CallBlock):
    first: regex.Pattern
    following: regex.Pattern
    trailer: regex.Pattern

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._where = _HEADER
        self._buf = ""
        self._new_call()

    def _new_call(self) -> None:
        self._writer = JsonWriter()
        self._reader = JsonReader(_ArgsSink(self))
        self._args_done = False

    # -- CallBlock ---------------------------------------------------------------------------
    def _in_call(self) -> bool:
        return self._where == _ARGS or (self._where == _HEADER and self._buf.strip() != "")

    def _complete_enough(self) -> bool:
        return self._args_done

    def _pending_args(self) -> str:
        return self._writer.take()

    def _closer(self) -> str:
        return self._writer.closer()

    def _consume(self, text: str) -> int | None:
        i, n = 0, len(text)
        while i < n:
            where = self._where
            if where == _IGNORE:
                return None
            if where == _ARGS:
                k = self._reader.feed(text[i:])
                if k is None:
                    return None
                if not self._args_done:
                    return i + k
                end = i + k  # the closing brace
                self._end(end)
                self._where, self._buf = _TRAILER, ""
                i = end + 1
                continue
            ch = text[i]
            pattern = self.trailer if where == _TRAILER else self.first if self.completed == 0 else self.following
            candidate = self._buf + ch
            if self._matches(pattern, candidate, partial=True):
                self._buf = candidate
                if where == _HEADER:
                    match = pattern.fullmatch(candidate)
                    if match is not None and match.group("name"):
                        try:
                            self._start_call(match)
                        except Malformed:  # a function the request did not offer
                            return i

                i += 1
                continue
            if where == _TRAILER and self._matches(pattern, self._buf, partial=False):
                self._where, self._buf = _HEADER, ""
                continue  # the same character may open the next call
            if where == _HEADER and self.completed and not self._buf.strip():
                self._where = _IGNORE  # text after complete calls is not a call
                return None
            return i
        return None

    @staticmethod
    def _matches(pattern: regex.Pattern, text: str, *, partial: bool) -> bool:
        return pattern.fullmatch(text, partial=partial) is not None

    def _start_call(self, match: regex.Match) -> None:
        groups = match.groupdict()
        self._new_call()
        self._commit(groups["name"].strip(), groups.get("id") or None)
        self._where, self._buf = _ARGS, ""
