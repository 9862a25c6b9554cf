"""Anthropic Messages -> the chat prompt and sampling the core takes. Pure functions, no model.

- ``system`` becomes the leading system message;
- a user turn's ``tool_result`` blocks become ``tool`` messages (named after their call), in
  order, then its text and images one user message (images as the media layer reads them);
- an assistant turn's ``thinking`` becomes its ``reasoning_content`` (the family keeps or strips
  it as its template does), ``tool_use`` its ``tool_calls``; ``redacted_thinking`` carries
  nothing a local model can read and is dropped;
- every ``tool_result`` must answer a ``tool_use`` of the assistant turn just before it (400
  naming the block otherwise), and the last turn must be the user's (a prefilled assistant turn
  is refused: templates here cannot continue one).
"""

from __future__ import annotations

import json
from typing import Any

from ...core import ChatPrompt, SamplingParams
from ...errors import InvalidRequestError
from .. import rules
from .protocol import (
    CountTokensRequest,
    ImageBlock,
    MessageParam,
    MessagesRequest,
    RedactedThinkingBlock,
    TextBlock,
    ThinkingBlock,
    ThinkingEnabled,
    ToolChoiceAny,
    ToolChoiceNone,
    ToolChoiceTool,
    ToolResultBlock,
    ToolUseBlock,
)


def _image_part(block: ImageBlock) -> dict[str, Any]:
    return {"type": "image_url", "image_url": {"url": block.source.url_for_media()}}


def _result_text(block: ToolResultBlock) -> tuple[str, list[dict[str, Any]]]:
    """A tool result's text, and its images (which follow as a user message)."""
    if block.content is None:
        return "", []
    if isinstance(block.content, str):
        return block.content, []
    text = "".join(b.text for b in block.content if isinstance(b, TextBlock))
    images = [_image_part(b) for b in block.content if isinstance(b, ImageBlock)]
    return text, images


def _user_messages(message: MessageParam, i: int, calls: dict[str, str]) -> list[dict[str, Any]]:
    if isinstance(message.content, str):
        return [{"role": "user", "content": message.content}]
    out: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(message.content):
        if isinstance(block, ToolResultBlock):
            if block.tool_use_id not in calls:
                param = f"messages[{i}].content[{j}].tool_use_id"
                raise InvalidRequestError(
                    f"{param}: tool_result for unknown tool_use id {block.tool_use_id!r}; each tool_result must "
                    "answer a tool_use block of the assistant message just before it",
                    param=param,
                )
            text, images = _result_text(block)
            out.append({"role": "tool", "tool_call_id": block.tool_use_id, "name": calls[block.tool_use_id], "content": text})
            parts += images
        elif isinstance(block, TextBlock):
            parts.append({"type": "text", "text": block.text})
        elif isinstance(block, ImageBlock):
            parts.append(_image_part(block))
    if parts:
        if all(p["type"] == "text" for p in parts):
            out.append({"role": "user", "content": "".join(p["text"] for p in parts)})
        else:
            out.append({"role": "user", "content": parts})
    return out


def _assistant_message(message: MessageParam) -> tuple[dict[str, Any], dict[str, str]]:
    """The chat assistant message, and its calls (id -> tool name)."""
    if isinstance(message.content, str):
        return {"role": "assistant", "content": message.content}, {}
    text: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message.content:
        if isinstance(block, TextBlock):
            text.append(block.text)
        elif isinstance(block, ThinkingBlock):
            reasoning.append(block.thinking)
        elif isinstance(block, ToolUseBlock):
            arguments = json.dumps(block.input, ensure_ascii=False)
            calls.append({"id": block.id, "type": "function", "function": {"name": block.name, "arguments": arguments}})
        elif isinstance(block, RedactedThinkingBlock):
            continue
    out: dict[str, Any] = {"role": "assistant", "content": "".join(text)}
    if reasoning:
        out["reasoning_content"] = "".join(reasoning)
    if calls:
        out["tool_calls"] = calls
    return out, {c["id"]: c["function"]["name"] for c in calls}


def to_chat_messages(req: CountTokensRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    system = req.system_text()
    if system:
        messages.append({"role": "system", "content": system})
    calls: dict[str, str] = {}  # the calls of the assistant turn just before
    for i, message in enumerate(req.messages):
        if message.role == "assistant":
            converted, calls = _assistant_message(message)
            messages.append(converted)
        else:
            messages += _user_messages(message, i, calls)
            calls = {}
    if req.messages[-1].role != "user":
        param = f"messages[{len(req.messages) - 1}].role"
        raise InvalidRequestError(
            f"{param}: the last message must be the user's (continuing a prefilled assistant turn is not supported)",
            param=param,
        )
    return messages


def to_chat_prompt(req: CountTokensRequest) -> ChatPrompt:
    choice = req.tool_choice
    tool_choice: str | dict[str, Any] | None = None
    parallel: bool | None = None
    if isinstance(choice, ToolChoiceTool):
        tool_choice = rules.named_tool_choice(choice.name)
    elif isinstance(choice, ToolChoiceAny):
        tool_choice = "required"
    elif isinstance(choice, ToolChoiceNone):
        tool_choice = "none"
    elif choice is not None:
        tool_choice = "auto"
    if choice is not None and not isinstance(choice, ToolChoiceNone) and choice.disable_parallel_tool_use:
        parallel = False
    return rules.chat_prompt(
        to_chat_messages(req),
        tools=rules.chat_tools((t.name, t.description, t.input_schema) for t in req.tools or []),
        tool_choice=tool_choice,
        thinking=req.thinking_flag(),
        parallel_tool_calls=parallel,
    )


def to_sampling(req: MessagesRequest) -> SamplingParams:
    """Anthropic's ``max_tokens`` counts every output token, thinking included, as the core's
    budget does; ``thinking.budget_tokens`` caps the thinking within it (the core's thinking
    budget: at the cap the family's end-of-thinking marker is forced and the answer follows)."""
    thinking = req.thinking
    return SamplingParams(
        max_tokens=rules.budget(req.max_tokens),
        temperature=req.temperature,
        top_p=req.top_p,
        top_k=req.top_k,
        stop=rules.stop_tuple(req.stop_sequences),
        thinking_budget=thinking.budget_tokens if isinstance(thinking, ThinkingEnabled) else None,
    )
