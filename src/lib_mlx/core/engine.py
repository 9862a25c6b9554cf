"""The generation worker: one thread per loaded model owns every MLX call.

Requests arrive as plain values (``Job``); events leave as plain dataclasses through a
``Generation`` handle, delivered to the submitter's asyncio loop with one thread hop per token
(``call_soon_threadsafe``), or to a plain queue for synchronous callers.

Two ways to run a request, chosen per request:

- alone through ``mlx_lm.generate_step``: the raw single-stream speed (``queue_limit`` 1, a
  model whose caches cannot be batched, a prompt with media; and with ``queue_limit`` > 1 a
  request that finds nobody else waiting, if the model's caches can always be trimmed: when a
  second request arrives, the first moves into a batch mid-answer, ``batching.Handoff``);
- continuous batching through mlx-lm's ``BatchGenerator`` (``queue_limit`` > 1): concurrent
  requests decode together, each with its own sampler, stop rules, cancellation and events
  (``batching.BatchRunner``).

Both reuse the KV cache of earlier prompts (``prompt_cache.PromptCache``) and report the
reused count as ``Usage.cached_tokens``; ``decode.RequestStream`` turns tokens into events.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import logging
import os
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import CancelledError, GenerationError, LibMlxError, OutOfMemoryError, QueueFullError
from .batching import BatchRunner, Handoff
from .decode import RequestStream, SeededSampler, make_request_sampler, with_prefix
from .events import Done, Event, Failed, Usage
from .loader import LoadedModel
from .prompt import RenderedPrompt
from .prompt_cache import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_ENTRIES,
    PromptCache,
    cache_length,
    generation_prompt_tails,
    history_end,
    needs_checkpoints,
    reserve,
)
from .vlm import prompt_inputs

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
    def _deliver(self, events: list[Event]) -> None:
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


# How long the worker holds a request for others announced as on their way (their prompts are
# rendering), so that a burst of requests prefills as one batch. Only ever while another request
# is announced; a prompt renders in a few ms.
ARRIVAL_WAIT = 0.05


class Arrival:
    """A request on its way to ``Engine.submit``: announced while its prompt renders, closed by
    ``submit`` (or ``close()`` if it never gets there; idempotent)."""

    def __init__(self, engine: "Engine") -> None:
        self._engine = engine
        self.open = True

    def close(self) -> None:
        self._engine._arrived(self)


@dataclass
class Job:
    prompt: RenderedPrompt
    params: SamplingParams
    generation: Generation
    submitted: float = field(default_factory=time.perf_counter)


class Engine:
    """Owns the model's MLX work on a single worker thread, with a bounded queue.

    ``prompt_cache_bytes`` bounds the KV caches kept for reuse (0 turns reuse off; default:
    the ``LIB_MLX_PROMPT_CACHE_BYTES`` environment variable, else 1 GiB);
    ``engine.prompt_cache`` is the live store (``stats``, ``clear()``).
    """

    def __init__(
        self,
        loaded: LoadedModel,
        queue_limit: int = 1,
        *,
        prompt_cache_bytes: int | None = None,
        prompt_cache_entries: int = DEFAULT_MAX_ENTRIES,
    ) -> None:
        self.loaded = loaded
        self.queue_limit = queue_limit
        if prompt_cache_bytes is None:
            prompt_cache_bytes = _env_int("LIB_MLX_PROMPT_CACHE_BYTES", DEFAULT_MAX_BYTES)
        self.prompt_cache = PromptCache(prompt_cache_bytes, prompt_cache_entries)
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._arrivals_changed = threading.Condition(self._lock)
        self._announced = 0  # open ``Arrival``s
        self._active: set[Generation] = set()
        self._closed = False
        _materialize(loaded.model)
        self._thread = threading.Thread(target=self._run, name=f"lib_mlx-engine-{loaded.model_id}", daemon=True)
        self._thread.start()

    # public ----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests running plus waiting."""
        with self._lock:
            return len(self._active)

    def announce(self) -> Arrival | None:
        """Say that a request is on its way (its prompt is rendering): a request that reaches
        the worker meanwhile waits for it (at most ``ARRIVAL_WAIT``) so that the two prefill
        as one batch instead of one after the other. None where nothing is batched."""
        if self.queue_limit <= 1:
            return None
        with self._lock:
            if self._closed:
                return None
            self._announced += 1
        return Arrival(self)

    def _arrived(self, arrival: Arrival) -> None:
        with self._lock:
            self._close_arrival(arrival)

    def _close_arrival(self, arrival: Arrival | None) -> None:  # holding the lock
        if arrival is not None and arrival.open:
            arrival.open = False
            self._announced -= 1
            self._arrivals_changed.notify_all()

    def submit(
        self,
        prompt: RenderedPrompt,
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        arrival: Arrival | None = None,
    ) -> Generation:
        """Queue a generation or raise ``QueueFullError`` when ``queue_limit`` are in flight.
        Closes ``arrival`` (the request's announcement) either way."""
        generation = Generation(loop)
        with self._lock:
            self._close_arrival(arrival)
            if self._closed:
                raise CancelledError("the model is unloading")
            if len(self._active) >= self.queue_limit:
                raise QueueFullError()
            self._active.add(generation)
            self._jobs.put(Job(prompt, params, generation))  # queued before the worker wakes
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
            self._arrivals_changed.notify_all()
        self.cancel_all()
        self._jobs.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            _wait_for_os_thread(self._thread.native_id)

    # worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        backlog: collections.deque[Job | None] = collections.deque()
        # On Apple silicon keep the model wired in memory while this worker lives, as
        # mlx_lm.stream_generate does around each generation (no-op elsewhere).
        old_wired_limit = _wire_model()
        try:
            while True:
                job = backlog.popleft() if backlog else self._jobs.get()
                if job is None:
                    return
                if not self._batching(job):
                    self._run_one(job)
                    continue
                self._await_announced()
                first: Job | Handoff | None = job
                if self._jobs.empty() and self._always_trimmable():
                    first = self._run_one(job, may_hand_off=True)  # alone, until company comes
                if first is not None:
                    backlog.extend(BatchRunner(self).run(first))
                # Hold nothing of a finished request while waiting for the next one: a handed-over
                # request's own KV cache would otherwise stay alive until then.
                job = first = None
        finally:
            self.prompt_cache.clear()  # MLX arrays die on the thread that made them
            _unwire(old_wired_limit)

    def _await_announced(self) -> None:
        """Give requests announced as on their way (``announce``) up to ``ARRIVAL_WAIT`` to
        reach the queue: a burst then starts as one batch, every prompt in one prefill, where
        the first would otherwise prefill alone and the rest after its first token."""
        with self._lock:
            self._arrivals_changed.wait_for(lambda: self._announced <= 0 or self._closed, ARRIVAL_WAIT)

    def _batching(self, job: Job) -> bool:
        """Batch when more than one request may be in flight and both model and prompt allow."""
        return self.queue_limit > 1 and self._batchable_model() and self.batchable(job)

    @functools.cached_property
    def _model_caches(self) -> list[Any]:
        """A fresh cache of the model's kind, to read its layer types from (built once)."""
        from mlx_lm.models.cache import make_prompt_cache

        return make_prompt_cache(self.loaded.model)

    def _batchable_model(self) -> bool:
        cache = self._model_caches
        return self.loaded.vlm is None and bool(cache) and all(hasattr(c, "merge") for c in cache)

    def _always_trimmable(self) -> bool:
        """Whether every layer's cache can always be trimmed (plain KV caches), which moving a
        running request into a batch needs."""
        return not needs_checkpoints(self._model_caches)

    @functools.cached_property
    def _tails(self) -> list[tuple[int, ...]]:
        return generation_prompt_tails(self.loaded.tokenizer)

    @staticmethod
    def batchable(job: Job) -> bool:
        return not getattr(job.prompt, "media", None)

    def checkpoint_at(self, tokens: list[int], reused: int) -> int | None:
        """Where to keep a checkpoint of this prompt's cache, if anywhere: at the end of the
        conversation, before the assistant's opening (``prompt_cache.history_end``), for models
        whose caches cannot be trimmed back there once generation has run
        (``prompt_cache.needs_checkpoints``); trimmable caches get the same from the final entry."""
        if not self.prompt_cache.enabled or self._always_trimmable():
            return None
        at = history_end(tokens, self._tails)
        return at if at > reused else None

    def sampler(self, params: SamplingParams) -> Callable[..., Any]:
        loaded = self.loaded
        return make_request_sampler(params, loaded.generation_defaults, adjust_top_k=lambda k: _top_k(loaded, k))

    def finish_job(self, job: Job) -> None:
        """Free the request's queue slot (idempotent); done before its last event goes out."""
        job.generation.finished.set()
        with self._lock:
            self._active.discard(job.generation)

    def _run_one(self, job: Job, *, may_hand_off: bool = False) -> Handoff | None:
        handoff = None
        try:
            if job.generation.cancelled:
                self.finish_job(job)
                job.generation._deliver([Done("cancelled", Usage(len(job.prompt.tokens)))])
            else:
                handoff = self._generate(job, may_hand_off=may_hand_off)
        except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
            self.finish_job(job)
            job.generation._deliver([Failed(_classify(exc))])
            log.exception("generation failed")
            _recover_after_failure()
        finally:
            if handoff is None:
                self.finish_job(job)
        return handoff

    def _generate(self, job: Job, *, may_hand_off: bool = False) -> Handoff | None:
        """One request alone, through ``mlx_lm.generate_step``. With ``may_hand_off``, stops
        when another request is waiting and returns the ``Handoff`` that moves this one into a
        batch (None when it ran to its end here)."""
        import mlx.core as mx
        from mlx_lm.generate import generate_step
        from mlx_lm.models.cache import make_prompt_cache

        loaded, params = self.loaded, job.params
        inputs = prompt_inputs(loaded, job.prompt)
        tokens = inputs.tokens
        n_prompt = len(tokens)
        store = self.prompt_cache if (inputs.cacheable and self.prompt_cache.enabled) else None
        hit = store.fetch(tokens) if store is not None else None
        cache = hit.cache if hit is not None else make_prompt_cache(loaded.model)
        reused = hit.reused if hit is not None else 0
        if hit is not None:
            reserve(cache, n_prompt - reused)
        stream = RequestStream(job, loaded, n_prompt=n_prompt, cached_tokens=reused, release=self.finish_job)

        start = reused  # generate_step gets tokens[start:] with the cache holding the rest
        if store is not None and (at := self.checkpoint_at(tokens, reused)) is not None:
            _prefill(loaded.model, tokens[reused:at], cache)
            store.insert(tokens[:at], cache, snapshot=True)
            start = at

        max_tokens = max_new_tokens(loaded, n_prompt, params.max_tokens)
        sampler = self.sampler(params)
        if start > reused:  # a checkpoint took the history: the tail needs one pass, not two
            steps = _steps_after_checkpoint(loaded.model, tokens, start, cache, sampler, stream.processors, max_tokens)
        else:
            steps = generate_step(
                mx.array(tokens[start:]),
                loaded.model,
                max_tokens=max_tokens,
                sampler=sampler,
                logits_processors=with_prefix(stream.processors, tokens[:start]),
                prompt_cache=cache,
                **inputs.step_kwargs,
            )
        fed: list[int] = []  # every token the model has taken in after the prompt
        reason = "length"
        alone = self._jobs.empty if may_hand_off and not inputs.step_kwargs else None
        try:
            add = stream.add
            for token, logprobs in steps:
                fed.append(token)
                finished = add(token, logprobs)
                if finished is not None:
                    reason = finished
                    break
                if alone is not None and not alone() and len(fed) < max_tokens:
                    if cache_length(cache) == len(tokens) + len(fed):
                        reason = "handoff"
                        break
        finally:
            steps.close()
        if reason == "handoff":
            # generate_step's look-ahead step already fed the last token and sampled the next:
            # take that token back out of the cache (and its draw out of a seeded sampler); the
            # batch feeds it again.
            from mlx_lm.models.cache import trim_prompt_cache

            trim_prompt_cache(cache, 1)
            log.debug("generation %d moves into a batch after %d tokens", job.generation.id, len(fed))
            if isinstance(sampler, SeededSampler):
                sampler.rewind()
            return Handoff(job, stream, cache, tokens + fed[:-1], fed[-1], max_tokens - len(fed), sampler)
        stream.finish(reason)
        if store is not None:
            store.insert(tokens + fed, cache)


