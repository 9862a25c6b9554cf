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
``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>``, arguments checked against the
schema. ``gemma4``: ``<|tool_call>call:name{key:<|"|>text<|"|>,n:1,...}<tool_call|>``, its own
argument syntax -- for a strict tool shaped by its schema (see ``_GemmaArgs``), for any other
any text up to the end marker (the name is enforced either way).
Families without an entry get no call grammar (their forced calls stay as before).
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


def syntax_for(tool_parser: str | None) -> "CallSyntax | GemmaSyntax | None":
    return SYNTAX.get(tool_parser or "")


@dataclass(frozen=True)
class GemmaSyntax:
    """Gemma 4's calls: ``<|tool_call>call:name{args}<tool_call|>``, ``args`` in its own
    syntax (bare keys, ``<|"|>``-quoted text). Bounded: keys of at most 64 characters, text of
    at most 2,000, numbers of at most 24 characters, so that a weak model cannot run on."""

    start: str = "<|tool_call>"
    end: str = "<tool_call|>"
    quote: str = '<|"|>'

    def rules(self, special: dict[str, int]) -> list[str]:
        q = "g_q"
        return [
            f"g_q: {_literal(self.quote, special)}",
            # a tool that is not strict: any text up to the end marker (a special token, so
            # the text cannot run past it); the parser reads what the model wrote, as before
            'g_loose: "{" G_ANY',
            "G_ANY: /(?s:.){0,4000}/",
            'g_args: "{" (g_pair ("," g_pair)*)? "}"',
            "g_pair: G_KEY \":\" g_value",
            'g_value: g_text | G_NUMBER | "true" | "false" | "null" | g_args | g_list',
            'g_list: "[" (g_value ("," g_value)*)? "]"',
            f"g_text: {q} G_TEXT {q}",
            "G_KEY: /[A-Za-z_][A-Za-z0-9_]{0,63}/",
            "G_NUMBER: /-?[0-9]{1,16}(\\.[0-9]{1,8})?/",
            "G_INT: /-?[0-9]{1,16}/",
            "G_TEXT: /(?s:.){0,2000}/",
        ]


SYNTAX["gemma4"] = GemmaSyntax()


class _GemmaArgs:
    """A strict tool's ``parameters`` schema as Gemma 4 argument syntax: its keys in the
    schema's order (required ones always, optional ones optionally), values of the declared
    type, enums and consts exactly, string lengths and anchored patterns, integer ranges of up
    to 257 values, nested objects and arrays. Not checked: wider numeric bounds, array lengths,
    formats (llguidance's JSON-schema compiler speaks JSON, not Gemma's syntax)."""

    def __init__(self, quote: str) -> None:
        self.q = quote
        self.rules: list[str] = []

    def rule(self, body: str) -> str:
        name = f"g_s{len(self.rules)}"
        self.rules.append(f"{name}: {body}")
        return name

    def value(self, schema: Any) -> str:
        if not isinstance(schema, dict) or not schema:
            return "g_value"
        q = self.q
        for key in ("enum", "const"):
            if key in schema:
                options = schema[key] if key == "enum" else [schema[key]]
                alts = [f"{q} {json.dumps(v)} {q}" if isinstance(v, str) else json.dumps(json.dumps(v)) for v in options]
                return self.rule(" | ".join(alts))
        for key in ("anyOf", "oneOf"):
            if key in schema:
                return self.rule(" | ".join(self.value(v) for v in schema[key]))
        kind = schema.get("type")
        if isinstance(kind, list):
            return self.rule(" | ".join(self.value({**schema, "type": k}) for k in kind))
        if kind == "string":
            return self.text(schema)
        if kind == "integer":
            lo, hi = schema.get("minimum"), schema.get("maximum")
            if isinstance(lo, int) and isinstance(hi, int) and 0 <= hi - lo <= 256:
                return self.rule(" | ".join(json.dumps(str(v)) for v in range(lo, hi + 1)))
            return "G_INT"
        if kind == "number":
            return "G_NUMBER"
        if kind == "boolean":
            return self.rule('"true" | "false"')
        if kind == "null":
            return self.rule('"null"')
        if kind == "array":
            item = self.value(schema.get("items"))
            return self.rule(f'"[" ({item} ("," {item})*)? "]"')
        if kind == "object" or "properties" in schema:
            return self.object(schema)
        return "g_value"

    def text(self, schema: dict[str, Any]) -> str:
        """Quoted text: its length bounds and an anchored ``pattern`` are kept."""
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and pattern.startswith("^") and pattern.endswith("$") and "/" not in pattern:
            body = pattern[1:-1]
        else:
            lo, hi = int(schema.get("minLength", 0)), int(schema.get("maxLength", 2000))
            body = f"(?s:.){{{lo},{max(lo, hi)}}}"
        terminal = f"G_T{len(self.rules)}"
        self.rules.append(f"{terminal}: /{body}/")
        return self.rule(f"{self.q} {terminal} {self.q}")

    def object(self, schema: dict[str, Any]) -> str:
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return "g_args"
        required = set(schema.get("required") or ())
        parts = [(json.dumps(key), self.value(sub), key in required) for key, sub in props.items()]
        # keys in the schema's order; the first present one has no comma before it
        body, seen_required = "", False
        for key, value, needed in parts:
            pair = f"{key} \":\" {value}"
            if not body:
                body = pair if needed else f"({pair})?"
            elif seen_required or needed and not body.endswith(")?"):
                body += f' ("," {pair})' + ("" if needed else "?")
            else:  # nothing before is certainly there: a comma only after something
                body = f'({body} "," {pair} | {pair})' if needed else f'({body} ("," {pair})? | ({pair})?)'
            seen_required = seen_required or needed
        return self.rule(f'"{{" {body} "}}"')


