"""Stop strings: cut the answer at the first stop sequence, holding back text that might be
the start of one so that no partial stop string is ever emitted."""

from __future__ import annotations

from collections.abc import Sequence

from .events import Event, TextDelta


class StopMatcher:
    """Applies to answer text (``TextDelta``) only; reasoning and tool calls pass through."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the answer

    def _longest_partial(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        best = 0
        for stop in self._stops:
            for k in range(min(len(stop) - 1, len(text)), best, -1):
                if text.endswith(stop[:k]):
                    best = k
                    break
        return best

    def apply(self, events: list[Event], *, final: bool = False) -> tuple[list[Event], bool]:
        """Returns the events to emit and whether a stop string was hit."""
        if not self._stops or self.stopped:
            return ([] if self.stopped else events), self.stopped
        out: list[Event] = []
        for event in events:
            if not isinstance(event, TextDelta):
                out.append(event)
                continue
            text = self._held + event.text
            found = [(i, s) for s in self._stops if (i := text.find(s)) >= 0]
            if found:
                cut, self.matched = min(found, key=lambda f: f[0])
                self._held = ""
                self.stopped = True
                if cut:
                    out.append(TextDelta(text[:cut]))
                return out, True
            keep = self._longest_partial(text)
            self._held = text[len(text) - keep :] if keep else ""
            if len(text) - keep:
                out.append(TextDelta(text[: len(text) - keep]))
        if final and self._held:
            out.append(TextDelta(self._held))
            self._held = ""
        return out, False
