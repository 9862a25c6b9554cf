"""Which family a loaded model belongs to: an ordered table of rules over what the model ships
(the markers mlx-lm infers, its chat template's text, its special tokens, its config), kept
apart from the families themselves. A load config's ``family`` overrides it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .base import ParserSpec


@dataclass(frozen=True)
class Evidence:
    """What detection may look at."""

    spec: ParserSpec
    template: str = ""  # every named template, joined
    tokens: frozenset[str] = field(default_factory=frozenset)  # added/special token texts
    model_type: str = ""


Rule = Callable[[Evidence], bool]


def _has(*texts: str) -> Rule:
    """All ``texts`` are special tokens of the model or appear in its template."""
    return lambda e: all(t in e.tokens or t in e.template for t in texts)


# First match wins. Families mlx-lm does not know come first, by the tokens their syntax is made
# of; then what mlx-lm inferred, the tool parser before the reasoning markers (a model whose
# calls are not JSON must not get the JSON family just because it also thinks with <think>);
# then templates mlx-lm could not read (a repository's named templates).
DETECTION: list[tuple[str, Rule]] = [
    ("harmony", _has("<|channel|>", "<|message|>", "<|start|>")),
    ("mistral", _has("[TOOL_CALLS]")),
    ("mistral", _has("[THINK]", "[/THINK]")),
    ("kimi", _has("<|tool_calls_section_begin|>")),
    ("deepseek", _has("<｜tool▁calls▁begin｜>")),
    ("deepseek", _has("<｜Assistant｜>", "<think>")),
    ("granite", _has("<|tool_call|>", "<|start_of_role|>")),
    ("gemma4", lambda e: e.spec.tool_parser == "gemma4"),
    ("qwen3", lambda e: e.spec.tool_parser == "json_tools"),
    ("mlx_lm", lambda e: e.spec.tool_parser is not None),
    ("gemma4", lambda e: e.spec.think_start == "<|channel>thought"),
    ("qwen3", lambda e: e.spec.think_start == "<think>"),
    ("mlx_lm", lambda e: e.spec.think_start is not None),
    ("qwen3", _has("<tool_call>", "</tool_call>")),
    ("llama3", _has("<|start_header_id|>", '"parameters"')),
    ("llama3", _has("<|python_tag|>")),
    ("plain", lambda e: True),
]


def detect_family(evidence: Evidence | ParserSpec) -> str:
    if isinstance(evidence, ParserSpec):
        evidence = Evidence(evidence)
    return next(name for name, rule in DETECTION if rule(evidence))


def template_text(template: Any) -> str:
    """A chat template as text: a string, or a repository's named templates (a dict, or
    ``[{"name": ..., "template": ...}]``) joined."""
    if isinstance(template, str):
        return template
    if isinstance(template, dict):
        return "\n".join(str(t) for t in template.values())
    if isinstance(template, list):
        return "\n".join(str(t.get("template", "")) for t in template if isinstance(t, dict))
    return ""


def added_tokens(tokenizer: Any) -> frozenset[str]:
    """The texts of the tokenizer's added (special and user-defined) tokens."""
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    try:
        return frozenset(inner.get_added_vocab())
    except Exception:
        return frozenset()


def evidence_from_tokenizer(tokenizer: Any, config: dict[str, Any] | None = None) -> Evidence:
    """Read markers from mlx-lm's ``TokenizerWrapper`` (which infers them from the vocabulary
    and the chat template), plus the template text and the added tokens."""
    thinking = bool(getattr(tokenizer, "has_thinking", False))
    spec = ParserSpec(
        family="auto",
        think_start=tokenizer.think_start if thinking else None,
        think_end=tokenizer.think_end if thinking else None,
        tool_call_start=getattr(tokenizer, "tool_call_start", None) or None,
        tool_call_end=getattr(tokenizer, "tool_call_end", None) or None,
        tool_parser=_tool_parser_name(tokenizer),
    )
    inner = getattr(tokenizer, "_tokenizer", tokenizer)
    return Evidence(
        spec=spec,
        template=template_text(getattr(inner, "chat_template", None)),
        tokens=added_tokens(tokenizer),
        model_type=str((config or {}).get("model_type", "")),
    )


def _tool_parser_name(tokenizer: Any) -> str | None:
    parser = getattr(tokenizer, "tool_parser", None)
    module = getattr(parser, "__module__", "") or ""
    if module.startswith("mlx_lm.tool_parsers."):
        return module.rsplit(".", 1)[1]
    kwargs = getattr(tokenizer, "init_kwargs", None)
    return kwargs.get("tool_parser_type") if isinstance(kwargs, dict) else None
