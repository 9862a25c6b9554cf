"""Responses API without a model: the event encoder, item conversion, request validation and
the store, judged by the ``openai`` package's own types in strict mode.

``validate_stream`` and ``check_lifecycle`` are also used by the server tests
(``test_responses_server.py``).
"""

from __future__ import annotations

import json
import re
import typing
from typing import Annotated, Any

import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, Field, TypeAdapter

from lib_mlx.core.events import (
    Done,
    Failed,
    ReasoningDelta,
    TextDelta,
    ToolCallArgumentsDelta,
    ToolCallEnd,
    ToolCallStart,
    Usage,
)
from lib_mlx.errors import GenerationError, InvalidRequestError
from lib_mlx.server.responses.convert import items_to_messages, to_chat_prompt, with_instructions
from lib_mlx.server.responses.encoder import ResponseEncoder
from lib_mlx.server.responses.protocol import parse_request
from lib_mlx.server.responses.serving import response_skeleton
from lib_mlx.server.responses.store import ResponseStore

# --- judges (shared with the server tests) --------------------------------------------------

STREAM_EVENT = TypeAdapter(Annotated[typing.get_args(ResponseStreamEvent)[0], Field(discriminator="type")])
RESPONSE = TypeAdapter(Response)
TERMINAL = ("response.completed", "response.incomplete", "response.failed")


