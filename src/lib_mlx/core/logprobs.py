"""Log-probabilities of the answer's tokens, as OpenAI reports them.

The values are what mlx-lm's ``generate_step`` and ``BatchGenerator`` hand out with each token:
the log-softmax of the logits the token was sampled from, after the request's logits
processors (penalties, ``logit_bias``, a grammar's mask) and before temperature, top-p/top-k
and min-p (which mlx-lm's samplers apply to these log-probabilities). Under a grammar a
disallowed token has ``-inf`` and is never among the top alternatives.

Capture costs one ``argpartition`` over the vocabulary per token when ``top_logprobs`` > 0 and
one element read otherwise; nothing when the request did not ask.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from .events import TokenLogprob

MAX_TOP_LOGPROBS = 20


class LogprobCapture:
    """Turns ``(token, logprobs)`` into ``TokenLogprob`` events for one request."""

    def __init__(self, top: int, token_text: Callable[[int], str]) -> None:
        self.top = max(0, min(int(top), MAX_TOP_LOGPROBS))
        self.token_text = token_text

    def __call__(self, token: int, logprobs: Any) -> TokenLogprob:
        import mlx.core as mx

        row = logprobs.reshape(-1)
        if self.top:
            k = self.top
            idx = mx.argpartition(-row, kth=k - 1)[:k]
            vals = row[idx]
            mx.eval(idx, vals)
            pairs = sorted(zip(vals.tolist(), idx.tolist()), key=lambda p: -p[0])
            chosen = row[token].item()
            top = tuple(self._entry(t, v) for v, t in pairs if v != -math.inf)
        else:
            chosen = row[token].item()
            top = ()
        text = self.token_text(token)
        return TokenLogprob(token=text, logprob=_finite(chosen), bytes=tuple(text.encode("utf-8")), top=top)

    def _entry(self, token: int, value: float) -> tuple[str, float, tuple[int, ...]]:
        text = self.token_text(token)
        return (text, _finite(value), tuple(text.encode("utf-8")))


def _finite(value: float) -> float:
    """JSON has no -inf: OpenAI's floor for an impossible token is -9999.0."""
    return value if value > -9999.0 else -9999.0


def token_text_fn(tokenizer: Any) -> Callable[[int], str]:
    """The text of one token id, as a standalone decode gives it (cached per model): a token
    that holds part of a UTF-8 character decodes to U+FFFD, as in OpenAI's ``token`` field."""
    cache = getattr(tokenizer, "_lib_mlx_token_text", None)
    if cache is None:
        cache = {}
        try:
            tokenizer._lib_mlx_token_text = cache
        except AttributeError:
            pass
    decode = tokenizer.decode

    def text(token: int) -> str:
        value = cache.get(token)
        if value is None:
            value = cache[token] = decode([token])
        return value

    return text


__all__ = ["LogprobCapture", "MAX_TOP_LOGPROBS", "token_text_fn"]
