"""OpenAI-style messages + tools + thinking toggle -> prompt tokens, through the model's own
chat template."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError
from .loader import LoadedModel
from .template import apply_chat_template
from .template_guard import check_prompt_size, check_rendered_size, check_template_kwargs


@dataclass
class ChatPrompt:
    """Plain values from the server: messages in the OpenAI chat shape (already validated)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    thinking: bool | None = None
    parallel_tool_calls: bool = True
    template_kwargs: dict[str, Any] = field(default_factory=dict)
    max_tool_calls: int | None = None  # the answer ends at this many calls
    # The request's reasoning effort ("low", "medium", "high"...), for templates that read one.
    reasoning_effort: str | None = None


@dataclass
class RenderedPrompt:
    tokens: list[int]
    text: str
    thinking: bool
    starts_in_reasoning: bool = False
    # Text the prompt already put in the assistant's mouth (a forced tool-call opening): the
    # engine feeds it to the parser before the first generated token.
    assistant_prefix: str = ""
    tools: list[dict[str, Any]] | None = None
    # tool_choice "none": calls the model writes anyway stay text; parallel_tool_calls false:
    # generation ends after the first call.
    parse_tools: bool = True
    max_tool_calls: int | None = None
    # The request's tool_choice ("required" or a named function forces a call; see
    # ``core.tool_grammar``).
    tool_choice: Any = None
    # Decoded images/audio (``core.vlm.MediaInputs``) in the order the text's placeholders
    # appear; the engine encodes them (``core.vlm.prompt_inputs``).
    media: Any = None


def _text_of(content: Any) -> str:
    """Flatten content parts to text (media parts are handled by the multimodal path)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if isinstance(part, dict) and part.get("type") in ("text", "input_text", "output_text"):
            parts.append(part.get("text") or "")
    return "".join(parts)


def _content_of(content: Any) -> Any:
    """Text, or -- where decoded media are present -- the parts a multimodal chat template
    renders: ``{"type": "text"}``, ``{"type": "image"}`` and ``{"type": "audio"}`` in order."""
    if not isinstance(content, list) or not any(
        isinstance(p, dict) and p.get("type") in ("image", "audio") for p in content
    ):
        return _text_of(content)
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("image", "audio"):
            parts.append({"type": kind})
        elif kind in ("text", "input_text", "output_text"):
            parts.append({"type": "text", "text": part.get("text") or ""})
    return parts


def _normalize_tool_calls(tool_calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Templates expect ``arguments`` as a mapping; OpenAI sends a JSON string."""
    out = []
    for call in tool_calls:
        call = copy.deepcopy(call)
        fn = call.get("function") or {}
        args = fn.get("arguments")
        if isinstance(args, str):
            try:
                fn["arguments"] = json.loads(args) if args.strip() else {}
            except ValueError:
                pass  # leave the raw string: the template prints it as is
        call["function"] = fn
        out.append(call)
    return out


def normalize_messages(messages: list[dict[str, Any]], loaded: LoadedModel) -> list[dict[str, Any]]:
    """Copy messages into what chat templates expect: text content, parsed tool-call arguments,
    prior reasoning kept or dropped as the model's family says, then the family's own history
    edits (``Family.prepare_history``).

    Reasoning: an assistant turn's reasoning (the ``reasoning_content``/``reasoning`` fields, or
    an inline block moved out of ``content``) is passed as ``reasoning_content`` where the
    family keeps it (``Family.keep_reasoning``; by default only in the turns after the last
    user message -- the tool loop in progress -- so that the model continues its own thought),
    and the template decides how to print it. Tool-call ids the family's template would refuse
    are rewritten, consistently in calls and results (``Family.valid_call_id``)."""
    from .parsers import KEEP_ALL, KEEP_NONE, split_reasoning

    family = loaded.family
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    ids = _CallIds(family)
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
        content = _content_of(message.get("content")) if role == "user" else _text_of(message.get("content"))
        if role == "assistant":
            content, inline = split_reasoning(content, loaded.parser_spec)
            reasoning = message.get("reasoning_content") or message.get("reasoning") or inline
            keep = family.keep_reasoning == KEEP_ALL or (family.keep_reasoning != KEEP_NONE and i > last_user)
            if keep and reasoning:
                msg["reasoning_content"] = reasoning
            if message.get("tool_calls"):
                msg["tool_calls"] = [ids.call(c) for c in _normalize_tool_calls(message["tool_calls"])]
        if role == "tool":
            if message.get("tool_call_id") is not None:
                msg["tool_call_id"] = ids.get(message["tool_call_id"])
            if message.get("name") is not None:
                msg["name"] = message["name"]
        msg["content"] = content
        out.append(msg)
    if family.prepare_history is not None:
        family.prepare_history(out)
    return out