def assert_no_extra(value: Any, where: str = "$") -> None:
    """No field that the openai type does not declare (a misspelt field would pass silently)."""
    if isinstance(value, BaseModel):
        extra = value.__pydantic_extra__ or {}
        assert not extra, f"{where}: fields unknown to {type(value).__name__}: {sorted(extra)}"
        for name in type(value).model_fields:
            assert_no_extra(getattr(value, name), f"{where}.{name}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            assert_no_extra(item, f"{where}[{i}]")


def validate_event(event: dict[str, Any] | str) -> Any:
    raw = event if isinstance(event, str) else json.dumps(event)
    model = STREAM_EVENT.validate_json(raw, strict=True)
    assert_no_extra(model, json.loads(raw)["type"])
    return model


def validate_response(body: dict[str, Any] | str) -> Response:
    raw = body if isinstance(body, str) else json.dumps(body)
    model = RESPONSE.validate_json(raw, strict=True)
    assert_no_extra(model, "response")
    return model


_ITEM_GRAMMAR = {
    # (the summary events only when the request asks for ``reasoning.summary``)
    "reasoning": (
        r"response\.content_part\.added (?P<summary>response\.reasoning_summary_part\.added )?"
        r"(response\.reasoning_text\.delta (?(summary)response\.reasoning_summary_text\.delta ))*"
        r"response\.reasoning_text\.done response\.content_part\.done "
        r"(?(summary)response\.reasoning_summary_text\.done response\.reasoning_summary_part\.done )"
    ),
    "message": (
        r"response\.content_part\.added (response\.output_text\.delta )*"
        r"response\.output_text\.done response\.content_part\.done "
    ),
    "function_call": r"(response\.function_call_arguments\.delta )*response\.function_call_arguments\.done ",
}


def check_lifecycle(events: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole stream's contract; returns the final response.

    Gap-free ``sequence_number`` from 0; ``created``, ``in_progress``, items, one terminal event
    last; per item ``output_item.added``, its content events in the documented order,
    ``output_item.done``, with one ``item_id``/``output_index``/``content_index`` throughout;
    deltas add up to each ``.done`` text; the terminal response's output equals the done items.
    """
    for event in events:
        validate_event(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"], kinds[:3]
    assert kinds[-1] in TERMINAL and not any(k in TERMINAL for k in kinds[:-1]), kinds
    response_id = events[0]["response"]["id"]
    for e in (events[0], events[1], events[-1]):
        assert e["response"]["id"] == response_id
    assert events[0]["response"]["status"] == events[1]["response"]["status"] == "in_progress"
    final = events[-1]["response"]

    by_item: dict[int, list[dict[str, Any]]] = {}
    order: list[int] = []
    for e in events[2:-1]:
        index = e["output_index"]
        if index not in by_item:
            assert e["type"] == "response.output_item.added", f"item {index} starts with {e['type']}"
            order.append(index)
        by_item.setdefault(index, []).append(e)
    assert order == list(range(len(order))), order

    done_items = []
    for index in order:
        item_events = by_item[index]
        added, done = item_events[0], item_events[-1]
        assert done["type"] == "response.output_item.done", [e["type"] for e in item_events]
        kind, item_id = added["item"]["type"], added["item"]["id"]
        assert done["item"]["type"] == kind and done["item"]["id"] == item_id
        middle = item_events[1:-1]
        sequence = "".join(e["type"] + " " for e in middle)
        assert re.fullmatch(_ITEM_GRAMMAR[kind], sequence), f"{kind} item events out of order: {sequence}"
        for e in middle:
            assert e["item_id"] == item_id
            assert e.get("content_index", 0) == 0
        deltas = "".join(e["delta"] for e in middle if e["type"].endswith(".delta") and "summary" not in e["type"])
        if kind == "reasoning":
            content = [e for e in middle if "summary" not in e["type"]]
            assert content[-2]["text"] == deltas == done["item"]["content"][0]["text"]
            assert content[0]["part"] == {"type": "reasoning_text", "text": ""}
            assert content[-1]["part"] == {"type": "reasoning_text", "text": deltas}
            summary = [e for e in middle if "summary" in e["type"]]
            if summary:  # the same text again, as the one summary part
                assert all(e["summary_index"] == 0 for e in summary)
                assert "".join(e["delta"] for e in summary if e["type"].endswith(".delta")) == deltas
                assert summary[-2]["text"] == deltas and summary[-1]["part"] == {"type": "summary_text", "text": deltas}
                assert done["item"]["summary"] == [{"type": "summary_text", "text": deltas}]
            else:
                assert done["item"]["summary"] == []
        elif kind == "message":
            assert middle[-2]["text"] == deltas == done["item"]["content"][0]["text"]
            assert middle[0]["part"]["text"] == "" and middle[-1]["part"]["text"] == deltas
        else:
            assert middle[-1]["arguments"] == deltas == done["item"]["arguments"]
            assert added["item"]["call_id"] == done["item"]["call_id"]
        done_items.append(done["item"])
    assert final["output"] == done_items
    validate_response(final)
    return final


# --- the encoder ----------------------------------------------------------------------------

USAGE = Usage(prompt_tokens=11, completion_tokens=7, reasoning_tokens=3)


class _Req:
    """The parsed request a skeleton is built from."""

    @staticmethod
    def make(**fields: Any):
        return parse_request({"input": "hi", **fields})


def run(events: list[Any], **request: Any) -> tuple[ResponseEncoder, list[dict[str, Any]]]:
    encoder = ResponseEncoder(base=response_skeleton(_Req.make(**request), "tiny"))
    out = encoder.start()
    for event in events:
        out += encoder.encode(event)
    return encoder, out


CASES = [
    (
        "reasoning then answer",
        [ReasoningDelta("Let me "), ReasoningDelta("think."), TextDelta("The answer"), TextDelta(" is 4."), Done("stop", USAGE)],
        ["reasoning", "message"],
        "response.completed",
    ),
    (
        "a function call",
        [
            ReasoningDelta("I need the weather."),
            ToolCallStart(0, "call_1", "get_weather"),
            ToolCallArgumentsDelta(0, '{"city": '),
            ToolCallArgumentsDelta(0, '"Paris"}'),
            ToolCallEnd(0, "call_1", "get_weather", '{"city": "Paris"}'),
            Done("tool_calls", USAGE),
        ],
        ["reasoning", "function_call"],
        "response.completed",
    ),
    (
        "two parallel calls, the second only announced at its end",
        [
            ToolCallStart(0, "call_a", "f"),
            ToolCallArgumentsDelta(0, "{}"),
            ToolCallEnd(0, "call_a", "f", "{}"),
            ToolCallEnd(1, "call_b", "g", '{"x": 1}'),
            Done("tool_calls", USAGE),
        ],
        ["function_call", "function_call"],
        "response.completed",
    ),
    (
        "text, a call, text again",
        [
            TextDelta("Checking."),
            ToolCallStart(0, "call_1", "f"),
            ToolCallEnd(0, "call_1", "f", '{"a": [1, 2]}'),
            TextDelta("Done."),
            Done("tool_calls", USAGE),
        ],
        ["message", "function_call", "message"],
        "response.completed",
    ),
    (
        "cut by max_output_tokens",
        [ReasoningDelta("hmm"), TextDelta("The ans"), Done("length", USAGE)],
        ["reasoning", "message"],
        "response.incomplete",
    ),
    (
        "cut inside a call",
        [ToolCallStart(0, "call_1", "f"), ToolCallArgumentsDelta(0, '{"a": '), Done("length", USAGE)],
        ["function_call"],
        "response.incomplete",
    ),
    ("nothing generated", [Done("stop", Usage(prompt_tokens=5))], [], "response.completed"),
    ("empty deltas open no item", [TextDelta(""), ReasoningDelta(""), Done("stop", USAGE)], [], "response.completed"),
    (
        "a generation failure mid-answer",
        [TextDelta("Hel"), Failed(GenerationError("generation failed: boom"))],
        ["message"],
        "response.failed",
    ),
    ("cancelled by a server stop", [TextDelta("Hel"), Done("cancelled", USAGE)], ["message"], "response.failed"),
]


@pytest.mark.parametrize(("events", "kinds", "terminal"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_encoder_lifecycle(events, kinds, terminal):
    encoder, out = run(events)
    final = check_lifecycle(out)
    assert out[-1]["type"] == terminal
    assert [item["type"] for item in final["output"]] == kinds
    assert encoder.response == final and encoder.finished
    assert encoder.encode(TextDelta("late")) == []  # nothing after the end


def test_encoder_reasoning_item_opens_its_content_part_first():
    """openai-node's accumulator throws ``missing content at index 0`` on a reasoning delta
    whose part was never added (issue 17.1)."""
    _, out = run(CASES[0][1])
    kinds = [e["type"] for e in out]
    first_delta = kinds.index("response.reasoning_text.delta")
    assert kinds[first_delta - 2 : first_delta] == ["response.output_item.added", "response.content_part.added"]
    added, done = out[first_delta - 1], out[kinds.index("response.reasoning_text.done") + 1]
    assert added["part"] == {"type": "reasoning_text", "text": ""}
    assert (done["type"], done["part"]) == ("response.content_part.done", {"type": "reasoning_text", "text": "Let me think."})
    check_lifecycle(out)


@pytest.mark.parametrize("summary", ["auto", "concise", "detailed"])
def test_encoder_reasoning_summary(summary):
    """``reasoning.summary`` fills ``summary`` with the reasoning text and streams its events
    (issue 17.5); without it, ``summary`` stays empty and no summary event is sent."""
    _, out = run(CASES[0][1], reasoning={"summary": summary})
    final = validate_response(check_lifecycle(out))
    assert final.reasoning.summary == summary
    assert [(p.type, p.text) for p in final.output[0].summary] == [("summary_text", "Let me think.")]
    kinds = [e["type"] for e in out]
    assert kinds.count("response.reasoning_summary_text.delta") == 2
    for kind in ("part.added", "text.done", "part.done"):
        assert kinds.count(f"response.reasoning_summary_{kind}") == 1

    _, plain = run(CASES[0][1])
    assert check_lifecycle(plain)["output"][0]["summary"] == []
    assert not [e for e in plain if "summary" in e["type"]]


def test_encoder_final_response_fields():
    _, out = run(CASES[0][1], instructions="Be brief.", metadata={"k": "v"}, max_output_tokens=50)
    final = validate_response(out[-1]["response"])
    assert final.status == "completed" and final.error is None and final.incomplete_details is None
    assert final.output_text == "The answer is 4."
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and reasoning.summary == []
    assert [c.model_dump() for c in reasoning.content] == [{"type": "reasoning_text", "text": "Let me think."}]
    message = final.output[1]
    assert message.role == "assistant" and message.status == "completed"
    assert message.content[0].annotations == []
    assert final.usage.model_dump() == {
        "input_tokens": 11,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0, "cache_write_tokens_details": None},
        "output_tokens": 7,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 18,
    }
    assert final.instructions == "Be brief." and final.metadata == {"k": "v"} and final.max_output_tokens == 50
    assert final.id.startswith("resp_") and final.object == "response"
    # created/in_progress carry the same response, still empty
    assert out[0]["response"]["output"] == [] and out[0]["response"]["usage"] is None


def test_encoder_function_call_item():
    _, out = run(CASES[1][1], tools=[{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}])
    final = validate_response(out[-1]["response"])
    call = final.output[1]
    assert (call.type, call.call_id, call.name, call.arguments, call.status) == (
        "function_call",
        "call_1",
        "get_weather",
        '{"city": "Paris"}',
        "completed",
    )
    assert call.id.startswith("fc_")
    assert final.tools[0].name == "get_weather" and final.tool_choice == "auto"


def test_encoder_incomplete_and_failed_details():
    _, out = run(CASES[4][1])
    final = out[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["output"][1]["status"] == "incomplete"

    _, out = run(CASES[8][1])
    final = out[-1]["response"]
    assert final["status"] == "failed" and final["usage"] is None
    assert final["error"] == {"code": "server_error", "message": "generation failed: boom"}


def test_encoder_tops_up_arguments_the_deltas_missed():
    events = [
        ToolCallStart(0, "c", "f"),
        ToolCallArgumentsDelta(0, '{"a": '),
        ToolCallEnd(0, "c", "f", '{"a": 1}'),
        Done("tool_calls", USAGE),
    ]
    _, out = run(events)
    check_lifecycle(out)  # asserts the deltas add up to the done arguments
    assert [e["delta"] for e in out if e["type"] == "response.function_call_arguments.delta"] == ['{"a": ', "1}"]


def test_encoder_events_are_snapshots():
    """Events handed out earlier do not change as the response grows (they may be kept)."""
    _, out = run(CASES[0][1])
    added = next(e for e in out if e["type"] == "response.output_item.added")
    assert added["item"]["status"] == "in_progress" and added["item"]["content"] == []


# --- input conversion -----------------------------------------------------------------------

CONVERSIONS = [
    ("a string", "hi", [{"role": "user", "content": "hi"}]),
    (
        "text parts join, developer stays",
        [
            {"role": "developer", "content": [{"type": "input_text", "text": "Be terse."}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
        ],
        [{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "ab"}],
    ),
    (
        "an image part stays a part",
        [{"role": "user", "content": [{"type": "input_text", "text": "what?"}, {"type": "input_image", "image_url": "data:image/png;base64,AA"}]}],
        [{"role": "user", "content": [{"type": "text", "text": "what?"}, {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}],
    ),
    (
        "reasoning, message and calls make one assistant turn; outputs become tool messages",
        [
            {"role": "user", "content": "weather?"},
            {"type": "reasoning", "id": "rs_1", "summary": [], "content": [{"type": "reasoning_text", "text": "think"}]},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check.", "annotations": []}]},
            {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'},
            {"type": "function_call", "call_id": "c2", "name": "get_time", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
            {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "noon"}]},
        ],
        [
            {"role": "user", "content": "weather?"},
            {
                "role": "assistant",
                "content": "Let me check.",
                "reasoning_content": "think",
                "tool_calls": [
                    {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
                    {"id": "c2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
                ],
            },
            {"role": "tool", "tool_call_id": "c1", "content": "sunny", "name": "get_weather"},
            {"role": "tool", "tool_call_id": "c2", "content": "noon", "name": "get_time"},
        ],
    ),
    (
        "a call with no assistant text before it",
        [{"role": "user", "content": "x"}, {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}],
        [
            {"role": "user", "content": "x"},
            {"role": "assistant", "content": "", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        ],
    ),
]


@pytest.mark.parametrize(("given", "expected"), [c[1:] for c in CONVERSIONS], ids=[c[0] for c in CONVERSIONS])
def test_items_to_messages(given, expected):
    assert items_to_messages(parse_request({"input": given}).input_items()) == expected


def test_chat_prompt_tools_choice_and_thinking():
    req = parse_request(
        {
            "input": "hi",
            "instructions": "Be brief.",
            "tools": [{"type": "function", "name": "f", "description": "does f", "parameters": {"type": "object"}, "strict": True}],
            "tool_choice": {"type": "function", "name": "f"},
            "parallel_tool_calls": False,
            "reasoning": {"effort": "none"},
        }
    )
    prompt = to_chat_prompt(req, req.input_items())
    assert prompt.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    # strict travels with the tool: its arguments are enforced while decoding
    assert prompt.tools == [{"type": "function", "function": {"name": "f", "description": "does f", "parameters": {"type": "object"}, "strict": True}}]
    assert prompt.tool_choice == {"type": "function", "function": {"name": "f"}}
    assert prompt.thinking is False and prompt.parallel_tool_calls is False
    assert parse_request({"input": "x", "reasoning": {"effort": "high"}}).thinking_flag() is True
    assert parse_request({"input": "x", "reasoning": {"effort": "none"}, "thinking": True}).thinking_flag() is True
    assert parse_request({"input": "x"}).thinking_flag() is None


def test_instructions_merge_into_a_leading_system_message():
    merged = with_instructions("A.", [{"role": "developer", "content": "B."}, {"role": "user", "content": "x"}])
    assert merged == [{"role": "system", "content": "A.\n\nB."}, {"role": "user", "content": "x"}]


BAD_REQUESTS = [
    ({}, "input"),
    ({"input": []}, "input"),
    ({"input": [{"role": "user"}]}, "input[0].content"),
    ({"input": [{"type": "web_search_call", "id": "x"}]}, "input[0]"),
    ({"input": [{"type": "item_reference"}]}, "input[0].id"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": "x", "tool_choice": "sometimes"}, "tool_choice"),
    ({"input": "x", "reasoning": {"effort": "huge"}}, "reasoning.effort"),
    ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
    ({"input": "x", "temperature": 3}, "temperature"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "metadata": {"k": 1}}, "metadata.k"),
]


@pytest.mark.parametrize(("body", "param"), BAD_REQUESTS, ids=[p for _, p in BAD_REQUESTS])
def test_request_validation_names_the_param(body, param):
    with pytest.raises(InvalidRequestError) as info:
        parse_request(body)
    assert info.value.param == param and info.value.status == 400


def test_tool_choice_must_name_a_given_tool():
    with pytest.raises(InvalidRequestError, match="unknown function"):
        parse_request({"input": "x", "tools": [{"type": "function", "name": "f"}], "tool_choice": {"type": "function", "name": "g"}})
    with pytest.raises(InvalidRequestError, match="requires tools"):
        parse_request({"input": "x", "tool_choice": "required"})


# --- the store ------------------------------------------------------------------------------


def _stored(i: int, pad: int = 0) -> dict[str, Any]:
    return {"id": f"resp_{i}", "output": [{"type": "message", "text": "x" * pad}]}


def test_store_is_bounded_least_recently_used_first():
    store = ResponseStore(max_entries=2)
    store.put(_stored(1), [])
    store.put(_stored(2), [])
    assert store.get("resp_1") is not None  # now the most recent
    store.put(_stored(3), [])
    assert store.get("resp_2") is None and store.get("resp_1") is not None and len(store) == 2
    assert store.delete("resp_1") and not store.delete("resp_1")


def test_store_byte_bound():
    store = ResponseStore(max_bytes=1000)
    assert not store.put(_stored(1, pad=2000), [])  # alone over the limit: not kept
    store.put(_stored(2, pad=400), [{"role": "user", "content": "a"}])
    store.put(_stored(3, pad=400), [])
    store.put(_stored(4, pad=400), [])
    assert store.get("resp_2") is None and store.get("resp_4") is not None


def test_store_conversation_prepends_input_then_output():
    store = ResponseStore()
    store.put({"id": "r", "output": [{"type": "message", "role": "assistant", "content": "o"}]}, [{"role": "user", "content": "i"}])
    entry = store.get("r")
    assert entry is not None
    assert entry.conversation() == [{"role": "user", "content": "i"}, {"type": "message", "role": "assistant", "content": "o"}]


def test_store_resolves_item_references_until_the_response_goes():
    """The AI SDK (``store`` on) sends earlier output items as ``item_reference`` (issue 17.2)."""
    store = ResponseStore(max_entries=1)
    output = [
        {"id": "rs_1", "type": "reasoning", "summary": [], "content": [{"type": "reasoning_text", "text": "t"}]},
        {"id": "fc_1", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
    ]
    store.put({"id": "resp_1", "output": output}, [{"role": "user", "content": "i"}])
    user = {"type": "message", "role": "user", "content": "next"}
    refs = [{"type": "item_reference", "id": "rs_1"}, {"type": "item_reference", "id": "fc_1"}, user]
    assert store.resolve(refs) == [*output, user]
    parsed = parse_request({"input": refs}).input_items()
    assert parsed[:2] == refs[:2]
    with pytest.raises(InvalidRequestError) as info:
        store.resolve([user, {"type": "item_reference", "id": "msg_gone"}])
    assert info.value.param == "input[1].id" and "msg_gone" in info.value.message
    store.put({"id": "resp_2", "output": []}, [])  # evicts resp_1, and its items with it
    with pytest.raises(InvalidRequestError):
        store.resolve(refs[:1])
