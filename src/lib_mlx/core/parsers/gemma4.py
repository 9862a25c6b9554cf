"""Gemma 4: reasoning ``<|channel>thought``…``<channel|>``, tool calls
``<|tool_call>call:name{key:<|"|>text<|"|>,n:1,nested:{…},list:[…]}<tool_call|>``.

The argument syntax is converted to JSON as it arrives: bare keys are quoted, ``<|"|>``-
delimited text becomes a JSON string (escaped), numbers and ``true``/``false``/``null``
pass through, objects and arrays nest. The call is committed at ``call:name{``. Lenient
where ``mlx_lm.tool_parsers.gemma4`` is lenient or where models are known to stray: a bare
value that is not a JSON number/literal becomes a string, ``"…"`` keys/values are read as
JSON strings when they contain no whitespace or delimiter, a trailing comma is dropped, doubled braces
``call:f{{…}}`` are unwrapped, several ``call:`` in one block make several calls.
"""

from __future__ import annotations

import json
from typing import Any

from ._json import WS, JsonWriter, escape_text, is_json_scalar
from .base import CallBlock, CallSyntax, Family

QUOTE = '<|"|>'
_CALL = "call:"
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
_NOT_BARE_KEY = frozenset(WS + "{}[],:<")
_ENDS_BARE = frozenset(WS + ",}]<")

# where the block is
_BETWEEN, _NAME, _ARGS, _WRAP, _IGNORE = range(5)
# what the argument grammar expects next
_FIRST_KEY, _KEY, _COLON, _VALUE, _FIRST_ITEM, _ITEM, _AFTER = range(7)
# what is being read inside the arguments
_DELIM, _STR, _KEYSTR, _BAREKEY, _BARE = range(1, 6)


def _bare_json(text: str) -> str:
    if is_json_scalar(text):
        return text
    if len(text) > 1 and text[0] == text[-1] == '"':
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if isinstance(value, str):
            return json.dumps(value, ensure_ascii=False)
    return json.dumps(text, ensure_ascii=False)


def _bare_key(text: str) -> str:
    return json.loads(_bare_json(text)) if text[:1] == '"' else text


