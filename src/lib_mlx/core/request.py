"""What one request is, as the worker sees it: its sampling parameters, the ``Generation``
handle its events leave through (and its cancellation comes in by), the queued ``Job``, and
the ``Arrival`` a request announces while its prompt renders.

Plain values and thread-safe handles only; nothing here touches MLX.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .events import Done, Event, Failed
from .prompt import RenderedPrompt


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Keep generating through end-of-sequence tokens until ``max_tokens`` (benchmarks).
    ignore_eos: bool = False
    # Test and extension seam: mlx-lm logits processors ``(tokens, logits) -> logits``; they
    # see the whole prompt and the output so far, cached prefix included.
    logits_processors: tuple[Callable[..., Any], ...] = ()
    # Penalties and bias (``core.processors``): OpenAI's presence/frequency (-2..2), mlx-lm's
    # multiplicative repetition penalty, and ``(token id, bias)`` pairs.
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    # Structured output (``core.grammar.GrammarSpec``), enforced from where the answer starts.
    grammar: Any = None
    # Log-probabilities of the answer's tokens: None (off) or how many alternatives (0-20).
    logprobs: int | None = None
    # Reasoning tokens allowed before the end-of-thinking marker is forced (None: no cap).
    thinking_budget: int | None = None


class Generation:
    """One request's stream of events. Iterate it (async or sync); ``cancel()`` from anywhere.

    For an asyncio consumer the worker appends each token's events to an inbox and wakes the
    consumer's loop with ``call_soon_threadsafe`` only when no wake-up is pending already, so a
    consumer that falls behind drains several tokens per wake-up; waiting costs one future (no
    task per token, as ``asyncio.wait_for`` would make)."""

    _ids = itertools.count(1)

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.id = next(self._ids)
        self._loop = loop
        self._inbox: collections.deque[list[Event]] = collections.deque()
        self._wake_pending = False
        self._waiter: asyncio.Future[None] | None = None
        self._sync_queue: queue.Queue[list[Event]] | None = None if loop else queue.Queue()
        self._cancelled = threading.Event()
        self.finished = threading.Event()

    # worker side -----------------------------------------------------------------------
    def deliver(self, events: list[Event]) -> None:
        """Hand one token's events (or a request's last ones) to the consumer. Worker only."""
        if self._sync_queue is not None:
            self._sync_queue.put(events)
            return
        self._inbox.append(events)
        if self._wake_pending:
            return
        self._wake_pending = True
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the consumer's loop is gone: nobody listens any more
            self._cancelled.set()

    def _wake(self) -> None:  # on the consumer's loop
        self._wake_pending = False  # before the consumer drains: later events schedule anew
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # consumer side ---------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def next_batch(self, timeout: float | None = None) -> list[Event]:
        """The next events (one token's worth or more); raises ``TimeoutError`` after
        ``timeout`` seconds without any (so the caller can send a keepalive)."""
        assert self._sync_queue is None, "created for synchronous use"
        inbox = self._inbox
        while not inbox:
            loop = self._loop
            assert loop is not None
            waiter = self._waiter = loop.create_future()
            timer = loop.call_later(timeout, _expire, waiter) if timeout is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        events = inbox.popleft()
        while inbox:
            events = events + inbox.popleft()
        return events

    async def __aiter__(self) -> AsyncIterator[Event]:
        while True:
            for event in await self.next_batch():
                yield event
                if isinstance(event, (Done, Failed)):
                    return

    def __iter__(self) -> Iterator[Event]:
        assert self._sync_queue is not None, "created for asyncio use"
        while True:
            for event in self._sync_queue.get():
                yield event
                if isinstance(event, (Done, Failed)):
                    return


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class Arrival:
    """A request on its way to ``submit``: announced while its prompt renders, closed by
    ``submit`` (or ``close()`` if it never gets there; idempotent)."""

    def __init__(self, on_close: Callable[["Arrival"], None]) -> None:
        self._on_close = on_close
        self.open = True

    def close(self) -> None:
        self._on_close(self)


@dataclass
class Job:
    """A queued request: what to generate and where its events go."""

    prompt: RenderedPrompt
    params: SamplingParams
    generation: Generation
    submitted: float = field(default_factory=time.perf_counter)

    @property
    def batchable(self) -> bool:
        """Whether the prompt can join a batch (a prompt with media runs alone)."""
        return not getattr(self.prompt, "media", None)


__all__ = ["Arrival", "Generation", "Job", "SamplingParams"]
