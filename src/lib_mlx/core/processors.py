"""A request's logits processors, in the order they apply to each step's logits:

1. ``logit_bias`` and the penalties -- mlx-lm's own processors
   (``mlx_lm.sample_utils.make_logits_processors``): ``presence_penalty`` and
   ``frequency_penalty`` as OpenAI defines them (additive, over the output so far), and
   ``repetition_penalty`` as mlx-lm and vLLM do (multiplicative, sign-aware);
2. the thinking budget (``ThinkingBudget``): once the reasoning has used its tokens, the
   family's end-of-thinking marker is forced;
3. the grammar (``grammar.GrammarProcessor``): structured output, from where the answer starts.

Every processor is an mlx-lm logits processor ``(tokens, logits) -> logits`` that sees the whole
context (prompt and output so far), so one list serves the single stream and the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidRequestError

# The window over which penalties count earlier tokens. OpenAI counts the whole output; mlx-lm
# counts the last N context tokens. 1024 covers most answers at a bounded cost per step.
PENALTY_CONTEXT = 1024

# reasoning_effort -> thinking budget (reasoning tokens) for models without an effort setting
# of their own. "none" turns thinking off (see the request models); "xhigh"/"max": no cap.
EFFORT_BUDGETS: dict[str, int | None] = {
    "minimal": 256,
    "low": 1024,
    "medium": 4096,
    "high": 16384,
    "xhigh": None,
    "max": None,
}


def penalty_processors(params: Any, vocab_size: int) -> list[Callable[..., Any]]:
    """``logit_bias`` and the penalties as mlx-lm processors (none when unset)."""
    from mlx_lm.sample_utils import make_logits_processors

    bias = {int(k): float(v) for k, v in getattr(params, "logit_bias", None) or () if 0 <= int(k) < vocab_size}
    penalties = make_logits_processors(
        repetition_penalty=getattr(params, "repetition_penalty", None),
        repetition_context_size=PENALTY_CONTEXT,
        presence_penalty=getattr(params, "presence_penalty", None),
        presence_context_size=PENALTY_CONTEXT,
        frequency_penalty=getattr(params, "frequency_penalty", None),
        frequency_context_size=PENALTY_CONTEXT,
    )
    bias_processors = make_logits_processors(logit_bias=bias or None)
    return bias_processors + [OutputOnly(p) for p in penalties]


class OutputOnly:
    """Shows a processor only the output so far, not the prompt: OpenAI's penalties count the
    tokens the model has generated (mlx-lm's count the last N tokens of the whole context)."""

    def __init__(self, processor: Callable[..., Any]) -> None:
        self.processor = processor
        self._base: int | None = None

    def __call__(self, tokens: Any, logits: Any) -> Any:
        tokens = tokens.reshape(-1)
        if self._base is None:
            self._base = tokens.shape[0]
        return self.processor(tokens[self._base :], logits)


class ThinkingBudget:
    """Caps the reasoning at ``budget`` tokens, then forces ``end`` (the family's
    end-of-thinking marker, as token ids) one token a step.

    ``in_reasoning``: the prompt already opened the reasoning block; else it opens when the
    output writes ``start``. The count is of output tokens inside the block, marker excluded,
    as the parser counts ``reasoning_tokens``."""

    def __init__(self, budget: int, start: tuple[int, ...], end: tuple[int, ...], in_reasoning: bool) -> None:
        self.budget = max(0, int(budget))
        self.start, self.end = tuple(start), tuple(end)
        self.state = "reasoning" if in_reasoning else ("before" if self.start else "done")
        self.used = 0  # reasoning tokens so far
        self.forcing = 0  # how much of ``end`` has been forced
        self._base: int | None = None
        self._seen = 0
        self._recent: list[int] = []

    def __call__(self, tokens: Any, logits: Any) -> Any:
        tokens = tokens.reshape(-1)
        n = tokens.shape[0]
        if self._base is None:
            self._base = n
        out = n - self._base
        if out > self._seen and self.state != "done":
            import mlx.core as mx

            mx.async_eval(logits)  # the forward pass runs while we read the last token
            for token in tokens[self._base + self._seen :].tolist():
                self._take(token)
        self._seen = max(self._seen, out)
        if self.state == "reasoning" and self.used >= self.budget:
            return _force(logits, self.end[self.forcing])
        return logits

    def _take(self, token: int) -> None:
        recent = self._recent
        recent.append(token)
        if self.state == "before":
            if tuple(recent) == self.start:
                self.state = "reasoning"
                recent.clear()
            elif tuple(recent) != self.start[: len(recent)]:
                self.state = "done"  # the model answered without thinking
            return
        if self.state != "reasoning":
            return
        if self.used >= self.budget:  # a forced marker token
            self.forcing += 1
            if self.forcing >= len(self.end):
                self.state = "done"
            return
        if tuple(recent[-len(self.end) :]) == self.end:
            self.state = "done"  # the model closed its reasoning itself
            return
        del recent[: max(0, len(recent) - len(self.end))]
        self.used += 1


def _force(logits: Any, token: int) -> Any:
    import mlx.core as mx

    vocab = logits.shape[-1]
    keep = mx.arange(vocab) == token
    return mx.where(keep, logits, mx.array(-float("inf"), dtype=logits.dtype))


def request_processors(loaded: Any, prompt: Any, params: Any) -> tuple[Callable[..., Any], ...]:
    """Every logits processor of one request, in order (see the module doc)."""
    processors: list[Callable[..., Any]] = list(getattr(params, "logits_processors", ()) or ())
    processors += penalty_processors(params, _vocab_size(loaded))
    budget = getattr(params, "thinking_budget", None)
    if budget is not None:
        start, end, in_reasoning = _thinking_markers(loaded, prompt)
        if end and (start or in_reasoning):
            processors.append(ThinkingBudget(budget, start, end, in_reasoning))
    plan = grammar_plan(loaded, prompt, params)
    if plan is not None:
        from .grammar import make_processor

        spec, kwargs = plan
        processors.append(make_processor(loaded, spec, **kwargs))
    return tuple(processors)


def check_request(loaded: Any, prompt: Any, params: Any) -> None:
    """What ``request_processors`` would refuse, checked before the request is queued (so that
    the client gets a 400 naming the field, not a failed generation): ``logit_bias`` ids, and
    the grammar, compiled into the model's cache (the worker then finds it there)."""
    vocab = _vocab_size(loaded)
    for token, _ in getattr(params, "logit_bias", None) or ():
        if not 0 <= token < vocab:
            raise InvalidRequestError(
                f"logit_bias: token id {token} is outside the vocabulary (0..{vocab - 1})", param="logit_bias"
            )
    plan = grammar_plan(loaded, prompt, params)
    if plan is not None:
        from .grammar import compiler_for

        compiler_for(loaded).compile(plan[0])


def _vocab_size(loaded: Any) -> int:
    config = loaded.config or {}
    vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size") or 0
    return int(vocab) or 1 << 31


def _thinking_markers(loaded: Any, prompt: Any) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    """The end-of-thinking marker's ids, the start marker's where the output may still open its
    reasoning (thinking on), and whether the prompt already opened it."""
    spec, tokenizer = loaded.parser_spec, loaded.tokenizer
    thinking = bool(getattr(prompt, "thinking", False))
    in_reasoning = bool(getattr(prompt, "starts_in_reasoning", False))
    start = marker_ids(tokenizer, spec.think_start) if thinking and not in_reasoning else ()
    return start, marker_ids(tokenizer, spec.think_end), in_reasoning


def grammar_plan(loaded: Any, prompt: Any, params: Any) -> tuple[Any, dict[str, Any]] | None:
    """The request's one grammar and how it applies -- the answer (``response_format``), a
    forced call, or strict tool calls -- or None. One matcher decides each step."""
    from . import tool_grammar

    grammar = getattr(params, "grammar", None)
    tools = getattr(prompt, "tools", None) or []
    strict = any((t.get("function", t)).get("strict") for t in tools) and getattr(prompt, "parse_tools", True)
    forced = bool(tools) and bool(getattr(prompt, "assistant_prefix", ""))
    if grammar is None and not strict and not forced:
        return None
    syntax = tool_grammar.syntax_for(loaded.parser_spec.tool_parser)
    family_syntax = getattr(getattr(loaded, "family", None), "syntax", None)
    if syntax is not None and family_syntax is not None and family_syntax.start.strip() != syntax.start:
        syntax = None  # the family opens calls some other way: no grammar rather than a wrong one
    if forced and syntax is not None:
        choice = getattr(prompt, "tool_choice", None)
        name = None
        if isinstance(choice, dict):
            name = (choice.get("function") or {}).get("name") or choice.get("name")
        special = tool_grammar.special_markers(loaded, syntax)
        spec = tool_grammar.forced_call_grammar(syntax, tools, name, parallel=prompt.max_tool_calls != 1, special=special)
        return spec, {}
    if grammar is not None:
        if strict and syntax is not None:
            grammar = tool_grammar.answer_or_calls(grammar, syntax, tools, tool_grammar.special_markers(loaded, syntax))
        start, end, in_reasoning = _thinking_markers(loaded, prompt)
        return grammar, {"think_start": start, "think_end": end, "in_reasoning": in_reasoning}
    if strict and syntax is not None:
        special = tool_grammar.special_markers(loaded, syntax)
        trigger = marker_ids(loaded.tokenizer, syntax.start)
        return tool_grammar.strict_call_grammar(syntax, tools, special), {"trigger": trigger}
    return None


def marker_ids(tokenizer: Any, marker: str | None) -> tuple[int, ...]:
    """A marker's token ids (empty when the model has no such marker)."""
    if not marker:
        return ()
    return tuple(tokenizer.encode(marker, add_special_tokens=False))


def effort_budget(effort: str | None) -> int | None:
    """The documented thinking budget of a ``reasoning_effort``; None: no cap."""
    if effort is None:
        return None
    return EFFORT_BUDGETS.get(effort)


__all__ = [
    "EFFORT_BUDGETS",
    "PENALTY_CONTEXT",
    "ThinkingBudget",
    "check_request",
    "effort_budget",
    "grammar_plan",
    "marker_ids",
    "penalty_processors",
    "request_processors",
]
