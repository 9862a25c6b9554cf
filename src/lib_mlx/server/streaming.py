"""Driving one generation for every HTTP route, with the same rules everywhere.

- ``stream``: the one SSE driver. An endpoint supplies a ``StreamWire`` (how its protocol
  writes the opening, each event, an error, a keepalive and the end); the driver sends
  keepalives while the model is silent (a long prompt), cancels the generation when the client
  leaves, and ends every stream the same way on a failure: a generation error, the server
  stopping or the model unloading (``cancelled``), or a bug in an encoder all become the
  protocol's error event, then its end.
- ``run_to_end``: the same for a non-streamed answer. A generation error raises it (its HTTP
  status: 500 ``generation_failed``/``out_of_memory``); a cancelled generation -- only a
  client still waiting sees it: the server is stopping or the model unloading -- raises
  ``CancelledError``, a 503 ``cancelled`` in every API.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Protocol

from starlette.responses import StreamingResponse

from ..core import Generation
from ..core.events import Done, Event, Failed
from ..core.failures import classify
from ..errors import CancelledError, LibMlxError
from .accumulate import Accumulated
from .context import ServerContext
from .sse import SSE_HEADERS

log = logging.getLogger("lib_mlx.server")

KEEPALIVE_SECONDS = 5.0

STOPPED = "the generation was cancelled: the server is stopping or the model is unloading"


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


def failure_of(event: Event) -> LibMlxError | None:
    """The error an event ends the request with: a failure, or a cancellation that a client
    still listening sees (the server is stopping or the model unloading)."""
    if isinstance(event, Failed):
        return classify(event.error)
    if isinstance(event, Done) and event.finish_reason == "cancelled":
        return CancelledError(STOPPED)
    return None


# --- streamed ----------------------------------------------------------------------------------


class StreamWire(Protocol):
    """How one API writes its SSE stream; each method returns ready frames (``server.sse``)."""

    def opening(self) -> Iterable[bytes]: ...

    def frames(self, event: Event) -> Iterable[bytes]:
        """The frames for one core event (``Done`` included; never a failure)."""
        ...

    def failure(self, error: LibMlxError) -> Iterable[bytes]:
        """The protocol's error event(s): the stream ends after them."""
        ...

    def keepalive(self) -> bytes: ...

    def closing(self) -> Iterable[bytes]:
        """What follows the last event, after a failure too (chat's ``[DONE]``)."""
        ...


async def stream(ctx: ServerContext, generation: Generation, wire: StreamWire) -> AsyncIterator[bytes]:
    """Every frame of one streamed answer (see the module docstring)."""
    async with aclosing(events_with_keepalive(ctx, generation)) as events:  # releases on every way out
        try:
            for frame in wire.opening():
                yield frame
            async for event in events:
                if isinstance(event, Keepalive):
                    yield wire.keepalive()
                    continue
                error = failure_of(event)
                if error is not None:
                    for frame in wire.failure(error):
                        yield frame
                    break
                for frame in wire.frames(event):
                    yield frame
        except Exception as exc:  # noqa: BLE001 - a bug in an encoder must still end the stream properly
            log.exception("stream failed")
            ctx.release(generation)
            try:
                for frame in wire.failure(classify(exc)):
                    yield frame
            except Exception:  # noqa: BLE001 - the encoder cannot even say so: end the stream
                log.exception("stream error event failed")
    for frame in wire.closing():
        yield frame


def sse_response(body: AsyncIterator[bytes], headers: dict[str, str] | None = None) -> StreamingResponse:
    return StreamingResponse(body, media_type="text/event-stream", headers={**SSE_HEADERS, **(headers or {})})


# --- not streamed -------------------------------------------------------------------------------


async def run_to_end(ctx: ServerContext, generation: Generation, on_event: Callable[[Event], object]) -> None:
    """Feed every event to ``on_event`` up to ``Done``; a failure or cancellation raises."""
    async with aclosing(events_with_keepalive(ctx, generation)) as events:
        async for event in events:
            if isinstance(event, Keepalive):
                continue
            error = failure_of(event)
            if error is not None:
                raise error
            on_event(event)


async def collect(ctx: ServerContext, generation: Generation) -> Accumulated:
    """The whole answer of a non-streamed request (see ``run_to_end``)."""
    result = Accumulated()
    await run_to_end(ctx, generation, result.add)
    return result
