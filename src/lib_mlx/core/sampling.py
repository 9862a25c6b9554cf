"""How a request picks its tokens: its sampler, its logits processors and its token budget.

Shared by the single-stream path (``single``) and the batch (``batching``), so that a request
draws the same tokens on either. Per request:

- ``request_sampler``: temperature / top-p / top-k / min-p from the request, else the model's
  ``generation_config`` defaults. Unseeded samplers are shared between requests with equal
  settings (a batch of them then samples in one call); a seeded request gets a
  ``SeededSampler`` with its own random stream.
- ``request_processors``: the mlx-lm logits processors ``(tokens, logits) -> logits`` a request
  runs with -- the place for anything that reshapes the logits (penalties, biases, grammar
  masks); ``with_prefix`` shows them the cached prefix the model did not re-read.
- ``max_new_tokens``: the request's budget, clamped to what the context has left.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .request import SamplingParams

if TYPE_CHECKING:
    from .loader import LoadedModel

Sampler = Callable[..., Any]
LogitsProcessor = Callable[..., Any]

# Samplers without a seed are shared between requests with equal settings, so that a batch of
# them samples in one call; a seeded request gets its own random key, so that its draws do not
# depend on what else runs beside it.
# Bounded (least recently used out): a client cycling through distinct temperatures must not
# grow it for ever.
_shared_samplers: dict[tuple[float, float, int, float], Sampler] = {}
_shared_samplers_lock = threading.Lock()
MAX_SHARED_SAMPLERS = 32
# A top_p below this keeps only the most likely token (greedy); mlx-lm's top-p mask underflows
# (float32) near 1e-45 and would then sample from garbage.
MIN_TOP_P = 1e-6


def sampling_settings(params: SamplingParams, defaults: dict[str, Any]) -> tuple[float, float, int, float]:
    """``(temperature, top_p, top_k, min_p)``: the request's values, else ``defaults``'."""

    def pick(name: str, fallback: float) -> float:
        value = getattr(params, name)
        if value is None:
            value = defaults.get(name, fallback)
        return value or 0

    temp, top_p = float(pick("temperature", 1.0)), float(pick("top_p", 0.0))
    if 0 < top_p < MIN_TOP_P:
        temp, top_p = 0.0, 0.0  # the nucleus is the top token alone: greedy
    return (temp, top_p, int(pick("top_k", 0)), float(pick("min_p", 0.0)))


def make_request_sampler(
    params: SamplingParams, defaults: dict[str, Any], *, adjust_top_k: Callable[[int], int] | None = None
) -> Sampler:
    from mlx_lm.sample_utils import make_sampler

    temp, top_p, top_k, min_p = sampling_settings(params, defaults)
    if adjust_top_k is not None:
        top_k = adjust_top_k(top_k)
    settings = (temp, top_p, top_k, min_p)
    if params.seed is None or temp == 0:
        with _shared_samplers_lock:
            sampler = _shared_samplers.pop(settings, None)
            if sampler is None:
                sampler = make_sampler(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p)
            _shared_samplers[settings] = sampler  # the most recently used last
            while len(_shared_samplers) > MAX_SHARED_SAMPLERS:
                del _shared_samplers[next(iter(_shared_samplers))]
        return sampler
    return SeededSampler(params.seed % (1 << 64), temp, top_p, top_k, min_p)


def request_sampler(loaded: "LoadedModel", params: SamplingParams) -> Sampler:
    """The sampler ``params`` ask for on this model."""
    return make_request_sampler(params, loaded.generation_defaults, adjust_top_k=lambda k: clamp_top_k(loaded, k))


def request_processors(loaded: "LoadedModel", prompt: Any, params: SamplingParams) -> tuple[LogitsProcessor, ...]:
    """The logits processors a request runs with, in order: the extension seam's
    (``params.logits_processors``), ``logit_bias`` and penalties, the thinking budget, the
    grammar (``core.processors``). They keep per-request state: build them once per request
    (``RequestStream.processors``), also across a move into the batch."""
    from .processors import request_processors as build

    return build(loaded, prompt, params)


class SeededSampler:
    """Sampling with the request's own random stream: draw ``i`` uses a key derived from
    ``(seed, i)``, so a request draws the same tokens alone or in a batch, and ``rewind`` undoes
    a draw whose token was thrown away (a look-ahead step before moving into a batch)."""

    def __init__(self, seed: int, temp: float, top_p: float, top_k: int, min_p: float) -> None:
        self.seed, self.temp, self.top_p, self.top_k, self.min_p = seed, temp, top_p, top_k, min_p
        self.draws = 0

    def rewind(self, n: int = 1) -> None:
        self.draws = max(0, self.draws - n)

    def __call__(self, logprobs: Any) -> Any:
        import mlx.core as mx
        from mlx_lm.sample_utils import apply_min_p, apply_top_k, apply_top_p

        if 0 < self.top_p < 1.0:
            logprobs = apply_top_p(logprobs, self.top_p)
        if self.min_p:
            logprobs = apply_min_p(logprobs, self.min_p)
        if self.top_k > 0:
            logprobs = apply_top_k(logprobs, self.top_k)
        key = mx.random.key((self.seed + self.draws * 0x9E3779B97F4A7C15) % (1 << 64))
        self.draws += 1
        return mx.random.categorical(logprobs * (1.0 / self.temp), key=key)


def rewind(sampler: Sampler, n: int = 1) -> None:
    """Undo ``n`` draws of a sampler whose tokens were thrown away (no-op for a shared one)."""
    if isinstance(sampler, SeededSampler):
        sampler.rewind(n)


def with_prefix(processors: tuple[LogitsProcessor, ...], prefix: list[int]) -> list[LogitsProcessor] | None:
    """Logits processors always see the whole prompt + output, also when a cached prefix was
    not passed to ``generate_step`` (which shows them only the tokens it was given)."""
    if not processors:
        return None
    if not prefix:
        return list(processors)
    import mlx.core as mx

    head = mx.array(prefix)

    def wrap(processor: LogitsProcessor) -> LogitsProcessor:
        return lambda tokens, logits: processor(mx.concatenate([head, tokens.astype(head.dtype)]), logits)

    return [wrap(p) for p in processors]


def max_new_tokens(loaded: "LoadedModel", n_prompt: int, requested: int | None) -> int:
    """The request's budget, clamped to what the context has left."""
    room = max(loaded.context_length - n_prompt, 1)
    return room if requested is None else max(1, min(requested, room))


def clamp_top_k(loaded: "LoadedModel", top_k: int) -> int:
    """mlx-lm refuses a ``top_k`` that is not below the vocabulary size (a ValueError inside the
    compiled sampler); keeping every token is no top-k at all."""
    config = loaded.config or {}
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0
    top_k = int(top_k)
    return 0 if isinstance(vocab, int) and 0 < vocab <= top_k else top_k


__all__ = [
    "SeededSampler",
    "clamp_top_k",
    "make_request_sampler",
    "max_new_tokens",
    "request_processors",
    "request_sampler",
    "rewind",
    "sampling_settings",
    "with_prefix",
]
