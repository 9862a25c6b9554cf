"""Scheduling: one worker thread per loaded model owns every MLX call, behind a bounded queue.

Requests arrive as plain values (``request.Job``); events leave through each request's
``request.Generation`` handle. Two ways to run a request, chosen per request:

- alone through ``mlx_lm.generate_step`` (``single``): the raw single-stream speed
  (``queue_limit`` 1, a model whose caches cannot be batched, a prompt with media; and with
  ``queue_limit`` > 1 a request that finds nobody else waiting, if the model's caches can always
  be trimmed: when a second request arrives, the first moves into a batch mid-answer,
  ``single.Handoff``);
- continuous batching through mlx-lm's ``BatchGenerator`` (``batching.BatchRunner``):
  concurrent requests decode together, each with its own sampler, stop rules, cancellation and
  events.

Both reuse the KV cache of earlier prompts (``prompt_cache.PromptCache``) and report the
reused count as ``Usage.cached_tokens``; ``decode.RequestStream`` turns tokens into events.
This module decides which path a request takes and when; ``context.RunContext`` is all the two
paths see of it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import CancelledError, LibMlxError, QueueFullError
from . import single
from .batching import BatchRunner
from .context import RunContext
from .engine_options import EngineOptions
from .loader import LoadedModel
from .mlx_thread import MlxThread
from .prompt import RenderedPrompt
from .prompt_cache import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, PromptCache
from .request import Arrival, Generation, Job, SamplingParams
from .single import Handoff
from .stats import EngineStats, StatsRecorder

if TYPE_CHECKING:
    from .lockstep import Lockstep

log = logging.getLogger("lib_mlx.engine")

# How long the worker holds a request for others announced as on their way (their prompts are
# rendering), so that a burst of requests prefills as one batch. Only ever while another request
# is announced; a prompt renders in a few ms.
ARRIVAL_WAIT = 0.05


class Engine:
    """Owns the model's MLX work on a single worker thread, with a bounded queue.

    ``queue_limit`` bounds the requests in flight (running plus waiting; more than one turns
    batching on); ``prompt_cache_bytes`` the KV caches kept for reuse (0 turns reuse off);
    ``engine.prompt_cache`` is the live store (``clear()``); ``stats()`` what the engine did.
    """

    def __init__(
        self,
        loaded: LoadedModel,
        queue_limit: int = 1,
        *,
        prompt_cache_bytes: int = DEFAULT_MAX_BYTES,
        prompt_cache_entries: int = DEFAULT_MAX_ENTRIES,
        options: EngineOptions | None = None,
    ) -> None:
        self.loaded = loaded
        self.queue_limit = queue_limit
        # KV quantization, the disk prompt cache, speculation (``engine_options``).
        self.options = options if options is not None else EngineOptions()
        self.prompt_cache = PromptCache(prompt_cache_bytes, prompt_cache_entries, disk=self.options.disk)
        self._stats = StatsRecorder()
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._lock = threading.Lock()
        self._arrivals_changed = threading.Condition(self._lock)
        self._announced = 0  # open ``Arrival``s
        self._active: set[Generation] = set()
        self._closed = False
        self._ctx = RunContext(loaded, self.prompt_cache, self._stats, self._free_slot, self.options)
        self._current: Job | None = None  # the request the worker runs now (distributed only)
        if loaded.distributed is not None:
            self._ctx.lockstep = _lockstep(loaded, self.prompt_cache, self._stalled)
        _materialize(loaded.model)
        # A reused thread: MLX's per-thread streams outlive a thread of our own (``mlx_thread``).
        # A distributed rank (a process of its own, loaded once) keeps a plain thread: its
        # stalled-rank recovery was only verified there.
        name = f"lib_mlx-engine-{loaded.model_id}"
        if loaded.distributed is None:
            self._thread: MlxThread | threading.Thread = MlxThread(self._run, name=name)
        else:
            self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # public ----------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        """Requests running plus waiting."""
        with self._lock:
            return len(self._active)

    @property
    def kv_live_bytes(self) -> int:
        """Bytes of the running requests' KV caches (updated by the worker every few steps)."""
        return self._ctx.kv_live_bytes

    @property
    def announced(self) -> int:
        """Requests announced (``announce``) that have not reached ``submit`` yet."""
        with self._lock:
            return self._announced

    @property
    def failure(self) -> LibMlxError | None:
        """Why the model cannot generate any more (a distributed group that lost a rank)."""
        lockstep = self._ctx.lockstep
        return lockstep.failure if lockstep is not None else None

    def stats(self) -> EngineStats:
        """A snapshot of what the engine has done, and of its queue now."""
        with self._lock:
            now = {
                "queue_limit": self.queue_limit,
                "in_flight": len(self._active),
                "waiting": self._jobs.qsize(),
                "announced": self._announced,
            }
        return self._stats.snapshot(cache=self.prompt_cache.stats, **now)

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
        return Arrival(self._arrived)

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
            if self._ctx.lockstep is not None and self._ctx.lockstep.failure is not None:
                raise self._ctx.lockstep.failure
            if len(self._active) >= self.queue_limit:
                self._stats.count("rejected")
                raise QueueFullError()
            self._active.add(generation)
            self._jobs.put(Job(prompt, params, generation))  # queued before the worker wakes
        self._stats.count("requests")
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
        self.options.close()

    # worker ----------------------------------------------------------------------------
    def _run(self) -> None:
        backlog: collections.deque[Job | None] = collections.deque()
        ctx, jobs = self._ctx, self._jobs
        # On Apple silicon keep the model wired in memory while this worker lives, as
        # mlx_lm.stream_generate does around each generation (no-op elsewhere).
        old_wired_limit = _wire_model()
        lockstep = ctx.lockstep
        try:
            if lockstep is not None and not lockstep.info.is_leader:
                self._follow(lockstep)
                return
            while True:
                job = backlog.popleft() if backlog else jobs.get()
                if job is None:
                    return
                if lockstep is not None:
                    self._current = job
                    single.run(ctx, job)
                    self._current = None
                    _end_step(lockstep)
                    continue
                if not self._batching(job):
                    single.run(ctx, job)
                    continue
                self._await_announced()
                first: Job | Handoff | None = job
                if jobs.empty() and ctx.always_trimmable:
                    first = single.run(ctx, job, still_alone=jobs.empty)  # alone, until company comes
                if first is not None:
                    backlog.extend(BatchRunner(ctx, jobs, self.queue_limit).run(first))
                # Hold nothing of a finished request while waiting for the next one: a handed-over
                # request's own KV cache would otherwise stay alive until then.
                job = first = None
        finally:
            if lockstep is not None:
                lockstep.close()  # the other ranks stop with rank 0
            self.prompt_cache.clear()  # MLX arrays die on the thread that made them
            _unwire(old_wired_limit)

    def _follow(self, lockstep: Lockstep) -> None:
        """A rank other than 0: run rank 0's requests, step for step, until it stops."""
        while not self._closed:
            job = lockstep.follow()
            if job is None:
                return
            single.run(self._ctx, job)
            _end_step(lockstep)

    def follower_done(self, timeout: float | None = None) -> bool:
        """A rank other than 0: wait until rank 0 stops (or the group fails); whether it did."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _stalled(self, error: LibMlxError) -> None:
        """The watchdog's word that the other ranks stopped answering (on its thread): end the
        request the worker is stuck in and those waiting behind it; ``submit`` refuses new ones."""
        job = self._current
        if job is not None:
            self._ctx.fail_with(job, error)
        while True:  # the worker will not come back for the waiting ones either
            try:
                waiting = self._jobs.get_nowait()
            except queue.Empty:
                break
            if waiting is None:  # close() asked the worker to stop: leave the word for it
                self._jobs.put(None)
                break
            self._ctx.fail_with(waiting, error)

    def _await_announced(self) -> None:
        """Give requests announced as on their way (``announce``) up to ``ARRIVAL_WAIT`` to
        reach the queue: a burst then starts as one batch, every prompt in one prefill, where
        the first would otherwise prefill alone and the rest after its first token."""
        with self._lock:
            self._arrivals_changed.wait_for(lambda: self._announced <= 0 or self._closed, ARRIVAL_WAIT)

    def _batching(self, job: Job) -> bool:
        """Batch when more than one request may be in flight and both model and prompt allow."""
        return self.queue_limit > 1 and self._ctx.lockstep is None and self._ctx.batchable_model and job.batchable

    def _free_slot(self, job: Job) -> None:
        """Free the request's queue slot (idempotent); done before its last event goes out."""
        job.generation.finished.set()
        with self._lock:
            self._active.discard(job.generation)


def _lockstep(loaded: LoadedModel, prompt_cache: PromptCache, on_stall: Callable[[LibMlxError], None]) -> Lockstep:
    """How a sharded model's ranks keep in step. Each rank keeps its own prompt cache and must
    make the same decisions with it as rank 0 does: bytes per rank differ (a pipeline stage
    holds only its layers' KV), so the cache is bounded by its entry count alone."""
    from .lockstep import Lockstep

    info = loaded.distributed
    prompt_cache.max_bytes = prompt_cache.max_bytes and (1 << 62)
    lockstep = Lockstep(info, timeout_s=info.timeout_s)
    lockstep.on_stall(on_stall)
    return lockstep


def _end_step(lockstep: Lockstep) -> None:
    try:
        lockstep.end()
    except LibMlxError:
        pass  # the group is marked failed; later requests are refused with it


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



__all__ = ["ARRIVAL_WAIT", "Engine"]
