"""What every route needs: the model's core, this server's settings, and the generations it
has in flight (so that stopping the server ends them).

``DisconnectMiddleware`` ties each request to the generations it submits: once the request's
body has been read, one task waits for the client to go away and cancels them, so that a client
that hangs up -- streaming or not, during the prompt or mid-answer -- frees its queue slot at
the next token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic
from starlette.requests import ClientDisconnect, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .._text import lone_surrogate_at
from ..config import MlxServerConfig
from ..core import Arrival, Generation, InferenceCore, RenderedPrompt, SamplingParams
from ..errors import (
    CancelledError,
    ContextLengthExceededError,
    InvalidJsonError,
    InvalidRequestError,
    ModelNotFoundError,
    QueueFullError,
)
from .errors import from_validation_error
from .security import body_too_large

_M = TypeVar("_M", bound=pydantic.BaseModel)

log = logging.getLogger("lib_mlx.server")

# Prompts rendering at once (each also counts against queue_limit while it renders).
MAX_CONCURRENT_RENDERS = 4


@dataclass
class ServerContext:
    core: InferenceCore  # the one door into core; nothing here knows the engine behind it
    settings: MlxServerConfig
    model_id: str
    api_key: str | None
    generations: set[Generation] = field(default_factory=set)
    ready: bool = True
    rendering: int = 0  # prompts being rendered now (they count against queue_limit)
    _render_pool: ThreadPoolExecutor | None = field(default=None, repr=False)
    _stopping: asyncio.Event | None = field(default=None, repr=False)

    # request helpers --------------------------------------------------------------------
    async def read_body(self, request: Request) -> bytes:
        """The body, refusing more than ``max_body_bytes`` (413) without reading it all.
        (``BodyLimitMiddleware`` enforces the same cap for every route; this keeps the check
        where the body is read, for an app built without it.)"""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length", "").strip()
        if declared.isdigit() and int(declared) > limit:
            raise body_too_large(limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise body_too_large(limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(self, request: Request) -> dict[str, Any]:
        body = await self.read_body(request)
        if len(body) > _PARSE_ON_LOOP_BYTES:  # a large body parses off the event loop
            return await asyncio.to_thread(parse_json_body, body)
        return parse_json_body(body)

    @staticmethod
    def parse(model: type[_M], data: dict[str, Any]) -> _M:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise from_validation_error(exc) from None

    def check_model(self, requested: str | None) -> None:
        if requested and requested not in (self.model_id, self.core.model_id):
            raise ModelNotFoundError(f"The model '{requested}' does not exist; this server serves '{self.model_id}'.", param="model")

    def check_context(self, rendered: RenderedPrompt) -> None:
        n, limit = len(rendered.tokens), self.core.context_length
        if n >= limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens, but the prompt has {n} tokens.",
                param="messages",
            )

    async def render(self, prompt: Any) -> RenderedPrompt:
        """Render in a thread, the request announced to the engine meanwhile (requests of a
        burst render side by side; the first to be submitted then waits for the others, so that
        they prefill as one batch). The request's watch closes the announcement at the latest.

        A render counts against ``queue_limit`` (429 when renders plus generations fill it), at
        most ``MAX_CONCURRENT_RENDERS`` run at once, and a server that stops meanwhile answers
        the request ``cancelled`` at once (the render thread, bounded by the prompt's size
        check, finishes on its own)."""
        if not self.ready:
            raise CancelledError("the server is stopping")
        if self.rendering + self.core.in_flight >= self.core.queue_limit:
            raise QueueFullError()
        if self._render_pool is None:
            # Our own threads, not the loop's default executor: a server that stops does not
            # wait for a render it has given up on.
            self._render_pool = ThreadPoolExecutor(MAX_CONCURRENT_RENDERS, thread_name_prefix="lib_mlx-render")
            self._stopping = asyncio.Event()
        watch = _request_watch.get()
        if watch is not None and watch.arrival is None:
            watch.arrival = self.core.announce()
        self.rendering += 1
        try:
            job = asyncio.get_running_loop().run_in_executor(self._render_pool, self.core.render, prompt)
            assert self._stopping is not None
            stopping = asyncio.ensure_future(self._stopping.wait())
            try:
                await asyncio.wait({job, stopping}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopping.cancel()
            if not job.done() or not self.ready:
                job.add_done_callback(_drop_result)
                raise CancelledError("the server stopped while the prompt was rendering")
            return job.result()
        except BaseException:
            if watch is not None and watch.arrival is not None:
                watch.arrival.close()
            raise
        finally:
            self.rendering -= 1

    async def check(self, rendered: RenderedPrompt, params: SamplingParams) -> None:
        """The core's refusals of what decoding cannot apply (an unenforceable schema, a
        ``logit_bias`` id outside the vocabulary), as 400s before the request is queued. In a
        thread where there is a grammar to compile (the first of a large vocabulary builds the
        grammar engine's tokenizer: seconds)."""
        if params.grammar is None and not params.logit_bias and not rendered.tools:
            return
        await asyncio.to_thread(self.core.check, rendered, params)

    def submit(self, rendered: RenderedPrompt, params: SamplingParams) -> Generation:
        watch = _request_watch.get()
        arrival = watch.arrival if watch is not None else None
        generation = self.core.submit(rendered, params, loop=asyncio.get_running_loop(), arrival=arrival)
        self.generations.add(generation)
        if watch is not None:
            watch.track(generation)
        return generation

    def release(self, generation: Generation) -> None:
        generation.cancel()  # no-op when finished; stops the worker when the client left early
        self.generations.discard(generation)

    def cancel_all(self) -> None:
        """The server is stopping (runs on its loop): end renders and generations."""
        self.ready = False
        if self._stopping is not None:
            self._stopping.set()
        if self._render_pool is not None:
            self._render_pool.shutdown(wait=False, cancel_futures=True)
        for generation in list(self.generations):
            generation.cancel()


def _drop_result(job: asyncio.Future[Any]) -> None:
    if not job.cancelled():
        job.exception()  # retrieved: an abandoned render's error is not logged as unhandled


# Bodies up to this size parse on the event loop (microseconds); larger ones in a thread, so
# that a 32 MiB body does not stall every other connection while it parses.
_PARSE_ON_LOOP_BYTES = 256 * 1024


def parse_json_body(body: bytes) -> dict[str, Any]:
    """A request body -> its JSON object, or the 400 that says what is wrong with it."""
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidJsonError("request body is not valid UTF-8") from None
    except ValueError as exc:
        raise InvalidJsonError(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidJsonError("request body is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequestError("request body must be a JSON object")
    reject_lone_surrogates(data)
    return data


def reject_lone_surrogates(data: dict[str, Any], prefix: str = "") -> None:
    """400 naming the field whose string holds a lone surrogate escape (``"\\ud800"``): it
    could be neither tokenized nor stored nor sent back."""
    where = lone_surrogate_at(data, prefix)
    if where is not None:
        raise InvalidJsonError(
            f"{where}: the string holds a lone surrogate escape (e.g. \\ud800), which is not valid Unicode text",
            param=where,
        )


# --- cancel on disconnect -----------------------------------------------------------------------

_request_watch: ContextVar[DisconnectWatch | None] = ContextVar("lib_mlx_request_watch", default=None)


class DisconnectWatch:
    """One request's ``receive``, watched. After the last body message, a single task takes
    over the real ``receive`` (which then only ever answers ``http.disconnect``: the client left,
    or the response is complete) and every later caller -- Starlette's own disconnect listener
    for streams included -- shares its answer."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._listener: asyncio.Task[Message] | None = None
        self._generations: list[Generation] = []
        self.disconnected = False
        self.arrival: Arrival | None = None  # the request announced to the engine (``render``)

    async def receive(self) -> Message:
        if self._listener is not None:
            return await asyncio.shield(self._listener)
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._on_disconnect()
        elif message["type"] == "http.request" and not message.get("more_body", False):
            self._listener = asyncio.ensure_future(self._listen())
        return message

    async def _listen(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.disconnect":
            self._on_disconnect()
        return message

    def _on_disconnect(self) -> None:
        # Also reached when the response completes; cancelling a finished generation is a no-op.
        self.disconnected = True
        for generation in self._generations:
            generation.cancel()

    def track(self, generation: Generation) -> None:
        self._generations.append(generation)
        if self.disconnected:
            generation.cancel()

    def close(self) -> None:
        if self.arrival is not None:
            self.arrival.close()  # never submitted (an invalid request): nobody waits for it
        if self._listener is not None and not self._listener.done():
            self._listener.cancel()


class DisconnectMiddleware:
    """Pure ASGI: wraps ``receive`` only (nothing per streamed chunk)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watch = DisconnectWatch(receive)
        token = _request_watch.set(watch)
        try:
            await self.app(scope, watch.receive, send)
        except ClientDisconnect:
            # Gone in the middle of sending its body: nobody to answer, nothing went wrong here.
            log.debug("client disconnected during %s %s", scope.get("method"), scope.get("path"))
        finally:
            _request_watch.reset(token)
            watch.close()