class _CallIds:
    """Client tool-call ids, rewritten where the family's template would refuse them."""

    def __init__(self, family: Any) -> None:
        self.family = family
        self.map: dict[str, str] = {}

    def get(self, call_id: Any) -> Any:
        valid = self.family.valid_call_id
        if not isinstance(call_id, str) or valid is None or valid(call_id):
            return call_id
        if call_id not in self.map:
            self.map[call_id] = self.family.call_id()
        return self.map[call_id]

    def call(self, call: dict[str, Any]) -> dict[str, Any]:
        if "id" in call:
            call["id"] = self.get(call["id"])
        return call


def resolve_thinking(loaded: LoadedModel, requested: bool | None) -> bool:
    return loaded.thinking_enabled if requested is None else requested


def render(loaded: LoadedModel, prompt: ChatPrompt) -> RenderedPrompt:
    """Render through the tokenizer's chat template and tokenize."""
    from .vlm import collect_media

    tokenizer = loaded.tokenizer
    check_template_kwargs(prompt.template_kwargs, getattr(tokenizer, "chat_template", None))
    check_prompt_size(prompt.messages, prompt.tools, loaded.context_length)
    thinking = resolve_thinking(loaded, prompt.thinking)
    media = collect_media(prompt.messages)
    if media and getattr(loaded, "vlm", None) is None:
        raise InvalidRequestError(
            "this model does not accept images or audio (it has no vision/audio tower)",
            param="messages",
            code="unsupported_media",
        )
    messages = normalize_messages(prompt.messages, loaded)
    tools = prompt.tools if prompt.tools and prompt.tool_choice != "none" else None
    family = loaded.family
    kwargs: dict[str, Any] = dict(prompt.template_kwargs)
    kwargs.update(family.template_kwargs(thinking, prompt.reasoning_effort))
    if getattr(tokenizer, "chat_template", None) is None:
        text = "\n".join(f"{m['role']}: {_text_of(m['content'])}" for m in messages) + "\nassistant: "
    else:
        try:
            text = apply_chat_template(tokenizer, messages, tools, **kwargs)
        except Exception as exc:  # template errors are the caller's input problem
            raise InvalidRequestError(f"the chat template rejected these messages: {exc}", param="messages") from None
    parses_calls = family.parser is not None or family.markers(loaded.parser_spec)[2]
    prefix = family.forced_call(prompt.tool_choice) if tools and parses_calls else ""
    text += prefix
    check_rendered_size(text, loaded.context_length)
    tokens = tokenizer.encode(text, add_special_tokens=False)
    spec = loaded.parser_spec
    starts_in_reasoning = bool(spec.think_start) and text.rstrip().endswith(spec.think_start or "\0")
    return RenderedPrompt(
        tokens=list(tokens),
        text=text,
        thinking=thinking,
        starts_in_reasoning=starts_in_reasoning and not prefix,
        assistant_prefix=prefix,
        tools=tools,
        parse_tools=prompt.tool_choice != "none",
        max_tool_calls=1 if not prompt.parallel_tool_calls else prompt.max_tool_calls,
        tool_choice=prompt.tool_choice,
        media=media or None,
    )
