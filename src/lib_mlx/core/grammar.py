"""Structured output enforced while decoding: a grammar per request, turned into a token mask at
every step, through llguidance.

Why llguidance (``bench/grammar_engines.py``, Qwen's 151,936-token vocabulary, 2-core x86 CPU;
figures in ``bench/RESULTS.md``): a JSON schema compiles in ~1 ms (xgrammar 70-490 ms,
outlines-core 0.8-11 s, and outlines-core has no free-form JSON mode); a mask takes ~15 µs at
the median and ~30-140 µs on average (xgrammar ~3 µs / ~6-14 µs), far under one decoded token
(~4 ms even on an H100); it needs neither torch nor triton (xgrammar requires both), it is
already installed with mlx-vlm, and its Lark grammars take special tokens by id, which a tool
call's syntax needs. Per-request schemas (tools differ per request) make compile time the
figure that matters most.

The pieces:

* ``GrammarSpec``: what a request asks for (a JSON schema, any JSON object, or a Lark grammar),
  plain and hashable, built by the server.
* ``GrammarCompiler``: one per model; the llguidance tokenizer (built once, lazily: ~1-7 s for
  a 150k vocabulary) and a bounded LRU cache of validated grammars. ``compile`` raises
  ``InvalidRequestError`` naming the request field and the unsupported feature.
* ``GrammarProcessor``: an mlx-lm logits processor ``(tokens, logits) -> logits`` holding one
  request's matcher. It works unchanged in ``generate_step`` and in ``BatchGenerator`` (each
  sequence has its own processors), leaves the reasoning of a thinking model free (the
  constraint starts after its end-of-thinking marker), and, once the grammar is complete,
  allows only end-of-sequence tokens. With a trigger (a call-start marker) it constrains only
  from each trigger to the grammar's end (strict tool calls under ``tool_choice`` "auto").
"""

from __future__ import annotations

import collections
import json
import logging
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequestError

log = logging.getLogger("lib_mlx.grammar")

# JSON as models write it -- compact, ``{"a": 1}``, or pretty-printed -- but with at most 16
# whitespace characters between two tokens of the value, so that a model cannot wander off into
# endless whitespace (llguidance's unbounded default lets a weak model fill its budget so).
JSON_OPTIONS = {"whitespace_flexible": True, "whitespace_pattern": r"[ \t\r\n]{0,16}"}
CACHE_SIZE = 128


@dataclass(frozen=True)
class GrammarSpec:
    """A request's output grammar. ``kind``: ``json_schema`` (``source`` the schema as canonical
    JSON text), ``json_object`` (any JSON object) or ``lark`` (an llguidance Lark grammar, e.g. a
    tool call's syntax). ``param`` names the request field it came from, for errors."""

    kind: str
    source: str = ""
    param: str = "response_format"

    @classmethod
    def json_schema(cls, schema: dict[str, Any], param: str = "response_format") -> "GrammarSpec":
        # Key order kept: properties are generated in the schema's order.
        return cls("json_schema", json.dumps(schema, separators=(",", ":")), param)

    @classmethod
    def json_object(cls, param: str = "response_format") -> "GrammarSpec":
        return cls("json_object", "", param)

    @classmethod
    def lark(cls, grammar: str, param: str = "tool_choice") -> "GrammarSpec":
        return cls("lark", grammar, param)

    def llguidance_grammar(self) -> str:
        import llguidance

        if self.kind == "json_schema":
            return llguidance.LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_OPTIONS)
        if self.kind == "json_object":
            return llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=JSON_OPTIONS)
        if self.kind == "lark":
            return llguidance.LLMatcher.grammar_from_lark(self.source)
        raise ValueError(f"unknown grammar kind {self.kind!r}")