def _literal(text: str, special: dict[str, int]) -> str:
    """A marker in Lark: a special token by id (it has no text to match), else its text."""
    if text in special:
        return f"<[{special[text]}]>"
    return json.dumps(text)


def _json(schema: dict[str, Any]) -> str:
    """``%json`` for a Lark rule, with the answer grammar's whitespace rule."""
    return "%json " + json.dumps({**schema, "x-guidance": JSON_OPTIONS}, separators=(",", ":"))


# Any JSON object, bounded (keys of at most 64 characters, strings of at most 2,000, numbers
# of at most ~40 characters, 16 whitespace characters between tokens), for the arguments of a
# tool that is not ``strict``: a weak model cannot run on forever inside them.
_ANY_JSON = r"""
j_obj: "{" J_WS? (j_pair (J_WS? "," J_WS? j_pair)*)? J_WS? "}"
j_pair: J_KEY J_WS? ":" J_WS? j_val
j_arr: "[" J_WS? (j_val (J_WS? "," J_WS? j_val)*)? J_WS? "]"
j_val: J_STR | J_NUM | "true" | "false" | "null" | j_obj | j_arr
J_KEY: /"([^"\\\x00-\x1f]|\\["\\\/bfnrt]){1,64}"/
J_STR: /"([^"\\\x00-\x1f]|\\["\\\/bfnrt]|\\u[0-9a-fA-F]{4}){0,2000}"/
J_NUM: /-?(0|[1-9][0-9]{0,15})(\.[0-9]{1,16})?([eE][+-]?[0-9]{1,3})?/
J_WS: /[ \t\r\n]{1,16}/
"""


def _arguments_rule(tool: dict[str, Any]) -> str:
    """The Lark body of a tool's arguments: its schema where it is strict, else any object."""
    fn = tool.get("function", tool)
    params = fn.get("parameters")
    if fn.get("strict") and isinstance(params, dict):
        return _json(params)
    return "j_obj"


def _call_rules(tools: list[dict[str, Any]]) -> list[str]:
    """``call``: one call object, ``{"name": <a tool>, "arguments": <its arguments>}``
    (name first, as the families' templates write it); ``args_i``: tool ``i``'s arguments."""
    ws = "J_WS?"
    variants, rules = [], []
    for i, tool in enumerate(tools):
        name = json.dumps(json.dumps(tool.get("function", tool)["name"]))
        rules.append(f"args_{i}: {_arguments_rule(tool)}")
        variants.append(
            f'"{{" {ws} "\\"name\\"" {ws} ":" {ws} {name} {ws} "," {ws} "\\"arguments\\"" {ws} ":" {ws} args_{i} {ws} "}}"'
        )
    return [f"call: {' | '.join(variants)}", *rules]


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
    if isinstance(syntax, GemmaSyntax):
        return _gemma_forced(syntax, tools, name, parallel=parallel, special=special)
    start, end = _literal(syntax.start, special), _literal(syntax.end, special)
    if name is not None:
        i = next(i for i, t in enumerate(tools) if t.get("function", t).get("name") == name)
        head = f'args_{i} J_WS? "}}" "\\n" {end}'
    else:
        head = f'call "\\n" {end}'
    more = f'("\\n" {start} "\\n" call "\\n" {end})*' if parallel else ""
    lines = [f"start: {head} {more}".rstrip(), *_call_rules(tools), _ANY_JSON]
    return GrammarSpec.lark("\n".join(lines), param="tool_choice")


