"""The streaming driver every family shares.

Marker matching is mlx-lm's ``TextStateMachine`` (it holds back text that could still be the
start of a marker, so a marker split over any token boundary never leaks). Three states:
``normal`` (the answer), ``reasoning`` and ``tool`` (inside a tool-call block). A family
only declares its markers and a ``CallBlock`` class that turns the text of one tool-call
block into ``ToolCall*`` events; everything else lives here:

* **Whitespace.** Each reasoning block is stripped at both ends (Gemma 4's ``thought\\n``
  label and Qwen3's ``<think>\\n`` … ``\\n</think>``); the answer's leading whitespace after a
  reasoning block or a tool call is dropped, and so is whitespace right before a tool call and,
  for a family with reasoning markers, at the very start of the output (GLM-4.6's ``\n<think>``,
  QwQ's blank lines after a block the prompt closed). Whitespace is otherwise kept verbatim.
* **Malformed calls.** A block's text goes back raw (markers included) to the channel it
  began in — content, or reasoning if the block opened inside reasoning — and scanning
  resumes right after the point where it stopped making sense (see ``CallBlock``).
* **Reasoning tokens.** Every character of the output is classified once (reasoning, answer,
  call); a token counts as a reasoning token iff at least one of its characters belongs to a
  reasoning block the model wrote, its markers included (Qwen3's ``<think>`` and
  ``</think>``, Gemma 4's whole ``<|channel>thought`` and ``<channel|>``): what the model
  spent on thinking, as OpenAI counts it. A start marker the prompt wrote adds nothing. An
  empty-text token (half a UTF-8 character) counts iff it arrives while the parser is in
  reasoning. ``reasoning_tokens`` is exact (final after ``finish()``); ``in_reasoning`` is
  the same judgement for the token just fed, made at once — it can only differ when a marker
  arrives split over several tokens. Text given as ``prefill`` or fed with ``token=False``
  adds no token.
* **Only offered functions.** A call to a function the request did not offer is not a call:
  its block goes back raw like a malformed one (``tools=None`` turns the check off).
* **Injected text.** ``prefill`` (a forced call's opening, written by the prompt) is never
  given back: if the model does not continue it, only what the model wrote comes back.
* **Calls inside reasoning.** A tool-call block that opens inside reasoning is parsed like any
  other; a well-formed call ends the reasoning (as in mlx-lm), a malformed one goes back to
  the reasoning text.
"""

from __future__ import annotations

import functools
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from mlx_lm.generate import TextStateMachine

from ..events import Event, ReasoningDelta, TextDelta, ToolCallArgumentsDelta, ToolCallEnd, ToolCallStart
from ._json import Malformed

NORMAL, REASONING, TOOL = "normal", "reasoning", "tool"


@dataclass(frozen=True)
class ParserSpec:
    """What a model's output looks like. ``family`` names the registered family (``"auto"``:
    detect from the other fields); ``tool_parser`` names an ``mlx_lm.tool_parsers`` module.
    A spec that names a family but no markers at all gets that family's markers."""

    family: str
    think_start: str | None = None
    think_end: str | None = None
    tool_call_start: str | None = None
    tool_call_end: str | None = None
    tool_parser: str | None = None


def openai_call_id() -> str:
    """``call_`` + 24 hex digits, the id OpenAI's own API issues."""
    return "call_" + uuid.uuid4().hex[:24]


@dataclass(frozen=True)
class CallSyntax:
    """How a family writes one tool call, as data (forced calls open with it; a grammar for
    constrained decoding can be built from it).

    ``start`` opens a call block and ``end`` closes it (None: the block lasts to the end of the
    generation). ``named`` is what follows ``start`` up to where the arguments begin, with
    ``{name}`` for the function's name. ``arguments`` names the argument format (``"json"``: a
    JSON object; ``"gemma4"``: Gemma 4's bare-key syntax). ``separator`` goes between two calls
    of one block (None: each call gets its own block)."""

    start: str
    end: str | None
    named: str
    arguments: str = "json"
    separator: str | None = None

    def opening(self, name: str | None) -> str:
        """The text that forces a call (to ``name``, when given) at the end of a prompt."""
        return self.start + (self.named.replace("{name}", name) if name else "")


# Which prior assistant turns keep their reasoning in the prompt.
KEEP_TOOL_LOOP = "tool_loop"  # only turns after the last user message (the loop in progress)
KEEP_ALL = "all"
KEEP_NONE = "none"


