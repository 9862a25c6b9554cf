"""Grammars for tool calls in a family's own call syntax.

Two uses, both through ``grammar.GrammarProcessor``:

* **Forced calls** (``tool_choice`` "required" or a named function). The prompt already ends
  with the family's call opening (``prompt._forced_tool_call_prefix``); the grammar constrains
  everything after it -- the function name (one of the tools, or the named one), arguments
  (valid against the tool's ``parameters`` where the tool is ``strict``, else any JSON
  object), the closing marker, and further calls where parallel calls are allowed -- and then
  only an end-of-sequence token. No text can leak into the answer.
* **Strict tools** under ``tool_choice`` "auto": the answer stays free, but once the output
  writes the family's call-start marker the call is constrained until its end marker
  (``GrammarProcessor(trigger=...)``), then the output is free again.

Syntax per tool parser (``ParserSpec.tool_parser``). ``json_tools`` (Qwen3, Hermes):
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``. Families without an entry
here get no call grammar (their forced calls stay as before; see the README).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .grammar import JSON_OPTIONS, GrammarSpec


@dataclass(frozen=True)
class CallSyntax:
    start: str  # the call-start marker
    end: str  # the call-end marker
    # what the prompt's forced opening holds after ``start`` (see prompt._CALL_OPENINGS)
    opening: str
    named_opening: str  # ... and for a named function, with ``{name}``


SYNTAX: dict[str, CallSyntax] = {
    "json_tools": CallSyntax("<tool_call>", "</tool_call>", "\n", '\n{{"name": "{name}", "arguments": '),
}


def syntax_for(tool_parser: str | None) -> CallSyntax | None:
    return SYNTAX.get(tool_parser or "")


def _literal(text: str, special: dict[str, int]) -> str:
    """A marker in Lark: a special token by id (it has no text to match), else its text."""
    if text in special:
        return f"<[{special[text]}]>"
    return json.dumps(text)


def _arguments_schema(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function", tool)
    params = fn.get("parameters")
    if fn.get("strict") and isinstance(params, dict):
        return params
    return {"type": "object"}


def _json(schema: dict[str, Any]) -> str:
    """``%json`` for a Lark rule, with the answer grammar's whitespace rule."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS}, separators=(",", ":"))


def _call_schema(tools: list[dict[str, Any]]) -> dict[str, Any]:
    variants = []
    for tool in tools:
        fn = tool.get("function", tool)
        variants.append(
            {
                "type": "object",
                "properties": {"name": {"const": fn["name"]}, "arguments": _arguments_schema(tool)},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
        )
    return variants[0] if len(variants) == 1 else {"anyOf": variants}


def forced_call_grammar(
    syntax: CallSyntax,
    tools: list[dict[str, Any]],
    name: str | None,
    *,
    parallel: bool,
    special: dict[str, int],
) -> GrammarSpec:
    """What may follow a forced call's opening: the rest of the call (and more calls when
    ``parallel``), nothing else."""
    start, end = _literal(syntax.start, special), _literal(syntax.end, special)
    call = _json(_call_schema(tools))
    if name is not None:
        tool = next(t for t in tools if t.get("function", t).get("name") == name)
        first = _json(_arguments_schema(tool))
        head = f'first_args "}}\\n" {end}'
        rules = [f"first_args: {first}"]
    else:
        head = f'first_call "\\n" {end}'
        rules = [f"first_call: {call}"]
    more = f'("\\n" {start} "\\n" call "\\n" {end})*' if parallel else ""
    lines = [f"start: {head} {more}".rstrip(), *rules]
    if parallel:
        lines.append(f"call: {call}")
    return GrammarSpec.lark("\n".join(lines), param="tool_choice")


def strict_call_grammar(syntax: CallSyntax, tools: list[dict[str, Any]], special: dict[str, int]) -> GrammarSpec:
    """One call block after its start marker: ``\\n{json call}\\n`` and the end marker."""
    end = _literal(syntax.end, special)
    call = _json(_call_schema(tools))
    return GrammarSpec.lark(f'start: "\\n" call "\\n" {end}\ncall: {call}', param="tools")


def answer_or_calls(answer: GrammarSpec, syntax: CallSyntax, tools: list[dict[str, Any]], special: dict[str, int]) -> GrammarSpec:
    """A structured answer *or* tool calls (``response_format`` with strict tools under
    ``tool_choice`` "auto"): the model decides which, each is enforced."""
    start, end = _literal(syntax.start, special), _literal(syntax.end, special)
    if answer.kind == "json_schema":
        body = _json(json.loads(answer.source))
    elif answer.kind == "json_object":
        body = _json({"type": "object"})
    else:
        return answer  # a custom grammar stays as it is
    call = _json(_call_schema(tools))
    grammar = f'start: answer | calls\nanswer: {body}\ncalls: ({start} "\\n" call "\\n" {end})+\ncall: {call}'
    return GrammarSpec.lark(grammar, param=answer.param)


def special_markers(loaded: Any, syntax: CallSyntax) -> dict[str, int]:
    """The syntax's markers that llguidance sees as special tokens (an added token is one even
    where the tokenizer does not mark it special): a grammar names those by id."""
    from .grammar import compiler_for

    ll_tokenizer = compiler_for(loaded).tokenizer
    out = {}
    for marker in (syntax.start, syntax.end):
        ids = loaded.tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) == 1 and ll_tokenizer.is_special_token(ids[0]):
            out[marker] = int(ids[0])
    return out


__all__ = ["CallSyntax", "SYNTAX", "forced_call_grammar", "special_markers", "strict_call_grammar", "syntax_for"]
