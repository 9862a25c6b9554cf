"""Shared driving of one generation for the HTTP routes: keepalives while waiting, cleanup on
disconnect, and collection for non-streaming answers."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ..core import Generation
from ..core.events import Done, Event, Failed
from .accumulate import Accumulated
from .context import ServerContext

KEEPALIVE_SECONDS = 5.0


class Keepalive:
    """Yielded instead of events when nothing arrived for a while (long prompts)."""


KEEPALIVE = Keepalive()


async def events_with_keepalive(
    ctx: ServerContext, generation: Generation, interval: float = KEEPALIVE_SECONDS
) -> AsyncIterator[Event | Keepalive]:
    """Every event of ``generation``; a ``KEEPALIVE`` after ``interval`` seconds of silence.
    Leaving early (client gone) cancels the generation at its next token."""
    try:
        while True:
            try:
                batch = await generation.next_batch(interval)
            except TimeoutError:
                yield KEEPALIVE
                continue
            for event in batch:
                yield event
                if isinstance(event, (Done, Failed)):
                    return
    finally:
        ctx.release(generation)


async def collect(ctx: ServerContext, generation: Generation) -> Accumulated:
    result = Accumulated()
    try:
        async for event in generation:
            result.add(event)
    finally:
        ctx.release(generation)
    return result