class GrammarCompiler:
    """One model's grammar machinery: its llguidance tokenizer and compiled-grammar cache."""

    def __init__(self, hf_tokenizer: Any, vocab_size: int, eos_token_ids: list[int], cache_size: int = CACHE_SIZE) -> None:
        self._hf_tokenizer = hf_tokenizer
        self.vocab_size = vocab_size
        self.eos_token_ids = list(eos_token_ids)
        self._tokenizer: Any = None
        self._lock = threading.Lock()
        self._cache: collections.OrderedDict[GrammarSpec, str] = collections.OrderedDict()
        self.cache_size = cache_size
        self.hits = 0
        self.misses = 0

    @property
    def tokenizer(self) -> Any:
        """The llguidance tokenizer, built on first use (it walks the whole vocabulary)."""
        with self._lock:
            if self._tokenizer is None:
                import llguidance.hf

                self._tokenizer = llguidance.hf.from_tokenizer(
                    self._hf_tokenizer, n_vocab=self.vocab_size, eos_token=self.eos_token_ids or None
                )
            return self._tokenizer

    def compile(self, spec: GrammarSpec) -> str:
        """The validated llguidance grammar of ``spec`` (cached). Raises ``InvalidRequestError``
        naming ``spec.param`` for a schema or grammar llguidance cannot enforce."""
        with self._lock:
            grammar = self._cache.get(spec)
            if grammar is not None:
                self._cache.move_to_end(spec)
                self.hits += 1
                return grammar
        import llguidance

        try:
            grammar = spec.llguidance_grammar()
        except (ValueError, TypeError) as exc:
            raise InvalidRequestError(f"{spec.param}: not a valid grammar: {exc}", param=spec.param) from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise InvalidRequestError(
                f"{spec.param}: this schema cannot be enforced: {_clean_error(messages[0] if messages else 'invalid')}",
                param=spec.param,
                code="unsupported_schema",
            )
        with self._lock:
            self.misses += 1
            self._cache[spec] = grammar
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return grammar

    def matcher(self, spec: GrammarSpec) -> Any:
        import llguidance

        return llguidance.LLMatcher(self.tokenizer, self.compile(spec), log_level=0)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._cache), "hits": self.hits, "misses": self.misses}


def _clean_error(message: str) -> str:
    return " ".join(str(message).split())[:500]


def compiler_for(loaded: Any) -> GrammarCompiler:
    """The model's ``GrammarCompiler``, made on first use and kept on the loaded model."""
    compiler = getattr(loaded, "_grammar_compiler", None)
    if compiler is None:
        tokenizer = loaded.tokenizer
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        config = loaded.config or {}
        vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0
        # The logits' width, or the tokenizer's size where it has more ids than the model
        # (masks are cut to the logits' width).
        compiler = GrammarCompiler(hf, max(int(vocab), len(hf)), sorted(tokenizer.eos_token_ids))
        loaded._grammar_compiler = compiler
    return compiler


