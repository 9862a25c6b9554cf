"""``null`` for an optional request field is its absence, for every field of every request
model alike (issue 17.6): SDKs send ``"stream": null``, ``"store": null``, ``"tools": null``
for what their user left unset. A required field's ``null`` stays a 400 naming it."""

from __future__ import annotations

import inspect
from typing import Any

import pydantic
import pytest

from lib_mlx.server.chat import protocol as chat
from lib_mlx.server.responses import protocol as responses
from lib_mlx.server.wire import WireModel

# The least each model needs to be valid.
MINIMAL: dict[str, dict[str, Any]] = {
    "ChatCompletionRequest": {"messages": [{"role": "user", "content": "hi"}]},
    "ChatMessage": {"role": "user", "content": "hi"},
    "ContentPart": {"type": "text", "text": "hi"},
    "FunctionDef": {"name": "f"},
    "Tool": {"type": "function", "function": {"name": "f"}},
    "NamedFunction": {"name": "f"},
    "NamedToolChoice": {"type": "function", "function": {"name": "f"}},
    "ToolCallFunction": {"name": "f"},
    "ToolCallIn": {"function": {"name": "f"}},
    "StreamOptions": {},
    "ResponsesRequest": {"input": "hi"},
    "MessageItem": {"role": "user", "content": "hi"},
    "FunctionCallItem": {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
    "FunctionCallOutputItem": {"type": "function_call_output", "call_id": "c", "output": "x"},
    "ReasoningText": {"type": "reasoning_text", "text": "t"},
    "ReasoningItem": {"type": "reasoning"},
    "ItemReference": {"type": "item_reference", "id": "msg_1"},
    "FunctionTool": {"type": "function", "name": "f"},
    "NamedFunctionChoice": {"type": "function", "name": "f"},
    "ReasoningParam": {},
}


def _models() -> list[tuple[str, type[WireModel]]]:
    found = {}
    for module in (chat, responses):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, pydantic.BaseModel) and cls.__module__ == module.__name__:
                found[f"{module.__name__.split('.')[-2]}.{name}"] = cls
    return sorted(found.items())


CASES = [
    (f"{key}.{field}", cls, field)
    for key, cls in _models()
    for field, info in cls.model_fields.items()
    if not info.is_required()
]


def test_every_request_model_is_covered():
    models = _models()
    assert {cls.__name__ for _, cls in models} <= set(MINIMAL), "add the new model to MINIMAL"
    assert all(issubclass(cls, WireModel) for _, cls in models)
    assert len(CASES) > 40


@pytest.mark.parametrize(("cls", "field"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_null_is_the_default(cls: type[WireModel], field: str) -> None:
    base = MINIMAL[cls.__name__]
    if field in base:
        pytest.skip("part of the minimal body")
    given = cls.model_validate({**base, field: None})
    assert getattr(given, field) == getattr(cls.model_validate(base), field)


@pytest.mark.parametrize(
    ("cls", "body", "loc"),
    [
        (chat.ChatCompletionRequest, {"messages": None}, ("messages",)),
        (responses.ResponsesRequest, {"input": None}, ("input",)),
        (responses.FunctionCallItem, {"type": "function_call", "call_id": None, "name": "f", "arguments": "{}"}, ("call_id",)),
    ],
)
def test_null_for_a_required_field_is_still_refused(cls, body, loc) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        cls.model_validate(body)
    assert info.value.errors()[0]["loc"][: len(loc)] == loc


def test_whole_requests_with_nulls_parse_like_absent_ones() -> None:
    chat_body = {
        "messages": [{"role": "user", "content": "hi", "name": None}],
        "stream": None, "stream_options": None, "tools": None, "tool_choice": None, "n": None,
        "stop": None, "temperature": None, "ignore_eos": None, "max_tokens": None,
    }  # fmt: skip
    parsed = chat.ChatCompletionRequest.model_validate(chat_body)
    assert parsed.stream is False and parsed.ignore_eos is False and parsed.tools is None
    body = {
        "input": [{"type": None, "role": "user", "content": "hi"}, {"type": "reasoning", "summary": None}],
        "stream": None, "store": None, "reasoning": {"effort": None, "summary": None}, "tools": None,
        "background": None, "metadata": None,
    }  # fmt: skip
    request = responses.parse_request(body)
    assert request.stream is False and request.store is True
    assert request.input_items()[0]["role"] == "user" and request.input_items()[1]["summary"] == []
