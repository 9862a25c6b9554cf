"""Continuous batching of concurrent requests through mlx-lm's ``BatchGenerator``.

The engine hands a ``BatchRunner`` its first batchable request (or one that began alone and
is moving over, a ``Handoff``); the runner then admits every request that arrives while others
are running, steps them together (one forward pass per token for the whole batch, prompts
prefilled alongside), and returns when none is left. Per request:
its own sampler and logits processors, its token budget, cancellation checked at every step
(also during the prompt), its events through its own ``RequestStream``, and its prompt-cache
hit in and final cache out (plus the prompt-end checkpoint where the model needs one).

A request that cannot join a batch (media in the prompt) ends admission: the running batch
finishes, and the engine runs that request alone, keeping arrival order.

Requests already waiting when a run starts (a burst: the engine holds the first for those the
server announced, ``Engine.announce``) join its first prefill. On CUDA, where MLX builds kernels
per KV-buffer layout, the batch's buffers are kept to whole steps (``round_batch_buffers``, and
only whole steps of a reused or handed-over cache), so that requests joining and leaving do not
stall everyone's decoding with kernel builds.
"""

from __future__ import annotations

import logging
import queue
import time
from dataclasses import dataclass
from typing import Any

from .context import RunContext
from .decode import RequestStream
from .failures import generation_failure, recover_after_failure
from .kv_quant import quantize_layer
from .prompt_cache import CacheHit, cache_length, layouts_compile, round_batch_buffers, whole_step_prefix
from .request import Job
from .sampling import max_new_tokens
from .single import Handoff

log = logging.getLogger("lib_mlx.engine")

PREFILL_STEP = 2048
MAX_PREFILL_BATCH = 8
MAX_DEFERRALS = 4  # steps a newcomer may wait for the requests before it to start answering


@dataclass
class _Sequence:
    job: Job
    stream: RequestStream
    checkpoint: bool  # keep a checkpoint when its first prompt segment is done