@dataclass(frozen=True)
class Family:
    """Everything family-specific: default markers and the syntax of its tool calls (for the
    parser), the call syntax as data (forced calls), the template switches that turn thinking
    on and off, how history is prepared for its template, and its tool-call id rule.

    ``thinking_switches``: template variables set to the thinking toggle (Granite 3.3 reads
    ``thinking``, most ``enable_thinking``). ``effort_variable``: where the template reads a
    reasoning effort (gpt-oss: ``reasoning_effort``). ``keep_reasoning``: which prior
    assistant turns keep their reasoning (``KEEP_*``). ``prepare_history``: a last edit of the
    normalized messages (in place). ``call_id``: a fresh tool-call id; ``valid_call_id``: an id
    the template accepts (ids from a client that fail it are rewritten consistently)."""

    name: str
    call_block: Callable[..., CallBlock] | None = None  # CallBlock subclass; None: no tool calls
    think_start: str | None = None
    think_end: str | None = None
    tool_call_start: str | None = None
    tool_call_end: str | None = None
    use_markers: bool = True  # False: text passes through untouched (plain models)
    syntax: CallSyntax | None = None
    thinking_switches: tuple[str, ...] = ("enable_thinking",)
    effort_variable: str | None = None
    keep_reasoning: str = KEEP_TOOL_LOOP
    prepare_history: Callable[[list[dict[str, Any]]], None] | None = None
    call_id: Callable[[], str] = openai_call_id
    valid_call_id: Callable[[str], bool] | None = None
    # True: the family's own markers, whatever mlx-lm inferred from the vocabulary (families
    # mlx-lm does not know); False: markers the tokenizer declares win (qwen3, gemma4, mlx_lm).
    own_markers: bool = False
    # A family whose output is not a marker language (gpt-oss's Harmony channels): a factory
    # with ``make_parser``'s keyword arguments plus ``spec`` and ``family`` that returns an
    # object with ``StreamParser``'s interface.
    parser: Callable[..., Any] | None = None
    # More texts that open a call block (Llama 3's bare ``{"name"`` beside ``<|python_tag|>``);
    # the block sees which one opened it.
    more_call_starts: tuple[str, ...] = ()
    # Texts dropped from the answer (Granite 3.3's ``<response>`` ... ``</response>``).
    silent_markers: tuple[str, ...] = ()

    def markers(self, spec: ParserSpec) -> tuple[str | None, str | None, str | None, str | None]:
        if not self.use_markers:
            return None, None, None, None
        own = (spec.think_start, spec.think_end, spec.tool_call_start, spec.tool_call_end)
        if self.own_markers or not any(own):
            own = (self.think_start, self.think_end, self.tool_call_start, self.tool_call_end)
        ts, te, cs, ce = (m or None for m in own)  # "" (e.g. mistral's end) means none
        if not (ts and te):
            ts = te = None
        if not cs or self.call_block is None:
            cs = ce = None
        return ts, te, cs, ce

    def template_kwargs(self, thinking: bool, effort: str | None = None) -> dict[str, Any]:
        """The template variables for a thinking toggle (and a reasoning effort)."""
        kwargs: dict[str, Any] = {switch: thinking for switch in self.thinking_switches}
        if self.effort_variable and effort and effort != "none":
            kwargs[self.effort_variable] = effort
        return kwargs

    def forced_call(self, tool_choice: Any) -> str:
        """``tool_choice`` "required" or a named function: the text that opens a call at the end
        of the prompt, so that the model must write one ("" where the family has no syntax)."""
        if self.syntax is None or tool_choice in (None, "auto", "none"):
            return ""
        name = None
        if isinstance(tool_choice, dict):
            name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
        return self.syntax.opening(name)


