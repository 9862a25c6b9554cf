"""OpenAI-style messages + tools + thinking toggle -> prompt tokens, through the model's own
chat template."""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidRequestError
from .loader import LoadedModel


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
    and no reasoning from prior assistant turns.

    Turn stripping: an assistant turn before the last user message loses its reasoning (the
    ``reasoning_content``/``reasoning`` fields and inline blocks in ``content``), as the
    families' templates drop it. An assistant turn after the last user message -- the tool
    loop now in progress -- keeps its reasoning as ``reasoning_content`` (the field, or the
    inline block moved out of ``content``), and the template decides: Qwen3 and Gemma 4 render
    it back so that the model continues its own thought."""
    from .parsers import split_reasoning

    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    out: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = message.get("role")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role}
        content = _content_of(message.get("content")) if role == "user" else _text_of(message.get("content"))
        if role == "assistant":
            content, inline = split_reasoning(content, loaded.parser_spec)
            reasoning = message.get("reasoning_content") or message.get("reasoning") or inline
            if i > last_user and reasoning:
                msg["reasoning_content"] = reasoning
            if message.get("tool_calls"):
                msg["tool_calls"] = _normalize_tool_calls(message["tool_calls"])
        if role == "tool":
            if message.get("tool_call_id") is not None:
                msg["tool_call_id"] = message["tool_call_id"]
            if message.get("name") is not None:
                msg["name"] = message["name"]
        msg["content"] = content
        out.append(msg)
    if loaded.parser_spec.tool_parser == "gemma4":
        _drop_preamble_before_tool_results(out)
    return out


def _drop_preamble_before_tool_results(messages: list[dict[str, Any]]) -> None:
    """Gemma 4's template prints an assistant message's ``content`` *after* its tool results and
    then closes the turn, so a call that came with a text preamble ("Let me check.") would leave
    the prompt without a place for the model to answer the results. The preamble was already
    shown to the user; drop it from calls whose results follow."""
    for msg, following in zip(messages, messages[1:]):
        if msg["role"] == "assistant" and msg.get("tool_calls") and following["role"] == "tool":
            msg["content"] = ""


def resolve_thinking(loaded: LoadedModel, requested: bool | None) -> bool:
    return loaded.thinking_enabled if requested is None else requested


def render(loaded: LoadedModel, prompt: ChatPrompt) -> RenderedPrompt:
    """Render through the tokenizer's chat template and tokenize."""
    from .vlm import collect_media

    tokenizer = loaded.tokenizer
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
    kwargs: dict[str, Any] = dict(prompt.template_kwargs)
    kwargs["enable_thinking"] = thinking
    if getattr(tokenizer, "chat_template", None) is None:
        text = "\n".join(f"{m['role']}: {_text_of(m['content'])}" for m in messages) + "\nassistant: "
    else:
        try:
            text = tokenizer.apply_chat_template(
                messages, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs
            )
        except Exception as exc:  # template errors are the caller's input problem
            raise InvalidRequestError(f"the chat template rejected these messages: {exc}", param="messages") from None
    prefix = _forced_tool_call_prefix(loaded, tools, prompt.tool_choice)
    text += prefix
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


# How each tool-parser family opens a call, and how it names the function.
_CALL_OPENINGS: dict[str, tuple[str, str]] = {
    "json_tools": ("<tool_call>\n", '{{"name": "{name}", "arguments": '),
    "gemma4": ("<|tool_call>", "call:{name}"),
}


def _forced_tool_call_prefix(loaded: LoadedModel, tools: list[dict[str, Any]] | None, tool_choice: Any) -> str:
    """``tool_choice`` "required" or a named function: open the family's tool-call syntax at the
    end of the prompt so the model must write a call (to that function)."""
    if not tools or tool_choice in (None, "auto", "none"):
        return ""
    opening = _CALL_OPENINGS.get(loaded.parser_spec.tool_parser or "")
    if opening is None:
        return ""
    start, named = opening
    name = None
    if isinstance(tool_choice, dict):
        name = (tool_choice.get("function") or {}).get("name") or tool_choice.get("name")
    return start + (named.format(name=name) if name else "")
