"""The generation worker: one thread per loaded model owns every MLX call.

Requests arrive as plain values (``Job``); events leave as plain dataclasses through a
``Generation`` handle, delivered to the submitter's asyncio loop with one thread hop per token
(``call_soon_threadsafe``), or to a plain queue for synchronous callers.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import CancelledError, GenerationError, LibMlxError, OutOfMemoryError, QueueFullError
from .events import Done, Event, Failed, Timings, ToolCallEnd, Usage
from .loader import LoadedModel
from .parsers import make_parser
from .prompt import RenderedPrompt
from .stops import StopMatcher

log = logging.getLogger("lib_mlx.engine")


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    # Test and extension seam: mlx-lm logits processors ``(tokens, logits) -> logits``.
    logits_processors: tuple[Callable[..., Any], ...] = ()


class Generation:
    """One request's stream of events. Iterate it (async or sync); ``cancel()`` from anywhere."""

    _ids = itertools.count(1)

    def __init__(self, loop: asyncio.AbstractEventLoop | None) -> None:
        self.id = next(self._ids)
        self._loop = loop
        self._async_queue: asyncio.Queue[list[Event]] | None = asyncio.Queue() if loop else None
        self._sync_queue: queue.Queue[list[Event]] | None = None if loop else queue.Queue()
        self._cancelled = threading.Event()
        self.finished = threading.Event()

    # worker side -----------------------------------------------------------------------
    def _deliver(self, events: list[Event]) -> None:
        if self._async_queue is not None:
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._async_queue.put_nowait, events)
            except RuntimeError:  # the consumer's loop is gone: nobody listens any more
                self._cancelled.set()
        else:
            assert self._sync_queue is not None
            self._sync_queue.put(events)

    # consumer side ---------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    async def next_batch(self, timeout: float | None = None) -> list[Event]:
        """The next events (one token's worth or more); raises ``TimeoutError`` after
        ``timeout`` seconds without any (so the caller can send a keepalive)."""
        assert self._async_queue is not None, "created for synchronous use"
        if timeout is None:
            return await self._async_queue.get()
        return await asyncio.wait_for(self._async_queue.get(), timeout)

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


@dataclass
class Job:
    prompt: RenderedPrompt
    params: SamplingParams
    generation: Generation
    submitted: float = field(default_factory=time.perf_counter)


