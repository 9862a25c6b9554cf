"""Speculative decoding for one stream: a draft model (mlx-lm's ``speculative_generate_step``)
or prompt lookup (n-gram drafts from the prompt and the output so far, no second model).

Both verify a draft of ``k`` tokens with one forward pass of the target model over
``[last, *draft]`` and keep the longest prefix of the draft that the target itself samples at
each position, plus the target's own token where they part (mlx-lm's acceptance rule). Under
greedy decoding the output is the plain greedy output, token for token; with a temperature each
token is drawn from the target's own distribution (for prompt lookup's fixed drafts this rule
is exact rejection sampling: a draft token ``d`` is kept with probability ``p(d)``, and a
rejection draws from ``p`` without ``d``). Caches must be trimmable (the rejected tail is
trimmed off), so models with sliding windows run without speculation.

A batch never speculates: a request that has a batch to join runs in it without speculation
(``Engine`` decides), so speculation never turns batching off for anyone else.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from .kv_quant import KVQuantization, maybe_quantize

DEFAULT_DRAFT_TOKENS = 4
DEFAULT_NGRAM = 3


@dataclass
class SpeculativeStats:
    """Drafted and accepted tokens (one request's, or summed over requests)."""

    drafted: int = 0
    accepted: int = 0
    steps: int = 0  # target forward passes after the prompt
    emitted: int = 0

    @property
    def acceptance(self) -> float:
        return self.accepted / self.drafted if self.drafted else 0.0

    def add(self, other: "SpeculativeStats") -> None:
        self.drafted += other.drafted
        self.accepted += other.accepted
        self.steps += other.steps
        self.emitted += other.emitted


class NgramDrafter:
    """Prompt-lookup drafts: the tokens that followed the most recent earlier occurrence of the
    last ``n`` tokens (longest ``n`` first, down to ``n_min``). Each appended token costs
    ``n_max - n_min + 1`` dictionary writes; a draft costs as many reads."""

    def __init__(self, tokens: Sequence[int], n_max: int = DEFAULT_NGRAM, n_min: int = 1) -> None:
        self.n_max, self.n_min = n_max, n_min
        self.tokens: list[int] = []
        # n -> n-gram -> where its most recent occurrence (that has a follower) ends
        self.index: dict[int, dict[tuple[int, ...], int]] = {n: {} for n in range(n_min, n_max + 1)}
        for t in tokens:
            self.append(t)

    def append(self, token: int) -> None:
        tokens, end = self.tokens, len(self.tokens)
        for n, table in self.index.items():
            if end >= n:
                table[tuple(tokens[end - n :])] = end
        tokens.append(token)

    def draft(self, k: int) -> list[int]:
        if k <= 0:
            return []
        tokens, end = self.tokens, len(self.tokens)
        for n in range(self.n_max, self.n_min - 1, -1):
            if end < n:
                continue
            at = self.index[n].get(tuple(tokens[end - n :]))
            if at is not None:
                return tokens[at : at + k]
        return []


def prompt_lookup_generate_step(
    prompt: Sequence[int],
    model: Any,
    cache: list[Any],
    *,
    history: Sequence[int] = (),
    max_tokens: int = 256,
    sampler: Callable[[mx.array], mx.array] | None = None,
    logits_processors: Sequence[Callable[..., Any]] = (),
    num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    ngram: int = DEFAULT_NGRAM,
    kv: KVQuantization | None = None,
    stats: SpeculativeStats | None = None,
    prefill_step_size: int = 2048,
) -> Iterator[tuple[int, mx.array, bool]]:
    """Like ``generate_step``: yields (token, logprobs, drafted) for ``prompt`` given a
    ``cache`` that already holds ``history`` (a reused prefix). Logits processors see the whole
    history, prompt and output so far."""
    from mlx_lm.generate import generation_stream
    from mlx_lm.models.cache import trim_prompt_cache

    if not prompt:
        raise ValueError("an empty prompt")
    sampler = sampler or (lambda x: mx.argmax(x, axis=-1))
    stats = stats if stats is not None else SpeculativeStats()
    context = list(history) + list(prompt)
    drafter = NgramDrafter(context, n_max=ngram)

    def verify(inputs: list[int]) -> tuple[list[int], mx.array]:
        logits = model(mx.array(inputs)[None], cache=cache)[0]  # (L, V)
        if logits_processors:
            rows = []  # position i follows context (which ends with inputs[0]) + draft[:i]
            for i in range(len(inputs)):
                row = logits[i : i + 1]
                seen = mx.array(context + inputs[1 : i + 1])
                for processor in logits_processors:
                    row = processor(seen, row)
                rows.append(row)
            logits = mx.concatenate(rows, axis=0)
        maybe_quantize(cache, kv)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        sampled = sampler(logprobs)
        mx.eval(sampled, logprobs)
        return sampled.tolist(), logprobs

    with mx.stream(generation_stream):
        head = list(prompt[:-1])
        for start in range(0, len(head), prefill_step_size):
            model(mx.array(head[start : start + prefill_step_size])[None], cache=cache)
            maybe_quantize(cache, kv)
            mx.eval([c.state for c in cache])
        if head:
            mx.clear_cache()
        y = prompt[-1]
        produced = 0
        while produced < max_tokens:
            draft = drafter.draft(min(num_draft_tokens, max_tokens - produced - 1))
            tokens, logprobs = verify([y, *draft])
            stats.steps += 1
            stats.drafted += len(draft)
            n = 0
            while n < len(draft) and tokens[n] == draft[n]:
                n += 1
            stats.accepted += n
            trim_prompt_cache(cache, len(draft) - n)
            for i in range(n + 1):
                token = tokens[i]
                drafter.append(token)
                context.append(token)
                produced += 1
                stats.emitted += 1
                yield token, logprobs[i], i < n
                if produced >= max_tokens:
                    return
            y = tokens[n]
            if stats.steps % 256 == 0:
                mx.clear_cache()


def draft_model_generate_step(
    prompt: Sequence[int],
    model: Any,
    draft_model: Any,
    cache: list[Any],
    *,
    history: Sequence[int] = (),
    max_tokens: int = 256,
    sampler: Callable[[mx.array], mx.array] | None = None,
    logits_processors: Sequence[Callable[..., Any]] = (),
    num_draft_tokens: int = DEFAULT_DRAFT_TOKENS,
    kv: KVQuantization | None = None,
    stats: SpeculativeStats | None = None,
) -> Iterator[tuple[int, mx.array, bool]]:
    """mlx-lm's ``speculative_generate_step`` for ``prompt`` given a target ``cache`` that
    already holds ``history``: the draft model's own cache is built here (it runs ``history``
    first, being small). Yields (token, logprobs, drafted)."""
    from mlx_lm.generate import generation_stream, speculative_generate_step
    from mlx_lm.models.cache import make_prompt_cache

    from .sampling import with_prefix

    from .kv_quant import quantize_layer

    stats = stats if stats is not None else SpeculativeStats()
    draft_cache = make_prompt_cache(draft_model)
    if kv is not None:
        # Quantized from the first token here: mlx-lm's step would convert layers in a list of
        # its own, leaving ``cache`` (which the prompt cache keeps) behind.
        cache[:] = [quantize_layer(c, kv) for c in cache]
        draft_cache = [quantize_layer(c, kv) for c in draft_cache]
    if history:
        with mx.stream(generation_stream):
            for start in range(0, len(history), 2048):
                draft_model(mx.array(list(history[start : start + 2048]))[None], cache=draft_cache)
                mx.eval([c.state for c in draft_cache])
    steps = speculative_generate_step(
        mx.array(list(prompt)),
        model,
        draft_model,
        num_draft_tokens=num_draft_tokens,
        max_tokens=max_tokens,
        sampler=sampler,
        logits_processors=with_prefix(tuple(logits_processors), list(history)),
        prompt_cache=list(cache) + draft_cache,
    )
    run = 0  # drafted tokens accepted since the last target token
    try:
        for token, logprobs, drafted in steps:
            stats.emitted += 1
            if drafted:
                run += 1
            else:  # a round ends: it drafted min(k, budget left when it began)
                before = stats.emitted - run - 1
                stats.steps += 1
                stats.accepted += run
                stats.drafted += min(num_draft_tokens, max_tokens - before)
                run = 0
            yield int(token), logprobs, bool(drafted)
    finally:
        steps.close()


@dataclass
class Speculation:
    """A model's speculative-decoding setup (from the load config)."""

    mode: str  # "draft" | "prompt_lookup"
    num_draft_tokens: int = DEFAULT_DRAFT_TOKENS
    ngram: int = DEFAULT_NGRAM
    draft_model: Any = None
    stats: SpeculativeStats = field(default_factory=SpeculativeStats)


__all__ = [
    "NgramDrafter",
    "Speculation",
    "SpeculativeStats",
    "draft_model_generate_step",
    "prompt_lookup_generate_step",
]
