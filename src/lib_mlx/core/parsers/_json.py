"""Incremental JSON pieces shared by the call syntaxes.

``JsonReader`` reads strict JSON one character at a time and reports its structure to a sink
(``obj_begin``, ``key``, ``str_chunk``, ``scalar``…) as it unfolds; ``JsonWriter`` takes the
same calls and writes compact JSON that is *closable* at every point: whatever it has handed
out, followed by ``closer()``, is valid JSON. It achieves that by holding back the few things
that could still prove wrong — a comma until the next element starts, a key until its value
starts, a number or literal until it ends, an escape until it is complete.
"""

from __future__ import annotations

import json
import re
from typing import Protocol

WS = " \t\n\r"
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_LITERALS = frozenset(("true", "false", "null"))
_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")


class Malformed(Exception):
    """The text can't continue a valid call (raised by sinks, caught by the reader)."""


def is_json_scalar(text: str) -> bool:
    return text in _LITERALS or _NUMBER.fullmatch(text) is not None


def escape_text(text: str) -> str:
    """``text`` as the inside of a JSON string (no surrounding quotes)."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def compact(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class Sink(Protocol):
    def obj_begin(self) -> None: ...
    def obj_end(self) -> None: ...
    def arr_begin(self) -> None: ...
    def arr_end(self) -> None: ...
    def key(self, key_json: str, key: str) -> None: ...
    def str_begin(self) -> None: ...
    def str_chunk(self, json_text: str) -> None: ...
    def str_end(self) -> None: ...
    def scalar(self, json_text: str) -> None: ...


class JsonWriter:
    """Compact JSON out of sink calls; ``take()`` what is safe to hand out, ``closer()`` ends it."""

    def __init__(self) -> None:
        self._out: list[str] = []
        self._stack: list[list] = []  # [closing char, elements so far]
        self._pending = ""  # "," and/or '"key":' waiting for their value
        self._in_str = False

    def _value(self, text: str) -> None:
        if self._stack and self._stack[-1][0] == "]":
            if self._stack[-1][1]:
                text = "," + text
            self._stack[-1][1] += 1
        else:
            text, self._pending = self._pending + text, ""
        self._out.append(text)

    def obj_begin(self) -> None:
        self._value("{")
        self._stack.append(["}", 0])

    def arr_begin(self) -> None:
        self._value("[")
        self._stack.append(["]", 0])

    def obj_end(self) -> None:
        self._pending = ""
        self._out.append(self._stack.pop()[0])

    arr_end = obj_end

    def key(self, key_json: str, key: str = "") -> None:
        top = self._stack[-1]
        self._pending = ("," if top[1] else "") + key_json + ":"
        top[1] += 1

    def str_begin(self) -> None:
        self._value('"')
        self._in_str = True

    def str_chunk(self, json_text: str) -> None:
        self._out.append(json_text)

    def str_end(self) -> None:
        self._out.append('"')
        self._in_str = False

    def scalar(self, json_text: str) -> None:
        self._value(json_text)

    @property
    def depth(self) -> int:
        return len(self._stack)

    def take(self) -> str:
        text = "".join(self._out)
        self._out.clear()
        return text

    def closer(self) -> str:
        return ('"' if self._in_str else "") + "".join(c for c, _ in reversed(self._stack))


# JsonReader expectations and modes
_VALUE, _FIRST_KEY, _KEY, _COLON, _AFTER, _FIRST_VALUE = range(6)
_STR, _KEYSTR, _ESC, _UNI, _SCALAR = range(1, 6)


class JsonReader:
    """Strict JSON, fed in pieces, reported to ``sink`` as it unfolds.

    A sequence of top-level values is accepted (the sink decides what a second one means).
    Raw control characters inside strings are tolerated and escaped (models write raw
    newlines). ``i`` is the index, in the text being fed, of the character being read.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.i = 0
        self._stack: list[str] = []
        self._expect = _VALUE
        self._mode = 0
        self._parent = 0  # string mode an escape returns to
        self._buf: list[str] = []
        self._uni = ""

    @property
    def idle(self) -> bool:
        """Between top-level values (nothing started)."""
        return not self._stack and self._mode == 0

    def feed(self, text: str) -> int | None:
        """Read ``text``; the index of the first character that can't continue valid JSON
        (the reader is then unusable), or None."""
        n = len(text)
        i = 0
        try:
            while i < n:
                self.i = i
                mode = self._mode
                ch = text[i]
                if mode == _STR or mode == _KEYSTR:
                    j = i
                    while j < n and text[j] not in '"\\' and text[j] >= " ":
                        j += 1
                    if j > i:
                        self._buf.append(text[i:j])
                        i = j
                        continue
                    if ch == '"':
                        self._end_string(mode)
                    elif ch == "\\":
                        self._parent, self._mode = mode, _ESC
                    else:  # a raw control character
                        self._buf.append(escape_text(ch))
                elif mode == _ESC:
                    if ch in _ESCAPES:
                        self._buf.append("\\" + ch)
                        self._mode = self._parent
                    elif ch == "u":
                        self._uni, self._mode = "", _UNI
                    else:
                        raise Malformed
                elif mode == _UNI:
                    if ch not in _HEX:
                        raise Malformed
                    self._uni += ch
                    if len(self._uni) == 4:
                        self._buf.append("\\u" + self._uni)
                        self._mode = self._parent
                elif mode == _SCALAR:
                    if ch.isalnum() or ch in "+-.":
                        self._buf.append(ch)
                    else:
                        scalar = "".join(self._buf)
                        self._buf.clear()
                        if not is_json_scalar(scalar):
                            raise Malformed
                        self._mode = 0
                        self.sink.scalar(scalar)
                        self._after_value()
                        continue  # read ch again
                elif ch not in WS:
                    self._structural(ch)
                i += 1
        except Malformed:
            return i
        finally:
            self.i = i
            if self._buf and (self._mode == _STR or self._parent == _STR and self._mode in (_ESC, _UNI)):
                self.sink.str_chunk("".join(self._buf))
                self._buf.clear()
        return None

    def _structural(self, ch: str) -> None:
        expect = self._expect
        if expect == _VALUE or expect == _FIRST_VALUE:
            if ch == "]" and expect == _FIRST_VALUE:
                self._close(ch)
            else:
                self._value_start(ch)
        elif expect == _FIRST_KEY or expect == _KEY:
            if ch == '"':
                self._mode = _KEYSTR
            elif ch == "}" and expect == _FIRST_KEY:
                self._close(ch)
            else:
                raise Malformed
        elif expect == _COLON:
            if ch != ":":
                raise Malformed
            self._expect = _VALUE
        else:  # _AFTER
            if ch == ",":
                self._expect = _KEY if self._stack[-1] == "}" else _VALUE
            elif ch == self._stack[-1]:
                self._close(ch)
            else:
                raise Malformed

    def _value_start(self, ch: str) -> None:
        if ch == "{":
            self._stack.append("}")
            self._expect = _FIRST_KEY
            self.sink.obj_begin()
        elif ch == "[":
            self._stack.append("]")
            self._expect = _FIRST_VALUE
            self.sink.arr_begin()
        elif ch == '"':
            self._mode = _STR
            self.sink.str_begin()
        elif ch in "-0123456789tfn":
            self._mode = _SCALAR
            self._buf.append(ch)
        else:
            raise Malformed

    def _end_string(self, mode: int) -> None:
        text = "".join(self._buf)
        self._buf.clear()
        self._mode = 0
        if mode == _KEYSTR:
            self._expect = _COLON
            self.sink.key('"' + text + '"', json.loads('"' + text + '"'))
        else:
            if text:
                self.sink.str_chunk(text)
            self.sink.str_end()
            self._after_value()

    def _close(self, ch: str) -> None:
        self._stack.pop()
        if ch == "}":
            self.sink.obj_end()
        else:
            self.sink.arr_end()
        self._after_value()

    def _after_value(self) -> None:
        self._expect = _AFTER if self._stack else _VALUE