class GemmaCalls(CallBlock):
    """One ``<|tool_call>`` block: ``call:name{…}`` (possibly several)."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._where = _BETWEEN
        self._matched = 0  # characters of "call:" read
        self._new_call()

    def _new_call(self) -> None:
        self._name: list[str] = []
        self._writer = JsonWriter()
        self._stack: list[str] = []  # closing chars of open containers
        self._expect = _FIRST_KEY
        self._mode = 0
        self._dm = 0  # characters of the <|"|> delimiter read
        self._delim_for = _VALUE  # a delimiter outside a string opens a key or a value
        self._buf: list[str] = []  # string text not yet written / bare key or value
        self._wrap = 0  # extra "{" to unwrap

    # -- CallBlock ---------------------------------------------------------------------------
    def _in_call(self) -> bool:
        return self._where in (_NAME, _ARGS, _WRAP) or (self._where == _BETWEEN and self._matched > 0)

    def _complete_enough(self) -> bool:
        return self._where == _WRAP

    def _pending_args(self) -> str:
        self._write_text()
        return self._writer.take()

    def _write_text(self) -> None:
        if self._mode == _STR and self._buf:
            self._writer.str_chunk(escape_text("".join(self._buf)))
            self._buf.clear()

    def _closer(self) -> str:
        return self._writer.closer()

    def _consume(self, text: str) -> int | None:
        i, n = 0, len(text)
        while i < n:
            where = self._where
            ch = text[i]
            if where == _ARGS:
                if self._mode == _STR and self._dm == 0:  # fast path through string text
                    j = text.find("<", i)
                    j = n if j < 0 else j
                    if j > i:
                        self._buf.append(text[i:j])
                        i = j
                        continue
                if not self._args_char(ch, i):
                    return i
                if self._reread:
                    self._reread = False
                    continue
            elif where == _BETWEEN:
                if self._matched == 0 and (ch in WS or ch == ","):
                    pass
                elif ch == _CALL[self._matched]:
                    self._matched += 1
                    if self._matched == len(_CALL):
                        self._where, self._matched = _NAME, 0
                elif self.completed:
                    self._where = _IGNORE
                    return None
                else:
                    return i
            elif where == _NAME:
                if ch in WS and not self._name:
                    pass
                elif ch in _NAME_CHARS:
                    self._name.append(ch)
                elif ch == "{" and self._name:
                    self._commit("".join(self._name))
                    self._writer.obj_begin()
                    self._stack.append("}")
                    self._where = _ARGS
                else:
                    return i
            elif where == _WRAP:
                if ch == "}":
                    self._wrap -= 1
                    if self._wrap == 0:
                        self._call_done(i)
                elif ch not in WS:
                    self._call_done(i - 1)
                    continue
            else:  # _IGNORE
                return None
            i += 1
        return None

    def _call_done(self, i: int) -> None:
        self._end(i)
        self._where = _BETWEEN
        self._new_call()

    # -- the argument grammar ----------------------------------------------------------------
    _reread = False

    def _args_char(self, ch: str, i: int) -> bool:
        """Read one character of the arguments; False if it can't belong there."""
        mode = self._mode
        if self._dm:  # inside <|"|>
            if ch == QUOTE[self._dm]:
                self._dm += 1
                if self._dm == len(QUOTE):
                    self._dm = 0
                    self._delimiter()
                return True
            if mode not in (_STR, _KEYSTR):
                return False
            self._buf.append(QUOTE[: self._dm])  # it was text after all
            self._dm = 0
            self._reread = True
            return True
        if mode in (_STR, _KEYSTR):
            if ch == "<":
                self._dm = 1
            else:
                self._buf.append(ch)
            return True
        if mode == _BAREKEY:
            if ch == ":":
                self._key(_bare_key("".join(self._buf)))
                self._expect = _VALUE
            elif ch in WS:
                self._key(_bare_key("".join(self._buf)))
                self._expect = _COLON
            elif ch in _NOT_BARE_KEY:
                return False
            else:
                self._buf.append(ch)
                return True
            self._mode = 0
            return True
        if mode == _BARE:
            if ch not in _ENDS_BARE:
                self._buf.append(ch)
                return True
            self._writer.scalar(_bare_json("".join(self._buf)))
            self._buf.clear()
            self._mode = 0
            self._expect = _AFTER
            self._reread = True
            return True
        if ch in WS:
            return True
        expect = self._expect
        if expect in (_FIRST_KEY, _KEY):
            if ch == "}":  # after a comma: a trailing comma, forgiven
                return self._close(ch, i)
            if ch == "<":
                self._dm, self._delim_for = 1, _KEY
            elif ch == "{" and expect == _FIRST_KEY and len(self._stack) == 1:
                self._wrap += 1  # call:f{{…}}
            elif ch in _NOT_BARE_KEY:
                return False
            else:
                self._mode = _BAREKEY
                self._buf.append(ch)
            return True
        if expect == _COLON:
            if ch != ":":
                return False
            self._expect = _VALUE
            return True
        if expect == _AFTER:
            if ch == ",":
                self._expect = _KEY if self._stack[-1] == "}" else _ITEM
                return True
            return ch == self._stack[-1] and self._close(ch, i)
        # a value
        if ch == "]" and expect != _VALUE:
            return self._close(ch, i)
        if ch == "{":
            self._writer.obj_begin()
            self._stack.append("}")
            self._expect = _FIRST_KEY
        elif ch == "[":
            self._writer.arr_begin()
            self._stack.append("]")
            self._expect = _FIRST_ITEM
        elif ch == "<":
            self._dm, self._delim_for = 1, _VALUE
        elif ch in ",}:]":
            return False
        else:
            self._mode = _BARE
            self._buf.append(ch)
        return True

    def _delimiter(self) -> None:
        """A complete <|"|>: opens or closes a string."""
        if self._mode == _STR:
            self._write_text()
            self._writer.str_end()
            self._mode, self._expect = 0, _AFTER
        elif self._mode == _KEYSTR:
            self._key("".join(self._buf))
            self._mode, self._expect = 0, _COLON
        elif self._delim_for == _KEY:
            self._mode = _KEYSTR
        else:
            self._writer.str_begin()
            self._mode = _STR

    def _key(self, key: str) -> None:
        self._buf.clear()
        self._writer.key(json.dumps(key, ensure_ascii=False))

    def _close(self, ch: str, i: int) -> bool:
        self._stack.pop()
        if ch == "}":
            self._writer.obj_end()
        else:
            self._writer.arr_end()
        self._expect = _AFTER
        if not self._stack:
            if self._wrap:
                self._where = _WRAP
            else:
                self._call_done(i)
        return True


def drop_preamble_before_tool_results(messages: list[dict[str, Any]]) -> None:
    """Gemma 4's template prints an assistant message's ``content`` *after* its tool results and
    then closes the turn, so a call that came with a text preamble ("Let me check.") would leave
    the prompt without a place for the model to answer the results. The preamble was already
    shown to the user; drop it from calls whose results follow."""
    for msg, following in zip(messages, messages[1:]):
        if msg["role"] == "assistant" and msg.get("tool_calls") and following["role"] == "tool":
            msg["content"] = ""


FAMILY = Family(
    name="gemma4",
    call_block=GemmaCalls,
    think_start="<|channel>thought",
    think_end="<channel|>",
    tool_call_start="<|tool_call>",
    tool_call_end="<tool_call|>",
    syntax=CallSyntax(start="<|tool_call>", end="<tool_call|>", named="call:{name}", arguments="gemma4"),
    prepare_history=drop_preamble_before_tool_results,
)