class GrammarProcessor:
    """One request's grammar as an mlx-lm logits processor.

    It sees the whole context (prompt and output so far) at every step; the first call fixes
    where the output begins, each later call feeds the matcher the tokens sampled since. A
    context that got shorter (a request moved into a batch re-feeds its last token) rolls the
    matcher back.

    Thinking models: with ``in_reasoning`` (the prompt opened the reasoning block) the
    constraint waits until the output has written ``think_end``; otherwise, where the family
    has a ``think_start``, the output may still open its reasoning with it (the first steps
    allow the marker beside the grammar's own tokens). Reasoning stays free; the answer after it
    is constrained.

    To keep decoding pipelined, the processor starts evaluating the logits
    (``mx.async_eval``) before it reads the last token and computes the mask on the CPU, so the
    mask's cost hides behind the forward pass.
    """

    def __init__(
        self,
        matcher: Any,
        vocab_size: int,
        eos_token_ids: list[int],
        *,
        think_start: tuple[int, ...] = (),
        think_end: tuple[int, ...] = (),
        in_reasoning: bool = False,
        trigger: tuple[int, ...] = (),
    ) -> None:
        import numpy as np

        self.matcher = matcher
        # With a trigger (a call-start marker) the output is free except from each trigger on
        # until the grammar is complete (strict tool calls under tool_choice "auto").
        self.trigger = tuple(trigger)
        self.vocab_size = vocab_size
        self.eos = list(eos_token_ids)
        self.think_start, self.think_end = tuple(think_start), tuple(think_end)
        if self.trigger:
            self.state = "free"
        elif in_reasoning and self.think_end:
            self.state = "reasoning"
        elif self.think_start and self.think_end:
            self.state = "before"
        else:
            self.state = "active"
        self._base: int | None = None  # context length at the first call
        self._seen = 0  # output tokens looked at
        self._fed = 0  # output tokens fed to the matcher
        self._held: list[int] = []  # output tokens not yet classified (before / reasoning)
        self._words = np.zeros((vocab_size + 31) // 32, dtype=np.int32)
        self.failed: str | None = None

    @property
    def active(self) -> bool:
        return self.state == "active"

    def __call__(self, tokens: Any, logits: Any) -> Any:
        import mlx.core as mx

        mx.async_eval(logits)  # the forward pass runs while the mask is computed
        tokens = tokens.reshape(-1)
        n = tokens.shape[0]
        if self._base is None:
            self._base = n
        out = n - self._base
        if out < self._seen:  # re-fed tokens: step back
            back = self._seen - out
            if self.state == "active":
                undo = min(back, self._fed)
                if undo:
                    self.matcher.rollback(undo)
                    self._fed -= undo
            self._seen = out
        if out > self._seen:
            new = tokens[self._base + self._seen :].tolist()
            self._seen = out
            self._take(new)
        if self.state in ("reasoning", "free"):
            return logits
        extra = self.think_start[len(self._held)] if self.state == "before" else None
        return self._mask(logits, extra)

    def _take(self, new: list[int]) -> None:
        while new:
            new = self._take_some(new)

    def _take_some(self, new: list[int]) -> list[int]:
        """Take tokens; returns those left to take after a change of state."""
        if self.state == "free":
            held, trigger = self._held, self.trigger
            for i, token in enumerate(new):
                held.append(token)
                if tuple(held[-len(trigger) :]) == trigger:
                    held.clear()
                    self.matcher.reset()
                    self._fed = 0
                    self.state = "active"
                    return new[i + 1 :]
            del held[: max(0, len(held) - len(trigger))]
            return []
        if self.state == "before":
            held = self._held
            for i, token in enumerate(new):
                held.append(token)
                if tuple(held) == self.think_start:
                    self.state, new = "reasoning", new[i + 1 :]
                    held.clear()
                    break
                if tuple(held) != self.think_start[: len(held)]:
                    self.state, new = "active", held + new[i + 1 :]
                    held.clear()
                    break
            else:
                return []
        if self.state == "reasoning":
            held, end = self._held, self.think_end
            for i, token in enumerate(new):
                held.append(token)
                if tuple(held[-len(end) :]) == end:
                    self.state, new = "active", new[i + 1 :]
                    held.clear()
                    break
            else:
                del held[: max(0, len(held) - len(end))]
                return []
        matcher = self.matcher
        for i, token in enumerate(new):
            if matcher.is_stopped():
                if self.trigger:  # the call is complete: free again
                    self.state = "free"
                    return new[i:]
                break  # the end-of-sequence token that ends the answer
            if not matcher.consume_token(token):
                self.failed = matcher.get_error()
                log.warning("grammar refused a sampled token %d: %s", token, self.failed)
                break
            self._fed += 1
        if self.trigger and matcher.is_stopped():
            self.state = "free"
        return []

    def _mask(self, logits: Any, extra: int | None = None) -> Any:
        import mlx.core as mx
        import numpy as np

        matcher = self.matcher
        if matcher.is_error():
            return logits  # only after a token the mask did not allow; then leave the model be
        width = logits.shape[-1]
        if matcher.is_stopped():
            eos = [t for t in self.eos if t < width]
            if not eos:
                return logits  # no end-of-sequence token the model can emit
            allowed = np.zeros(width, dtype=bool)
            allowed[eos] = True
        else:
            words = self._words
            matcher.unsafe_compute_mask_ptr(words.ctypes.data, words.nbytes)
            allowed = np.unpackbits(words.view(np.uint8), bitorder="little").view(bool)
            if allowed.shape[0] >= width:
                allowed = allowed[:width]
            else:
                allowed = np.concatenate([allowed, np.zeros(width - allowed.shape[0], dtype=bool)])
        if extra is not None:
            allowed = allowed.copy()
            allowed[extra] = True
        return mx.where(mx.array(allowed), logits, mx.array(-float("inf"), dtype=logits.dtype))


def make_processor(
    loaded: Any,
    spec: GrammarSpec,
    *,
    think_start: tuple[int, ...] = (),
    think_end: tuple[int, ...] = (),
    in_reasoning: bool = False,
    trigger: tuple[int, ...] = (),
) -> GrammarProcessor:
    compiler = compiler_for(loaded)
    return GrammarProcessor(
        compiler.matcher(spec),
        compiler.vocab_size,
        compiler.eos_token_ids,
        think_start=think_start,
        think_end=think_end,
        in_reasoning=in_reasoning,
        trigger=trigger,
    )


__all__ = ["GrammarCompiler", "GrammarProcessor", "GrammarSpec", "compiler_for", "make_processor"]
