"""What a run of generation needs from the engine, and nothing more: the model, its prompt
cache, the model's cache rules, the request's sampler, and how a request ends (its queue slot
freed, its last events out, the statistics told).

The single stream (``single``) and the batch (``batching``) are each given a ``RunContext``;
neither sees the engine, its queue or its lock.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import LibMlxError
from .decode import RequestStream
from .engine_options import EngineOptions
from .events import Done, Failed, Usage
from .failures import generation_failure
from .loader import LoadedModel
from .prompt_cache import PromptCache, generation_prompt_tails, history_end, needs_checkpoints
from .request import Job, SamplingParams
from .sampling import Sampler, request_sampler
from .stats import StatsRecorder

if TYPE_CHECKING:
    from .lockstep import Lockstep


class RunContext:
    """One model's generation rules, shared by the engine's single and batched runs. Built on
    the worker's side; everything here runs on the worker thread."""

    def __init__(
        self,
        loaded: LoadedModel,
        prompt_cache: PromptCache,
        stats: StatsRecorder,
        free_slot: Callable[[Job], None],
        options: EngineOptions | None = None,
    ) -> None:
        self.loaded = loaded
        # KV quantization, the disk prompt cache, speculation (``engine_options``).
        self.options = options if options is not None else EngineOptions()
        self.kv = self.options.kv
        # Bytes of the running requests' KV caches (set by the runs, read by status).
        self.kv_live_bytes = 0
        self.prompt_cache = prompt_cache
        self.stats = stats
        self.free_slot = free_slot  # frees the request's queue slot (idempotent)
        # A model sharded over several processes: how its ranks keep in step (else None).
        self.lockstep: Lockstep | None = None

    # the model's caches ----------------------------------------------------------------
    def new_cache(self) -> list[Any]:
        """An empty KV cache for one request run alone (one entry per layer, of the kinds the
        model asks for, quantized where the load config says so: ``kv_quant``). The batch builds
        its own from these kinds (``batching``)."""
        from .kv_quant import make_cache

        return make_cache(self.loaded.model, self.kv)

    @functools.cached_property
    def model_caches(self) -> list[Any]:
        """A fresh cache of the model's kind, to read its layer types from (built once)."""
        return self.new_cache()

    @functools.cached_property
    def batchable_model(self) -> bool:
        """Whether the model's caches can be merged into a batch (text models only)."""
        cache = self.model_caches
        return self.loaded.vlm is None and bool(cache) and all(hasattr(c, "merge") for c in cache)

    @functools.cached_property
    def always_trimmable(self) -> bool:
        """Whether every layer's cache can always be trimmed (plain KV caches), which moving a
        running request into a batch needs."""
        return not needs_checkpoints(self.model_caches)

    @functools.cached_property
    def _tails(self) -> list[tuple[int, ...]]:
        return generation_prompt_tails(self.loaded.tokenizer)

    def checkpoint_at(self, tokens: list[int], reused: int) -> int | None:
        """Where to keep a checkpoint of this prompt's cache, if anywhere: at the end of the
        conversation, before the assistant's opening (``prompt_cache.history_end``), for models
        whose caches cannot be trimmed back there once generation has run
        (``prompt_cache.needs_checkpoints``); trimmable caches get the same from the final entry."""
        if not self.prompt_cache.enabled or self.always_trimmable:
            return None
        at = history_end(tokens, self._tails)
        return at if at > reused else None

    # a request -------------------------------------------------------------------------
    def sampler(self, params: SamplingParams) -> Sampler:
        return request_sampler(self.loaded, params)

    def stream(self, job: Job, *, n_prompt: int | None = None, cached_tokens: int = 0) -> RequestStream:
        """The request's token-to-events stream; it ends the request through ``finish``."""
        return RequestStream(job, self.loaded, n_prompt=n_prompt, cached_tokens=cached_tokens, release=self.finish)

    def finish(self, job: Job, done: Done) -> None:
        """Free the request's queue slot and count it; before ``done`` goes out, so that a
        client may send its next request the moment it sees the end."""
        self.free_slot(job)
        self.stats.done(done)

    def cancelled_before_start(self, job: Job) -> None:
        done = Done("cancelled", Usage(len(job.prompt.tokens)))
        self.finish(job, done)
        job.generation.deliver([done])

    def fail(self, job: Job, exc: BaseException) -> None:
        """End the request with ``Failed`` (the worker goes on)."""
        if self.lockstep is not None:
            exc = self.lockstep.request_failed(exc)
        self.fail_with(job, generation_failure(exc))

    def fail_with(self, job: Job, error: LibMlxError) -> None:
        """End the request with ``Failed(error)``, an error already classified."""
        self.free_slot(job)
        self.stats.count("failed")
        job.generation.deliver([Failed(error)])


__all__ = ["RunContext"]