def _wait_for_os_thread(native_id: int | None, limit: float = 1.0) -> None:
    """Wait until the worker's OS thread is really gone, not just its Python side.

    ``Thread.join`` returns once the Python thread state is released; the OS thread then still
    runs its C++ ``thread_local`` destructors, among them MLX's per-thread stream. A process
    that exits during that window aborts ("terminate called without an active exception",
    SIGABRT) -- about half the time with MLX 0.32 on Linux right after an unload. Linux shows
    the thread in ``/proc/self/task`` until it has exited."""
    if native_id is None:
        return
    task = f"/proc/self/task/{native_id}"
    if not os.path.isdir("/proc/self/task"):
        return
    deadline = time.monotonic() + limit
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(0.001)


def _wire_model() -> int | None:
    try:
        from mlx_lm.utils import maybe_set_recommended_wired_limit

        return maybe_set_recommended_wired_limit()
    except Exception:  # noqa: BLE001 - a tuning knob, never a reason to fail
        return None


def _unwire(old_limit: int | None) -> None:
    if old_limit is None:
        return
    try:
        import mlx.core as mx

        mx.synchronize()
        mx.set_wired_limit(old_limit)
    except Exception:  # noqa: BLE001
        log.debug("could not restore the wired limit", exc_info=True)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    try:
        return int(value) if value else default
    except ValueError:
        log.warning("ignoring %s=%r: not an integer", name, value)
        return default