class CallBlock:
    """The text of one tool-call block, from its start marker on, turned into call events.

    Subclasses implement ``_consume`` (read text, committing calls through ``_commit``,
    ``_end``), ``_in_call``, and optionally ``_pending_args``/``_closer``/``_complete_enough``.

    The contract that keeps events consistent whatever the model writes:

    * A call is *committed* (``ToolCallStart``) once its name is known; its arguments then
      stream as ``ToolCallArgumentsDelta``s that are always a prefix of valid JSON which
      ``_closer()`` completes. A committed call always gets its ``ToolCallEnd``: if the text
      stops making sense (a syntax error, or the block/generation ends mid-call) the parser
      emits the closing delta and the ``ToolCallEnd``, then gives the call's raw text back
      as content too, so nothing the model wrote is lost.
    * Text that fails before a call is committed is only given back raw.
    * ``resolved`` counts the block's characters (start marker included) that ended up in
      completed calls; ``unresolved()`` is the rest — what a failure gives back.
    """

    def __init__(self, parser: StreamParser, marker: str, origin: str, tools: list[dict] | None) -> None:
        self.origin = origin
        self.tools = tools
        self._parser = parser
        self._raw = [marker]
        self.fed = len(marker)
        self.resolved = 0
        self.completed = 0
        self._base = 0
        self._open: list | None = None  # [index, id, name, parts]

    # -- driven by the parser ----------------------------------------------------------------
    def feed(self, text: str) -> int | None:
        """Read ``text``; the index where it stops belonging to a call, or None."""
        self._base = self.fed
        try:
            k = self._consume(text)
        except Malformed:  # a function that was not offered (``_commit``)
            k = len(text)
        self._raw.append(text if k is None else text[:k])
        self.fed += len(text) if k is None else k
        if k is not None and self._open is not None:
            self._force_end()
        self._flush()
        return k

    def close(self) -> bool:
        """The block ended (end marker, or end of generation). True if ``unresolved()`` must be
        given back raw."""
        if self._in_call():
            if self._open is not None and self._complete_enough():
                self._end(self.fed - self._base - 1)
                return False
            if self._open is not None:
                self._force_end()
            return True
        return self.completed == 0

    def unresolved(self) -> str:
        return "".join(self._raw)[self.resolved :]

    # -- for subclasses ----------------------------------------------------------------------
    def _consume(self, text: str) -> int | None:
        raise NotImplementedError

    def _in_call(self) -> bool:
        raise NotImplementedError

    def _pending_args(self) -> str:
        return ""

    def _closer(self) -> str:
        return ""

    def _complete_enough(self) -> bool:
        return False

    def _commit(self, name: str, call_id: str | None = None) -> None:
        """``call_id``: an id the model wrote itself (kept); else the family makes one."""
        if not self._parser.offers(name):
            raise Malformed(f"function {name!r} was not offered")
        index, call_id = self._parser._call_start(self, name, call_id)
        self._open = [index, call_id, name, []]

    def _delta(self, text: str) -> None:
        if text and self._open is not None:
            self._open[3].append(text)
            self._parser._push(ToolCallArgumentsDelta(self._open[0], text))

    def _flush(self) -> None:
        if self._open is not None:
            self._delta(self._pending_args())

    def _end(self, i: int) -> None:
        """The committed call is complete; ``i``: index, in the text being read, of its last
        character."""
        self._flush()
        self._finish_open()
        self.resolved = self._base + i + 1

    def _force_end(self) -> None:
        self._delta(self._pending_args() + self._closer())
        self._finish_open()

    def _finish_open(self) -> None:
        index, call_id, name, parts = self._open
        if not parts:
            self._delta("{}")
        self._open = None
        self.completed += 1
        self._parser._call_end(ToolCallEnd(index, call_id, name, "".join(parts)))


@functools.lru_cache(maxsize=64)
def _machine(
    ts: str | None,
    te: str | None,
    cs: str | None,
    ce: str | None,
    more_cs: tuple[str, ...] = (),
    silent: tuple[str, ...] = (),
):
    """The state machine for a marker set and the markers behind each (from, to) transition."""
    edges: dict[str, list[tuple[str, str]]] = {NORMAL: [(m, NORMAL) for m in silent]}
    if ts and te:
        edges[NORMAL].append((ts, REASONING))
        edges[REASONING] = [(te, NORMAL)]
    if cs:
        for start in (cs, *more_cs):
            edges[NORMAL].append((start, TOOL))
            if ts and te:
                edges[REASONING].append((start, TOOL))
        edges[TOOL] = [(ce, NORMAL)] if ce else []
    markers: dict[tuple[str, str], tuple[str, ...]] = {}
    for src, out in edges.items():
        for text, dst in out:
            markers[(src, dst)] = (*markers.get((src, dst), ()), text)
    return TextStateMachine(edges), markers


def append_coalesced(events: list[Event], event: Event) -> None:
    """Append ``event``, merged into the last one where both are text of the same kind or
    argument deltas of the same call (one token's events stay few, whatever the parser)."""
    last = events[-1] if events else None
    if type(last) is type(event):
        if isinstance(event, TextDelta | ReasoningDelta):
            events[-1] = type(event)(last.text + event.text)
            return
        if isinstance(event, ToolCallArgumentsDelta) and last.index == event.index:
            events[-1] = ToolCallArgumentsDelta(event.index, last.delta + event.delta)
            return
    events.append(event)


