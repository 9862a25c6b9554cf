"""Responses input items -> the chat messages, tools and toggles the core renders.

Items arrive as plain dicts: the request's (validated) input, and stored output of earlier
responses when ``previous_response_id`` continues a conversation. Pure functions, no model.
"""

from __future__ import annotations

from typing import Any

from ...core import ChatPrompt
from ...errors import InvalidRequestError
from .. import rules
from .protocol import ResponsesRequest

_TEXT_PARTS = ("input_text", "output_text", "text")


def _part_to_chat(part: dict[str, Any]) -> dict[str, Any] | None:
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": part.get("text") or ""}
    if kind == "refusal":
        return {"type": "text", "text": part.get("refusal") or ""}
    if kind == "input_image":
        image: dict[str, Any] = {"url": part["image_url"]}
        if part.get("detail"):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_audio":
        return {"type": "input_audio", "input_audio": part["input_audio"]}
    return None


def content_to_chat(content: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
    """Message content in the chat shape: a string when it is all text, else chat parts."""
    if isinstance(content, str):
        return content
    parts = [p for p in (_part_to_chat(part) for part in content) if p is not None]
    if all(p["type"] == "text" for p in parts):
        return "".join(p["text"] for p in parts)
    return parts


def _text_of(content: str | list[dict[str, Any]]) -> str:
    converted = content_to_chat(content)
    if isinstance(converted, str):
        return converted
    return "".join(p.get("text", "") for p in converted if p["type"] == "text")


def _reasoning_text(item: dict[str, Any]) -> str:
    parts = item.get("content") or item.get("summary") or []
    return "".join(p.get("text", "") for p in parts)


def items_to_messages(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses items -> OpenAI chat messages.

    ``function_call`` items join the assistant message before them (or start one), as a chat
    assistant turn carries its text and its ``tool_calls`` together; ``function_call_output``
    becomes a ``tool`` message named after its call; a ``reasoning`` item rides on the next
    assistant message as ``reasoning_content`` (the core strips prior reasoning as the
    family's template expects).
    """
    messages: list[dict[str, Any]] = []
    names: dict[str, str] = {}
    reasoning: str | None = None
    # Index of the assistant message that function calls may still join.
    open_assistant: int | None = None

    def assistant(content: str) -> dict[str, Any]:
        nonlocal reasoning
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if reasoning:
            message["reasoning_content"] = reasoning
        reasoning = None
        return message

    for i, item in enumerate(items):
        kind = item.get("type", "message")
        if kind == "message":
            role = item["role"]
            if role == "assistant":
                messages.append(assistant(_text_of(item["content"])))
                open_assistant = len(messages) - 1
            else:
                messages.append({"role": role, "content": content_to_chat(item["content"])})
                open_assistant = None
        elif kind == "reasoning":
            reasoning = (reasoning or "") + _reasoning_text(item)
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item.get("arguments") or ""},
            }
            names[item["call_id"]] = item["name"]
            if open_assistant is None:
                messages.append(assistant(""))
                open_assistant = len(messages) - 1
            messages[open_assistant].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            message = {"role": "tool", "tool_call_id": item["call_id"], "content": _text_of(item["output"])}
            if item["call_id"] in names:
                message["name"] = names[item["call_id"]]
            messages.append(message)
            open_assistant = None
        else:
            raise InvalidRequestError(f"input item type {kind!r} is not supported", param=f"input[{i}].type")
    return messages


def with_instructions(instructions: str | None, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``instructions`` as the leading system message (merged into one already there, since
    chat templates honour only a first system message)."""
    if not instructions:
        return messages
    if messages and messages[0]["role"] in ("system", "developer") and isinstance(messages[0]["content"], str):
        first = {"role": "system", "content": f"{instructions}\n\n{messages[0]['content']}"}
        return [first, *messages[1:]]
    return [{"role": "system", "content": instructions}, *messages]


def tools_to_chat(req: ResponsesRequest) -> list[dict[str, Any]] | None:
    """Flat Responses function tools -> chat ``{"type": "function", "function": {...}}``."""
    tools = rules.chat_tools((t.name, t.description, t.parameters) for t in req.tools or [])
    for tool, given in zip(tools or [], req.tools or []):
        if given.strict:
            tool["function"]["strict"] = True  # its arguments are enforced (core.tool_grammar)
    return tools


def tool_choice_to_chat(req: ResponsesRequest) -> str | dict[str, Any] | None:
    choice = req.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    return rules.named_tool_choice(choice.name)


def to_chat_prompt(req: ResponsesRequest, items: list[dict[str, Any]]) -> ChatPrompt:
    """The whole conversation (earlier items + this request's input) as a core prompt."""
    prompt = rules.chat_prompt(
        with_instructions(req.instructions, items_to_messages(items)),
        tools=tools_to_chat(req),
        tool_choice=tool_choice_to_chat(req),
        thinking=req.thinking_flag(),
        reasoning_effort=req.reasoning.effort if req.reasoning is not None else None,
        parallel_tool_calls=req.parallel_tool_calls,
        kwargs=req.chat_template_kwargs,
    )
    prompt.max_tool_calls = req.max_tool_calls
    return prompt
