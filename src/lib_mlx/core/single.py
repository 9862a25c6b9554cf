"""One request alone, through ``mlx_lm.generate_step``: the raw single-stream speed.

Its prompt-cache hit in (and the prompt-end checkpoint where the model needs one), its tokens
out through its ``RequestStream``, its final cache back into the store. Run with
``still_alone``, it stops as soon as another request waits and returns a ``Handoff``: the
request then moves into a batch (``batching.BatchRunner``) mid-answer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .context import RunContext
from .decode import RequestStream
from .failures import recover_after_failure
from .kv_quant import maybe_quantize
from .prompt_cache import cache_length, cache_nbytes, reserve
from .request import Job
from .sampling import Sampler, max_new_tokens, rewind, with_prefix
from .vlm import prompt_inputs

log = logging.getLogger("lib_mlx.engine")

PREFILL_STEP = 2048  # generate_step's own prefill chunk


@dataclass
class Handoff:
    """A request that began alone and moves into a batch because another arrived: its cache
    holds the prompt and every generated token but the last, which the batch feeds again to
    sample what follows (the single stream's look-ahead step is discarded)."""

    job: Job
    stream: RequestStream
    cache: list[Any]
    tokens: list[int]  # what the cache holds
    last: int
    remaining: int  # tokens still allowed
    sampler: Sampler


def run(ctx: RunContext, job: Job, *, still_alone: Callable[[], bool] | None = None) -> Handoff | None:
    """Serve ``job`` alone to its end, or -- with ``still_alone`` -- until another request
    waits (then the ``Handoff``). Never raises: a failure ends the request with ``Failed``."""
    handoff = None
    try:
        if job.generation.cancelled:
            ctx.cancelled_before_start(job)
        else:
            handoff = _generate(ctx, job, still_alone)
    except BaseException as exc:  # noqa: BLE001 - the worker must survive anything
        ctx.fail(job, exc)
        log.exception("generation failed")
        recover_after_failure()
    finally:
        if handoff is None:
            ctx.free_slot(job)
    return handoff


def _generate(ctx: RunContext, job: Job, still_alone: Callable[[], bool] | None) -> Handoff | None:
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    t_start = time.perf_counter()
    ctx.stats.count("single_runs")
    lockstep = ctx.lockstep
    if lockstep is not None:
        lockstep.begin(job)  # rank 0 hands the request to the other ranks (and seeds it)
    loaded, params = ctx.loaded, job.params
    inputs = prompt_inputs(loaded, job.prompt)
    tokens = inputs.tokens
    n_prompt = len(tokens)
    store = ctx.prompt_cache if (inputs.cacheable and ctx.prompt_cache.enabled) else None
    hit = store.fetch(tokens) if store is not None else None
    cache = hit.cache if hit is not None else ctx.new_cache()
    reused = hit.reused if hit is not None else 0
    kv = ctx.kv
    if hit is not None:
        maybe_quantize(cache, kv)
        reserve(cache, n_prompt - reused)
    stream = ctx.stream(job, n_prompt=n_prompt, cached_tokens=reused)

    start = reused  # generate_step gets tokens[start:] with the cache holding the rest
    if store is not None and (at := ctx.checkpoint_at(tokens, reused)) is not None:
        prefill(loaded.model, tokens[reused:at], cache)
        store.insert(tokens[:at], cache, snapshot=True)
        start = at

    max_tokens = max_new_tokens(loaded, n_prompt, params.max_tokens)
    sampler = ctx.sampler(params)
    processors = stream.processors
    # Speculative decoding (``speculative``) for a request alone; never with media, nor across
    # ranks kept in step (each rank must run the very forward passes rank 0 runs), nor with
    # logits processors (a grammar mask or a penalty keeps state per accepted token, which a
    # verify pass over several drafted positions would advance and then have to take back).
    plain = not inputs.step_kwargs and lockstep is None and not processors
    speculation = ctx.options.speculation if plain else None
    if speculation is not None:
        steps = _speculative_steps(speculation, loaded.model, tokens, start, cache, sampler, processors, max_tokens, kv)
    elif start > reused:  # a checkpoint took the history: the tail needs one pass, not two
        steps = _steps_after_checkpoint(loaded.model, tokens, start, cache, sampler, processors, max_tokens)
    else:
        steps = generate_step(
            mx.array(tokens[start:]),
            loaded.model,
            max_tokens=max_tokens,
            sampler=sampler,
            logits_processors=with_prefix(processors, tokens[:start]),
            prompt_cache=cache,
            **inputs.step_kwargs,
        )
    fed: list[int] = []  # every token the model has taken in after the prompt
    reason = "length"
    alone = still_alone if not inputs.step_kwargs else None
    # KV quantization from ``kv.start`` tokens on: converted between steps (mlx-lm's rule,
    # applied here so that layers without a quantized form are left as they are).
    quantize_at = kv.start if kv is not None and kv.start > 0 else None
    try:
        add = stream.add
        for token, logprobs in steps:
            fed.append(token)
            if quantize_at is not None and n_prompt + len(fed) >= quantize_at:
                maybe_quantize(cache, kv)
                quantize_at = None
            if len(fed) % 64 == 1:
                ctx.kv_live_bytes = cache_nbytes(cache)
            finished = add(token, logprobs)
            if lockstep is not None:
                # Every rank runs the forward passes rank 0 runs: it alone decides the end.
                if lockstep.agree(finished is None):
                    continue
                reason = finished or "cancelled"
                break
            if finished is not None:
                reason = finished
                break
            if alone is not None and not alone() and len(fed) < max_tokens:
                held = cache_length(cache)
                if held is not None and held >= len(tokens) + len(fed) - 1:
                    reason = "handoff"
                    break
    finally:
        steps.close()
        ctx.kv_live_bytes = 0
    if reason == "handoff":
        # generate_step's look-ahead step already fed the last token and sampled the next (a
        # speculative step may hold accepted draft tokens past it): cut the cache back to all
        # but the last token (and that draw out of a seeded sampler); the batch feeds it again.
        from mlx_lm.models.cache import trim_prompt_cache

        trim_prompt_cache(cache, cache_length(cache) - (len(tokens) + len(fed) - 1))
        log.debug("generation %d moves into a batch after %d tokens", job.generation.id, len(fed))
        if speculation is None:
            rewind(sampler)
        ctx.stats.alone(t_start, tokens=len(fed), handed_off=True)
        return Handoff(job, stream, cache, tokens + fed[:-1], fed[-1], max_tokens - len(fed), sampler)
    stream.finish(reason)
    ctx.stats.alone(t_start, tokens=stream.n_generated, handed_off=False)
    if store is not None:
        store.insert(tokens + fed, cache)
    return None


def _speculative_steps(
    speculation: Any,
    model: Any,
    tokens: list[int],
    start: int,
    cache: list[Any],
    sampler: Sampler,
    processors: tuple[Callable[..., Any], ...],
    max_tokens: int,
    kv: Any,
) -> Iterator[tuple[int, Any]]:
    """``generate_step``'s (token, logprobs) through speculative decoding, the cache holding
    ``tokens[:start]``; adds the request's drafted/accepted counts to the model's."""
    from .speculative import SpeculativeStats, draft_model_generate_step, prompt_lookup_generate_step

    stats = SpeculativeStats()
    common: dict[str, Any] = dict(
        history=tokens[:start],
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=processors,
        num_draft_tokens=speculation.num_draft_tokens,
        kv=kv,
        stats=stats,
    )
    if speculation.mode == "draft":
        steps = draft_model_generate_step(tokens[start:], model, speculation.draft_model, cache, **common)
    else:
        steps = prompt_lookup_generate_step(tokens[start:], model, cache, ngram=speculation.ngram, **common)
    try:
        for token, logprobs, _ in steps:
            yield token, logprobs
    finally:
        steps.close()
        speculation.stats.add(stats)


def prefill(model: Any, tokens: list[int], cache: list[Any], step: int = PREFILL_STEP) -> None:
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
    sampler: Sampler,
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


__all__ = ["Handoff", "prefill", "run"]