def _prefill(model: Any, tokens: list[int], cache: list[Any], step: int = 2048) -> None:
    """Run ``tokens`` into ``cache`` as ``generate_step``'s own prefill does (same stream,
    same chunking)."""
    import mlx.core as mx
    from mlx_lm.generate import generation_stream

    with mx.stream(generation_stream):
        for start in range(0, len(tokens), step):
            model(mx.array(tokens[start : start + step])[None], cache=cache)
            mx.eval([c.state for c in cache])
    mx.clear_cache()


def _steps_after_checkpoint(
    model: Any,
    tokens: list[int],
    start: int,
    cache: list[Any],
    sampler: Callable[..., Any],
    processors: tuple[Callable[..., Any], ...],
    max_tokens: int,
) -> Iterator[tuple[int, Any]]:
    """``generate_step``'s tokens for a prompt whose head ``tokens[:start]`` the cache already
    holds (a checkpoint was just taken there). ``generate_step`` would run the tail (the
    assistant's opening, a few tokens) in two forward passes, all but its last token and then
    the last; this samples the first token from one pass over the whole tail, exactly as
    ``generate_step``'s own step does, and lets ``generate_step`` go on from that token. The
    checkpoint then costs a reused turn no extra pass over a fresh prompt (a forward pass has a
    fixed cost of several ms on a GPU, whatever its length)."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step, generation_stream

    tail = mx.array(tokens[start:])
    with mx.stream(generation_stream):
        logits = model(tail[None], cache=cache)[:, -1, :]
        for processor in with_prefix(processors, tokens[:start]) or ():
            logits = processor(tail, logits)
        logprobs = logits - mx.logsumexp(logits, keepdims=True)
        first = sampler(logprobs)
        mx.eval(first)
    token = int(first.item())
    yield token, logprobs.squeeze(0)
    if max_tokens > 1:
        yield from generate_step(
            mx.array([token]),
            model,
            max_tokens=max_tokens - 1,
            sampler=sampler,
            logits_processors=with_prefix(processors, tokens),
            prompt_cache=cache,
        )


def _materialize(model: Any) -> None:
    """Evaluate the model's private arrays (RoPE frequency tables and the like) on this thread.

    ``mlx_lm.load`` evaluates the parameters only; an attribute such as ``_freqs`` (Gemma 4's
    proportional RoPE, Llama 3's scaled RoPE) stays a lazy graph bound to the loading thread's
    stream, and evaluating it first on the worker thread fails with "There is no Stream(cpu, 0)
    in current thread". The engine is built on the loading thread, so do it here."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    if not hasattr(model, "modules"):
        return
    arrays = [
        value
        for module in model.modules()
        for _, value in tree_flatten({k: v for k, v in module.items() if k.startswith("_")})
        if isinstance(value, mx.array)
    ]
    if arrays:
        mx.eval(arrays)


def max_new_tokens(loaded: LoadedModel, n_prompt: int, requested: int | None) -> int:
    """The request's budget, clamped to what the context has left."""
    room = max(loaded.context_length - n_prompt, 1)
    return room if requested is None else max(1, min(requested, room))


def _top_k(loaded: LoadedModel, top_k: int) -> int:
    """mlx-lm refuses a ``top_k`` that is not below the vocabulary size (a ValueError inside the
    compiled sampler); keeping every token is no top-k at all."""
    config = loaded.config or {}
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0
    top_k = int(top_k)
    return 0 if isinstance(vocab, int) and 0 < vocab <= top_k else top_k


# MLX has no exception type for a failed allocation: its allocators throw std::runtime_error
# (RuntimeError here) -- "[malloc] Unable to allocate N bytes.", "[metal::malloc] Attempting to
# allocate N bytes which is greater than the maximum allowed buffer size", CUDA's "out of
# memory" -- so the message is the only signal there is. (On the Linux CPU backend of MLX 0.32
# a failed allocation is not reported at all: the process segfaults in the kernel that writes
# to the buffer. Nothing in Python can catch that.)
_OOM_MARKERS = ("[malloc]", "::malloc]", "unable to allocate", "attempting to allocate", "out of memory", "outofmemory")


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in _OOM_MARKERS)


def _classify(exc: BaseException) -> LibMlxError:
    if isinstance(exc, LibMlxError):
        return exc
    if _is_out_of_memory(exc):
        return OutOfMemoryError(f"the model ran out of memory: {exc}")
    return GenerationError(f"generation failed: {type(exc).__name__}: {exc}")


def _recover_after_failure() -> None:
    """Leave MLX usable for the next request after one failed.

    mlx-lm's samplers are ``mx.compile``d over ``mx.random.state``; an exception thrown while one
    is traced leaves that global state holding a placeholder array, and every later sampled
    generation fails ("[eval] Attempting to eval an array without a primitive") -- a dead
    worker behind a live socket. Reseed it. Then hand the buffer cache back, so that the next
    request after an out-of-memory error can allocate."""
    import os

    import mlx.core as mx

    try:
        try:
            mx.eval(mx.random.state)
        except Exception:  # noqa: BLE001 - any failure means the state is unusable
            mx.random.seed(int.from_bytes(os.urandom(8), "little"))
        mx.clear_cache()
    except Exception:  # noqa: BLE001 - recovery must never take the worker down
        log.exception("could not reset MLX state after a failed generation")


__all__ = ["Arrival", "Engine", "Generation", "SamplingParams", "max_new_tokens"]