def _gemma_calls(syntax: GemmaSyntax, tools: list[dict[str, Any]], special: dict[str, int]) -> tuple[_GemmaArgs, dict[str, str]]:
    """Per tool name, the rule of its arguments: schema-shaped for a strict tool."""
    args = _GemmaArgs("g_q")
    by_name = {}
    for tool in tools:
        fn = tool.get("function", tool)
        params = fn.get("parameters")
        by_name[fn["name"]] = args.object(params) if fn.get("strict") and isinstance(params, dict) else "g_loose"
    return args, by_name


def _gemma_forced(
    syntax: GemmaSyntax, tools: list[dict[str, Any]], name: str | None, *, parallel: bool, special: dict[str, int]
) -> GrammarSpec:
    start, end = _literal(syntax.start, special), _literal(syntax.end, special)
    args, by_name = _gemma_calls(syntax, tools, special)
    call = "(" + " | ".join(f'"call:" {json.dumps(n)} {rule}' for n, rule in by_name.items()) + ")"
    head = f"{by_name[name]} {end}" if name is not None else f"{call} {end}"
    more = f"({start} {call} {end})*" if parallel else ""
    lines = [f"start: {head} {more}".rstrip(), *args.rules, *syntax.rules(special)]
    return GrammarSpec.lark("\n".join(lines), param="tool_choice")


def strict_call_grammar(syntax: CallSyntax, tools: list[dict[str, Any]], special: dict[str, int]) -> GrammarSpec:
    """One call block after its start marker: ``\\n{json call}\\n`` and the end marker."""
    end = _literal(syntax.end, special)
    if isinstance(syntax, GemmaSyntax):
        args, by_name = _gemma_calls(syntax, tools, special)
        call = " | ".join(f'"call:" {json.dumps(n)} {rule}' for n, rule in by_name.items())
        return GrammarSpec.lark("\n".join([f"start: ({call}) {end}", *args.rules, *syntax.rules(special)]), param="tools")
    lines = [f'start: "\\n" call "\\n" {end}', *_call_rules(tools), _ANY_JSON]
    return GrammarSpec.lark("\n".join(lines), param="tools")


def answer_or_calls(answer: GrammarSpec, syntax: CallSyntax, tools: list[dict[str, Any]], special: dict[str, int]) -> GrammarSpec:
    """A structured answer *or* tool calls (``response_format`` with strict tools under
    ``tool_choice`` "auto"): the model decides which, each is enforced."""
    if isinstance(syntax, GemmaSyntax):
        return answer  # the answer's grammar alone: Gemma's calls are not JSON
    start, end = _literal(syntax.start, special), _literal(syntax.end, special)
    if answer.kind == "json_schema":
        body = _json(json.loads(answer.source))
    elif answer.kind == "json_object":
        body = _json({"type": "object"})
    else:
        return answer  # a custom grammar stays as it is
    lines = [
        "start: answer | calls",
        f"answer: {body}",
        f'calls: ({start} "\\n" call "\\n" {end})+',
        *_call_rules(tools),
        _ANY_JSON,
    ]
    return GrammarSpec.lark("\n".join(lines), param=answer.param)


def special_markers(loaded: Any, syntax: "CallSyntax | GemmaSyntax") -> dict[str, int]:
    """The syntax's markers that llguidance sees as special tokens (an added token is one even
    where the tokenizer does not mark it special): a grammar names those by id."""
    from .grammar import compiler_for

    ll_tokenizer = compiler_for(loaded).tokenizer
    out = {}
    for marker in (syntax.start, syntax.end, getattr(syntax, "quote", syntax.end)):
        ids = loaded.tokenizer.encode(marker, add_special_tokens=False)
        if len(ids) == 1 and ll_tokenizer.is_special_token(ids[0]):
            out[marker] = int(ids[0])
    return out


__all__ = ["CallSyntax", "SYNTAX", "forced_call_grammar", "special_markers", "strict_call_grammar", "syntax_for"]