class Engine:
    """Owns the model's MLX work on a single worker thread, with a bounded queue."""

    def __init__(self, loaded: LoadedModel, queue_limit: int = 1) -> None:
        self.loaded = loaded
        self.queue_limit = queue_limit
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._active: set[Generation] = set()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"lib_mlx-engine-{loaded.model_id}", daemon=True)
        self._thread.start()

    # public ----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests running plus waiting."""
        with self._lock:
            return len(self._active)

    def submit(
        self, prompt: RenderedPrompt, params: SamplingParams, *, loop: asyncio.AbstractEventLoop | None = None
    ) -> Generation:
        """Queue a generation or raise ``QueueFullError`` when ``queue_limit`` are in flight."""
        generation = Generation(loop)
        with self._lock:
            if self._closed:
                raise CancelledError("the model is unloading")
            if len(self._active) >= self.queue_limit:
                raise QueueFullError()
            self._active.add(generation)
        self._jobs.put(Job(prompt, params, generation))
        return generation

    def cancel_all(self) -> None:
        with self._lock:
            active = list(self._active)
        for generation in active:
            generation.cancel()

    def close(self, timeout: float = 30.0) -> None:
        """Cancel everything, stop the worker and wait for it."""
        with self._lock:
            self._closed = True
        self.cancel_all()
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    # worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if job.generation.cancelled:
                    job.generation._deliver([Done("cancelled", Usage(len(job.prompt.tokens)))])
                else:
                    self._generate(job)
            except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
                job.generation._deliver([Failed(_classify(exc))])
                log.exception("generation failed")
            finally:
                job.generation.finished.set()
                with self._lock:
                    self._active.discard(job.generation)

    def _generate(self, job: Job) -> None:
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import make_prompt_cache
        from mlx_lm.sample_utils import make_sampler

        loaded, prompt, params, gen = self.loaded, job.prompt, job.params, job.generation
        tokenizer = loaded.tokenizer
        n_prompt = len(prompt.tokens)
        max_tokens = max_new_tokens(loaded, n_prompt, params.max_tokens)

        defaults = loaded.generation_defaults
        temperature = params.temperature if params.temperature is not None else defaults.get("temperature", 1.0)
        sampler = make_sampler(
            temp=float(temperature),
            top_p=float(params.top_p if params.top_p is not None else defaults.get("top_p", 0.0) or 0.0),
            top_k=int(params.top_k if params.top_k is not None else defaults.get("top_k", 0) or 0),
            min_p=float(params.min_p if params.min_p is not None else defaults.get("min_p", 0.0) or 0.0),
        )
        if params.seed is not None:
            mx.random.seed(params.seed)

        parser = make_parser(loaded.parser_spec, tools=prompt.tools, starts_in_reasoning=prompt.starts_in_reasoning)
        stops = StopMatcher(params.stop)
        detokenizer = tokenizer.detokenizer
        eos = tokenizer.eos_token_ids

        pending: list[Event] = []
        if prompt.assistant_prefix:
            pending.extend(parser.feed(prompt.assistant_prefix))

        n_generated = reasoning_tokens = 0
        finish_reason = "length"
        calls = 0
        t_start = time.perf_counter()
        t_first = t_start
        steps = generate_step(
            mx.array(prompt.tokens),
            loaded.model,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=list(params.logits_processors) or None,
            prompt_cache=make_prompt_cache(loaded.model),
        )
        try:
            for token, _ in steps:
                if n_generated == 0:
                    t_first = time.perf_counter()
                if gen.cancelled:
                    finish_reason = "cancelled"
                    break
                if token in eos:
                    finish_reason = "stop"
                    break
                n_generated += 1
                detokenizer.add_token(token)
                events = parser.feed(detokenizer.last_segment)
                if parser.in_reasoning:
                    reasoning_tokens += 1
                events, stopped = stops.apply(events)
                pending.extend(events)
                if pending:
                    calls += sum(isinstance(e, ToolCallEnd) for e in pending)
                    gen._deliver(pending)
                    pending = []
                if stopped:
                    finish_reason = "stop"
                    break
        finally:
            steps.close()
        if finish_reason != "cancelled":
            detokenizer.finalize()
            tail = parser.feed(detokenizer.last_segment) if detokenizer.last_segment else []
            tail += parser.finish()
            tail, _ = stops.apply(tail, final=True)
            pending.extend(tail)
            calls += sum(isinstance(e, ToolCallEnd) for e in tail)
            if calls and finish_reason == "stop":
                finish_reason = "tool_calls"
        t_end = time.perf_counter()
        prompt_s = t_first - t_start
        decode_s = t_end - t_first
        timings = Timings(
            prompt_seconds=prompt_s,
            decode_seconds=decode_s,
            prompt_tps=n_prompt / prompt_s if prompt_s > 0 else 0.0,
            decode_tps=(n_generated - 1) / decode_s if decode_s > 0 and n_generated > 1 else 0.0,
        )
        usage = Usage(prompt_tokens=n_prompt, completion_tokens=n_generated, reasoning_tokens=reasoning_tokens)
        pending.append(Done(finish_reason, usage, timings))
        gen._deliver(pending)


def max_new_tokens(loaded: LoadedModel, n_prompt: int, requested: int | None) -> int:
    """The request's budget, clamped to what the context has left."""
    room = max(loaded.context_length - n_prompt, 1)
    return room if requested is None else max(1, min(requested, room))


def _classify(exc: BaseException) -> LibMlxError:
    if isinstance(exc, LibMlxError):
        return exc
    text = str(exc).lower()
    # MLX raises allocation failures as a bare RuntimeError from its allocator (no dedicated
    # type exists), so its message is the only signal there is.
    if isinstance(exc, MemoryError) or ("memory" in text and ("alloc" in text or "out of" in text)):
        return OutOfMemoryError(f"the model ran out of memory: {exc}")
    return GenerationError(f"generation failed: {type(exc).__name__}: {exc}")


__all__ = ["Engine", "Generation", "SamplingParams", "max_new_tokens"]