class BatchRunner:
    """One run of continuous batching, from a first request until the batch is empty.

    ``jobs`` is the engine's queue (``None`` in it is the engine's stop marker); ``limit`` the
    most requests in one batch (the engine's ``queue_limit``)."""

    def __init__(self, ctx: RunContext, jobs: "queue.Queue[Job | None]", limit: int) -> None:
        self.ctx = ctx
        self.jobs = jobs
        self.limit = max(limit, 1)
        self.loaded = ctx.loaded
        self.store = ctx.prompt_cache
        self.active: dict[int, _Sequence] = {}
        self.awaiting_first: set[int] = set()  # admitted, no token yet
        self.deferrals = 0
        self.leftovers: list[Job | None] = []
        self.generator: Any = None
        # On CUDA, keep the KV buffers to lengths the kernels were built for (see
        # ``prompt_cache.reserve``), at the price of re-running part of a step of tokens.
        self.layouts_compile = layouts_compile()
        self.whole_steps = self.layouts_compile and ctx.always_trimmable
        # KV quantization (``kv_quant``): the batch's layers share buffers, so the whole batch
        # turns quantized once its longest row holds ``kv.start`` tokens (from the start when
        # that is 0), and every cache that joins it afterwards is quantized on the way in.
        self.kv = ctx.kv
        self.kv_on = self.kv is not None and self.kv.start == 0
        self.steps = 0

    def run(self, first: Job | Handoff) -> list[Job | None]:
        """Serve ``first`` and everything batchable that arrives meanwhile. Returns the queued
        items this run did not take (a request to run alone, the engine's stop marker)."""
        self.generator = self._new_generator()
        try:
            if isinstance(first, Handoff):
                self._take_over(first)
            else:
                self._admit(first)
            self._admit_waiting(defer=False)  # a burst: whoever came with the first prefills with it
            log.debug("a batch starts with %d requests", len(self.active))
            self.ctx.stats.batch_start(len(self.active))
            while True:
                self._admit_waiting()
                self._drop_cancelled()
                if not self.active:
                    break
                t_step = time.perf_counter()
                prompt_responses, responses = self.generator.next()
                self.ctx.stats.step(t_step, prompts=len(prompt_responses), tokens=len(responses), decoding=len(self.active))
                self._round_buffers()
                self._watch_kv()
                for r in prompt_responses:
                    if r.end_of_segment and not r.end_of_prompt:
                        self._checkpoint(r.uid)
                if responses:
                    self._tokens(responses)
        except BaseException as exc:  # noqa: BLE001 - fail the batch, keep the worker
            log.exception("batched generation failed")
            error = generation_failure(exc)
            for seq in self.active.values():
                self.ctx.fail_with(seq.job, error)
            self.active.clear()
            recover_after_failure()
        finally:
            self.generator.close()
            self.generator = None
            self.ctx.kv_live_bytes = 0
        return self.leftovers

    def _new_generator(self) -> Any:
        """mlx-lm's batch for this run: up to ``limit`` requests decoding together, prompts
        prefilled in chunks of ``PREFILL_STEP`` tokens, ``MAX_PREFILL_BATCH`` at a time."""
        from mlx_lm.generate import BatchGenerator

        return BatchGenerator(
            self.loaded.model,
            completion_batch_size=self.limit,
            prefill_batch_size=min(self.limit, MAX_PREFILL_BATCH),
            prefill_step_size=PREFILL_STEP,
        )

    def _batches(self) -> list[Any]:
        gen = self.generator
        return [b for b in (getattr(gen, "_generation_batch", None), getattr(gen, "_prompt_batch", None)) if b is not None]

    def _watch_kv(self) -> None:
        """Quantize the batch when its longest row reaches ``kv.start``; keep the live KV
        bytes for status (every 16 steps: a sum over the layers)."""
        self.steps += 1
        if self.kv is not None and not self.kv_on:
            longest = max((cache_length(seq[3]) or 0 for seq in self.generator._unprocessed_sequences), default=0)
            for batch in self._batches():
                for layer in batch.prompt_cache or ():
                    offset = getattr(layer, "offset", None)
                    if offset is not None and not isinstance(offset, int) and offset.size:
                        longest = max(longest, int(offset.max().item()))
                    break
            if longest >= self.kv.start:
                self._quantize_all()
        if self.steps % 16 == 1:
            self.ctx.kv_live_bytes = self.generator.prompt_cache_nbytes

    def _quantize_all(self) -> None:
        self.kv_on = True
        for batch in self._batches():
            if batch.prompt_cache:
                batch.prompt_cache[:] = [quantize_layer(layer, self.kv) for layer in batch.prompt_cache]
        for seq in self.generator._unprocessed_sequences:
            seq[3][:] = [quantize_layer(layer, self.kv) for layer in seq[3]]
        log.debug("the batch's KV caches are quantized from here on")

    def _joining(self, cache: list[Any]) -> list[Any]:
        """A cache about to join the batch, in the batch's KV form (see ``kv_on``); one that
        comes quantized or past ``kv.start`` turns the batch quantized."""
        if self.kv is None:
            return cache
        if not self.kv_on:
            quantized = any(hasattr(layer, "bits") for layer in cache)
            if quantized or (cache_length(cache) or 0) >= self.kv.start:
                self._quantize_all()
        if self.kv_on:
            cache[:] = [quantize_layer(layer, self.kv) for layer in cache]
        return cache

    def _round_buffers(self) -> None:
        gen = self.generator
        for batch in (getattr(gen, "_generation_batch", None), getattr(gen, "_prompt_batch", None)):
            round_batch_buffers(getattr(batch, "prompt_cache", None) or ())

    # admission ------------------------------------------------------------------------
    def _admit_waiting(self, *, defer: bool = True) -> None:
        """Take in the requests that arrived -- with ``defer``, after the requests already
        admitted have their first token (for at most ``MAX_DEFERRALS`` steps). mlx-lm's batch
        runs a newcomer's prompt in the same step as everyone's next token, and pads prompt
        pieces to the longest: a request admitted moments after another would hold back that
        one's first token for its own prompt and pad the other's last few prompt tokens out to
        its whole prompt. Without ``defer`` (a run's start: none has begun its prompt yet) they
        all prefill together."""
        jobs = self.jobs
        if jobs.empty():
            return
        if defer and self.awaiting_first and self.deferrals < MAX_DEFERRALS:
            self.deferrals += 1
            return
        self.deferrals = 0
        while not self.leftovers and not jobs.empty():
            job = jobs.get_nowait()
            if job is None or not job.batchable:
                self.leftovers.append(job)
                return
            self._admit(job)

    def _admit(self, job: Job) -> None:
        ctx = self.ctx
        if job.generation.cancelled:
            ctx.cancelled_before_start(job)
            return
        try:
            loaded, params = self.loaded, job.params
            tokens = list(job.prompt.tokens)
            hit = self.store.fetch(tokens) if self.store.enabled else None
            if hit is not None and self.layouts_compile:
                hit = whole_steps_of(hit) if self.whole_steps else at_least_a_step(hit)
            reused = hit.reused if hit is not None else 0
            stream = ctx.stream(job, cached_tokens=reused)
            at = ctx.checkpoint_at(tokens, reused)
            segments = [tokens[reused:]] if at is None else [tokens[reused:at], tokens[at:]]
            (uid,) = self.generator.insert_segments(
                [segments],
                max_tokens=[max_new_tokens(loaded, len(tokens), params.max_tokens)],
                caches=[self._joining(hit.cache if hit is not None else self.ctx.new_cache())],
                all_tokens=[tokens[:reused]],
                samplers=[ctx.sampler(params)],
                logits_processors=[stream.processors],
            )
        except BaseException as exc:  # noqa: BLE001 - this request fails, the batch goes on
            log.exception("could not start a batched generation")
            ctx.fail(job, exc)
            return
        self.active[uid] = _Sequence(job, stream, checkpoint=at is not None)
        self.awaiting_first.add(uid)

    def _take_over(self, handoff: Handoff) -> None:
        job = handoff.job
        held, refeed = handoff.tokens, []
        if self.whole_steps:  # the batch copies the cache into a buffer of its exact length
            keep = _cut_to_whole_steps(handoff.cache, len(held))
            held, refeed = held[:keep], held[keep:]
        try:
            (uid,) = self.generator.insert_segments(
                [[refeed + [handoff.last]]],
                max_tokens=[handoff.remaining],
                caches=[self._joining(handoff.cache)],
                all_tokens=[held],
                samplers=[handoff.sampler],
                logits_processors=[handoff.stream.processors],
            )
        except BaseException as exc:  # noqa: BLE001 - this request fails, the batch goes on
            log.exception("could not move a generation into a batch")
            self.ctx.fail(job, exc)
            return
        self.active[uid] = _Sequence(job, handoff.stream, checkpoint=False)

    # per step --------------------------------------------------------------------------
    def _checkpoint(self, uid: int) -> None:
        seq = self.active.get(uid)
        if seq is None or not seq.checkpoint:
            return
        seq.checkpoint = False  # the first segment ends at the checkpoint; later ones do not
        for cache, tokens in self.generator.extract_cache([uid]).values():
            self.store.insert(list(tokens), cache)

    def _drop_cancelled(self) -> None:
        gone = [uid for uid, seq in self.active.items() if seq.job.generation.cancelled]
        if gone:
            self._finish(gone, {uid: "cancelled" for uid in gone})

    def _tokens(self, responses: list[Any]) -> None:
        ended: dict[int, str] = {}
        done_by_generator: list[Any] = []
        active = self.active
        self.awaiting_first.difference_update(r.uid for r in responses)
        for r in responses:
            seq = active.get(r.uid)
            if seq is None:
                continue
            try:
                reason = seq.stream.add(r.token, r.logprobs)
            except Exception as exc:  # noqa: BLE001 - this request fails, the batch goes on
                self._fail(r.uid, exc, in_batch=r.finish_reason is None)
                continue
            if r.finish_reason is not None:  # its token budget: already out of the batch
                done_by_generator.append(r)
                ended[r.uid] = reason or "length"
            elif reason is not None:
                ended[r.uid] = reason
        for r in done_by_generator:
            self._complete(r.uid, ended.pop(r.uid), r.prompt_cache, r.all_tokens)
        if ended:
            self._finish(list(ended), ended)

    def _fail(self, uid: int, exc: Exception, *, in_batch: bool) -> None:
        log.exception("a batched generation failed")
        if in_batch:
            self.generator.remove([uid])
        self.awaiting_first.discard(uid)
        seq = self.active.pop(uid)
        self.ctx.fail(seq.job, exc)

    def _finish(self, uids: list[int], reasons: dict[int, str]) -> None:
        """Take ``uids`` out of the batch (with their caches, for reuse) and end them."""
        keep = self.store.enabled
        caches = self.generator.remove(uids, return_prompt_caches=keep)
        for uid in uids:
            cache, tokens = caches.get(uid, (None, None))
            self._complete(uid, reasons[uid], cache, tokens)

    def _complete(self, uid: int, reason: str, cache: Any, tokens: Any) -> None:
        self.awaiting_first.discard(uid)
        seq = self.active.pop(uid)
        try:
            seq.stream.finish(reason)
        except Exception as exc:  # noqa: BLE001 - the request fails; the cache is still good
            log.exception("a batched generation failed at its end")
            self.ctx.fail(seq.job, exc)
        if cache is not None and tokens is not None and self.store.enabled:
            self.store.insert(list(tokens), cache)


def _cut_to_whole_steps(cache: list[Any], held: int) -> int:
    """Trim a (trimmable) cache holding ``held`` tokens back to whole cache steps
    (``prompt_cache.whole_step_prefix``); returns how many tokens it keeps."""
    from mlx_lm.models.cache import trim_prompt_cache

    keep = whole_step_prefix(held)
    trim_prompt_cache(cache, held - keep)
    return keep


def whole_steps_of(hit: CacheHit) -> CacheHit | None:
    """The hit cut back to whole cache steps; None when less than a step was reused."""
    keep = _cut_to_whole_steps(hit.cache, hit.reused)
    return CacheHit(hit.cache, keep) if keep else None


def at_least_a_step(hit: CacheHit) -> CacheHit | None:
    """For caches that cannot be cut back to whole steps (sliding windows): the hit if it
    holds at least a step of tokens. Less saves a GPU nothing (a forward pass costs about the
    same for 10 tokens as for 200) and lands the batch on a buffer length of its own."""
    return hit if whole_step_prefix(hit.reused) > 0 else None
