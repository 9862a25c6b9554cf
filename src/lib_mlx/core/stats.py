"""What the engine has done, as a value: ``EngineStats``, a frozen snapshot of counters and
timings that tests, benchmarks and ``server_status`` read (``MlxCore.stats()``).

The worker thread records into a ``StatsRecorder`` (plain integer and float updates, a few a
request and one a batch step; nothing per token on the single-stream path); any thread takes a
snapshot.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .events import Done
    from .prompt_cache import CacheStats

RECENT_STEPS = 256


@dataclass(frozen=True)
class StepRecord:
    """One stretch of generation work: a batch step (``kind`` "batch": prompt pieces processed,
    tokens produced, requests in the batch), the start of a batch run (``kind`` "batch_start":
    ``prompts`` requests admitted together before its first step) or a request's run alone
    (``kind`` "alone"; ``tokens`` is how many it produced there, ``handed_off`` whether it then
    moved into a batch)."""

    kind: str
    start: float  # time.perf_counter()
    seconds: float
    prompts: int = 0
    tokens: int = 0
    decoding: int = 0
    handed_off: bool = False


@dataclass(frozen=True)
class EngineStats:
    """Counters since the engine started, and its queue now."""

    # requests
    requests: int = 0  # accepted by submit
    rejected: int = 0  # refused: queue full
    finished: int = 0  # ended with Done, whatever the reason
    cancelled: int = 0  # of those, ended by cancellation
    failed: int = 0  # ended with Failed
    # the queue now
    queue_limit: int = 0
    in_flight: int = 0  # running plus waiting
    waiting: int = 0  # queued, not picked up by the worker yet
    announced: int = 0  # on their way (prompt rendering), see ``Engine.announce``
    # tokens
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens reused from the prompt cache
    completion_tokens: int = 0
    # the prompt cache
    prompt_cache_hits: int = 0
    prompt_cache_misses: int = 0
    prompt_cache_reused_tokens: int = 0
    prompt_cache_entries: int = 0
    prompt_cache_bytes: int = 0
    # how requests ran
    single_runs: int = 0  # requests that ran (or began) alone
    handoffs: int = 0  # of those, moved into a batch mid-answer
    batch_runs: int = 0  # runs of continuous batching (first request until the batch is empty)
    batch_steps: int = 0
    batch_tokens: int = 0  # tokens produced by batch steps (mean batch size: tokens / steps)
    max_batch_size: int = 0  # most requests decoding in one step
    # timings (seconds, summed over requests / steps)
    prefill_seconds: float = 0.0  # prompt processing up to the first token (Timings.prompt_seconds)
    decode_seconds: float = 0.0  # first to last token (Timings.decode_seconds)
    step_seconds: float = 0.0  # inside batch steps
    recent_steps: tuple[StepRecord, ...] = field(default=(), repr=False)

    @property
    def mean_batch_size(self) -> float:
        return self.batch_tokens / self.batch_steps if self.batch_steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (without ``recent_steps``)."""
        body = asdict(self)
        body.pop("recent_steps")
        body["mean_batch_size"] = self.mean_batch_size
        return body


class StatsRecorder:
    """The engine's running counters. Written by the worker (and ``submit``), read anywhere."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = collections.defaultdict(int)
        self._steps: collections.deque[StepRecord] = collections.deque(maxlen=RECENT_STEPS)

    def count(self, name: str, n: float = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def done(self, done: "Done") -> None:
        """A request ended with ``done``."""
        usage, timings = done.usage, done.timings
        with self._lock:
            c = self._counts
            c["finished"] += 1
            if done.finish_reason == "cancelled":
                c["cancelled"] += 1
            c["prompt_tokens"] += usage.prompt_tokens
            c["cached_tokens"] += usage.cached_tokens
            c["completion_tokens"] += usage.completion_tokens
            if timings is not None:
                c["prefill_seconds"] += timings.prompt_seconds
                c["decode_seconds"] += timings.decode_seconds

    def step(self, start: float, *, prompts: int, tokens: int, decoding: int) -> None:
        """A batch step that began at ``start`` ended now."""
        seconds = time.perf_counter() - start
        with self._lock:
            c = self._counts
            c["batch_steps"] += 1
            c["batch_tokens"] += tokens
            c["step_seconds"] += seconds
            if decoding > c["max_batch_size"]:
                c["max_batch_size"] = decoding
            self._steps.append(StepRecord("batch", start, seconds, prompts, tokens, decoding))

    def batch_start(self, requests: int) -> None:
        """A batch run begins with ``requests`` admitted together."""
        with self._lock:
            self._counts["batch_runs"] += 1
            self._steps.append(StepRecord("batch_start", time.perf_counter(), 0.0, prompts=requests))

    def alone(self, start: float, *, tokens: int, handed_off: bool) -> None:
        """A request's run alone, begun at ``start``, ended now."""
        seconds = time.perf_counter() - start
        with self._lock:
            self._counts["handoffs"] += handed_off
            self._steps.append(StepRecord("alone", start, seconds, tokens=tokens, handed_off=handed_off))

    def snapshot(self, *, cache: "CacheStats", **now: int) -> EngineStats:
        with self._lock:
            counts = dict(self._counts)
            steps = tuple(self._steps)
        ints = {k: int(v) for k, v in counts.items() if not k.endswith("_seconds")}
        floats = {k: float(v) for k, v in counts.items() if k.endswith("_seconds")}
        return EngineStats(
            **ints,
            **floats,
            **now,
            prompt_cache_hits=cache.hits,
            prompt_cache_misses=cache.misses,
            prompt_cache_reused_tokens=cache.reused_tokens,
            prompt_cache_entries=cache.entries,
            prompt_cache_bytes=cache.nbytes,
            recent_steps=steps,
        )


__all__ = ["EngineStats", "StatsRecorder", "StepRecord"]