class StreamParser:
    """Turns generated text into events; one per request. See the package docstring."""

    def __init__(
        self,
        spec: ParserSpec,
        family: Family,
        *,
        tools: list[dict] | None = None,
        starts_in_reasoning: bool = False,
        prefill: str = "",
        parse_tools: bool = True,
    ) -> None:
        ts, te, cs, ce = family.markers(spec)
        if not parse_tools:
            cs = ce = None
        self.spec = spec
        self.family = family
        self.tools = tools
        self._offered = None if tools is None else frozenset(tool_names(tools))
        self._prefill = len(prefill)
        self.in_reasoning = False
        self.reasoning_tokens = 0
        self.answered = False  # answer text (not whitespace) has been emitted
        more = family.more_call_starts if cs else ()
        self._sm, self._markers = _machine(ts, te, cs, ce, more, family.silent_markers if family.use_markers else ())
        start = REASONING if starts_in_reasoning and ts else NORMAL
        self._st = self._sm.make_state(start)
        self._events: list[Event] = []
        self._block: CallBlock | None = None
        self._block_at = 0  # stream position of the open block's start marker
        self._calls = 0
        # stream positions: start of the state machine's buffer, end of fed text, classified
        self._pos = self._end = self._marked = 0
        self._tokens: deque[list] = deque()  # tokens whose characters are not all classified
        self._last: list | None = None
        # whitespace handling
        self._hold_ws = cs is not None
        self._content_ws = ""
        # Whitespace at the very start of the output is formatting where the family has a
        # reasoning block (GLM-4.6's "\n<think>", QwQ's blank lines after a closed block).
        self._content_lstrip = bool(ts) and not prefill
        self._reason_ws = ""
        self._reason_lstrip = start == REASONING
        self._reasoned = False
        if prefill:
            self._end = len(prefill)
            self._scan(prefill)

    # -- public interface --------------------------------------------------------------------
    def offers(self, name: str) -> bool:
        """Whether a call to ``name`` may be returned as a call."""
        return self._offered is None or name in self._offered

    def feed(self, text: str, *, token: bool = True) -> list[Event]:
        """One generated token's text → the events it completes. ``token=False``: the text
        continues the previous token (e.g. the detokenizer's ``finalize()`` tail), so it adds
        no token to the reasoning count."""
        current = self._last
        if token or current is None:
            current = self._last = [self._end, self._end, False, False]  # start, end, counted, queued
        if text:
            current[1] = self._end + len(text)
            if not current[3]:
                current[3] = True
                self._tokens.append(current)
        self._end += len(text)
        self._scan(text)
        state = self._st[0]
        if current[0] == current[1] and not current[2] and state == REASONING:
            current[2] = True  # an empty-text token (half a character) inside reasoning
            self.reasoning_tokens += 1
        self.in_reasoning = current[2] or (current[1] > self._marked and state == REASONING)
        return self._take()

    def finish(self) -> list[Event]:
        """End of generation: flush held-back text, complete or give back an open call."""
        while self._st[3]:
            state, buf = self._st[0], self._st[3]
            self._st = self._sm.make_state(state)
            restart = self._segments(buf, [(state, buf)])
            if restart is None:
                self._pos += len(buf)
            else:
                self._restart(buf, *restart)
        if self._block is not None:
            self._close_block("")
        if self._content_ws and not self._content_lstrip:
            self._push(TextDelta(self._content_ws))
        self._content_ws = self._reason_ws = ""
        self._mark(self._end, False)
        return self._take()

    # -- scanning ----------------------------------------------------------------------------
    def _scan(self, text: str) -> None:
        while True:
            raw = self._st[3] + text
            self._st, segments = TextStateMachine.split(self._st, text)
            restart = self._segments(raw, segments)
            if restart is None:
                self._pos += len(raw) - len(self._st[3])
                return
            at, state = restart
            self._pos += at
            self._st = self._sm.make_state(state)
            text = raw[at:]

    def _restart(self, raw: str, at: int, state: str) -> None:
        self._pos += at
        self._st = self._sm.make_state(state)
        self._scan(raw[at:])

    def _segments(self, raw: str, segments: list[tuple[str, str]]) -> tuple[int, str] | None:
        """Handle one split; (position in ``raw``, state) to rescan from, or None."""
        at = 0
        prev = None
        for n, (state, text) in enumerate(segments):
            if n:
                candidates = self._markers[(prev, state)]
                marker = next((m for m in candidates if raw.startswith(m, at)), candidates[0])
                at += len(marker)
                restart = self._transition(prev, state, marker, at)
                if restart is not None:
                    return restart
            if text:
                if state == TOOL:
                    block = self._block
                    k = block.feed(text)
                    self._mark(self._block_at + block.resolved, False)
                    if k is not None:
                        self._block = None
                        self._give_back(block, self._pos + at + k)
                        return at + k, block.origin
                else:
                    self._mark(self._pos + at + len(text), state == REASONING)
                    self._text(state, text)
            at += len(text)
            prev = state
        return None

    def _transition(self, src: str, dst: str, marker: str, at: int) -> tuple[int, str] | None:
        end = self._pos + at
        if dst == TOOL:
            self._block = self.family.call_block(self, marker, src, self.tools)
            self._block_at = end - len(marker)
            return None  # its characters are classified when the call resolves
        if src == TOOL:
            origin = self._close_block(marker)
            return (at, REASONING) if origin == REASONING else None
        self._mark(end, True)  # a thinking marker the model wrote is reasoning it spent
        if dst == REASONING:
            self._reason_lstrip = True
            self._reason_ws = "\n\n" if self._reasoned else ""
        else:
            self._reason_ws = ""
            self._content_lstrip = True
        return None

    def _close_block(self, marker: str) -> str | None:
        """The open block ended; the state it must go back to if it failed, else None."""
        block, self._block = self._block, None
        failed = block.close()
        self._mark(self._block_at + block.resolved, False)
        if failed:
            self._give_back(block, self._block_at + block.fed + len(marker), marker)
            return block.origin
        self._mark(self._block_at + block.fed + len(marker), False)
        if block.origin == REASONING:
            self._reason_ws = ""
        return None

    def _give_back(self, block: CallBlock, end: int, marker: str = "") -> None:
        self._mark(end, block.origin == REASONING)
        text = block.unresolved() + marker
        injected = self._prefill - (self._block_at + block.resolved)
        self._text(block.origin, text[injected:] if injected > 0 else text)

    # -- output channels ---------------------------------------------------------------------
    def _text(self, state: str, text: str) -> None:
        if state == REASONING:
            if self._reason_lstrip:
                text = text.lstrip()
                if not text:
                    return
                self._reason_lstrip = False
            body = text.rstrip()
            if not body:
                self._reason_ws += text
                return
            self._push(ReasoningDelta(self._reason_ws + body))
            self._reason_ws = text[len(body) :]
            self._reasoned = True
            return
        if self._content_lstrip:
            text = text.lstrip()
            if not text:
                return
            self._content_lstrip = False
        if not self._hold_ws:
            self._push(TextDelta(text))
            return
        body = text.rstrip()
        if not body:
            self._content_ws += text
            return
        self._push(TextDelta(self._content_ws + body))
        self._content_ws = text[len(body) :]

    def _push(self, event: Event) -> None:
        if type(event) is TextDelta and not self.answered and event.text.strip():
            self.answered = True
        append_coalesced(self._events, event)

    def _take(self) -> list[Event]:
        events, self._events = self._events, []
        return events

    # -- calls (called by CallBlock) ---------------------------------------------------------
    def _call_start(self, block: CallBlock, name: str, call_id: str | None = None) -> tuple[int, str]:
        index = self._calls
        self._calls += 1
        call_id = call_id or self.family.call_id()
        if block.origin == NORMAL:
            self._content_ws = ""
        self._push(ToolCallStart(index, call_id, name))
        return index, call_id

    def _call_end(self, event: ToolCallEnd) -> None:
        self._push(event)
        self._content_lstrip = True

    # -- reasoning-token accounting ----------------------------------------------------------
    def _mark(self, upto: int, reasoning: bool) -> None:
        """Classify the stream's characters up to ``upto`` (reasoning or not)."""
        if upto <= self._marked:
            return
        tokens = self._tokens
        if reasoning:
            for token in tokens:
                if token[0] >= upto:
                    break
                if not token[2]:
                    token[2] = True
                    self.reasoning_tokens += 1
        self._marked = upto
        while tokens and tokens[0][1] <= upto:
            tokens.popleft()[3] = False


def tool_names(tools: list[dict]) -> list[str]:
    """Function names of chat-shaped (``{"function": {"name"}}``) or flat (``{"name"}``) tools."""
    names = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        if isinstance(function.get("name"), str):
            names.append(function["name"])
    return names
