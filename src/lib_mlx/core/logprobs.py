"""Log-probabilities of the answer's tokens, as OpenAI reports them.

The values are what mlx-lm's ``generate_step`` and ``BatchGenerator`` hand out with each token:
the log-softmax of the logits the token was sampled from, after the request's logits
processors (penalties, ``logit_bias``, a grammar's mask) and before temperature, top-p/top-k
and min-p (which mlx-lm's samplers apply to these log-probabilities). Under a grammar a
disallowed token has ``-inf`` and is never among the top alternatives.

Capture reads the evaluated row on the host (numpy; no GPU work that would wait behind the next
step) and, when ``top_logprobs`` > 0, runs one ``argpartition`` over it (~0.1-1 ms for 150k
tokens, while the GPU runs the next step); nothing when the request did not ask.
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
        import numpy as np

        row = _host_row(logprobs)
        chosen = float(row[token])
        top: tuple[tuple[str, float, tuple[int, ...]], ...] = ()
        if self.top:
            k = min(self.top, row.shape[0])
            idx = np.argpartition(-row, k - 1)[:k]
            idx = idx[np.argsort(-row[idx], kind="stable")]
            top = tuple(self._entry(int(t), float(row[t])) for t in idx if row[t] != -math.inf)
        text = self.token_text(token)
        return TokenLogprob(token=text, logprob=_finite(chosen), bytes=tuple(text.encode("utf-8")), top=top)

    def _entry(self, token: int, value: float) -> tuple[str, float, tuple[int, ...]]:
        text = self.token_text(token)
        return (text, _finite(value), tuple(text.encode("utf-8")))


def _host_row(logprobs: Any) -> Any:
    """The token's log-probabilities as a float32 numpy row, without queueing work on the
    generation stream: the array is already evaluated (generate_step and the batch evaluate it
    with the token), but the next step's forward pass is queued behind it there, and any new
    GPU op would wait for that pass -- a stall per token. A dtype cast runs on the CPU stream."""
    import mlx.core as mx
    import numpy as np

    row = logprobs.reshape(-1)
    if row.dtype != mx.float32:
        with mx.stream(mx.cpu):
            row = row.astype(mx.float32)
            mx.eval(row)
    return np.asarray(row)


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
