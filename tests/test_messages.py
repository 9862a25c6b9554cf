"""The Anthropic Messages API (issue 18), judged by the real ``anthropic`` SDK.

Everything goes through the running server: tiny Qwen3 models whose weights script greedy
decoding (chains keyed on the prompt's last token: ``"\\n"`` after a thinking-on generation
prompt, ``"\\n\\n"`` after the thinking-off one), and the tiny multimodal Gemma 4 for images.
Every streamed event is validated strictly against the SDK's own types (``anthropic.types``),
and the raw SSE frames against the event grammar.
"""

from __future__ import annotations

import base64
import contextlib
import json
from typing import Any

import httpx
import pytest
from conftest import Served, serving

from lib_mlx import LibMlxRuntime

anthropic = pytest.importorskip("anthropic")
from anthropic.types import Message, RawMessageStreamEvent  # noqa: E402
from pydantic import BaseModel, TypeAdapter  # noqa: E402

REASONING, ANSWER = "The user greets me.", "Hello there!"
ANSWER_PIECES = ["Hello", " there", "!"]
Q_CALL_WEATHER = ["<tool_call>", '\n{"name": "get_weather", ', '"arguments": {"city": ', '"Par', 'is"']
CHAINS: dict[str, dict[str, list[str]]] = {
    "reason": {
        "\n": ["<think>", "\nThe user", " greets", " me", ".\n", "</think>", "\n\n", *ANSWER_PIECES],
        "\n\n": ANSWER_PIECES,
    },
    "tools": {
        "\n": [
            "<think>", "\nWeather", " and time", ".\n", "</think>",
            *Q_CALL_WEATHER, ', "days": ', "3", "}}\n", "</tool_call>",
            '\n<tool_call>\n{"name": "get_time", "arguments": ', '{"tz": "CET"}}', "\n</tool_call>",
        ],
        "\n\n": ["It", " is", " sunny", "."],  # thinking off: the answer after the tool results
    },
    "forced": {
        " ": ['{"city": ', '"Ro', 'me"}', "}\n", "</tool_call>"],  # after '..."arguments": '
        "\n": ['{"name": "get_time", ', '"arguments": {}}\n', "</tool_call>"],  # after '<tool_call>\n'
    },
}
WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city"],
    },
}
TIME = {"name": "get_time", "description": "Current time", "input_schema": {"type": "object", "properties": {"tz": {"type": "string"}}}}
TOOLS = [WEATHER, TIME]
HELLO = [{"role": "user", "content": "Hello"}]
OFF = {"type": "disabled"}
ON = {"type": "enabled", "budget_tokens": 32}


@pytest.fixture(scope="module")
def lab(make_model):
    """``lab(name) -> Served``: each scripted model loaded and served once a module."""
    runtime = LibMlxRuntime()
    stack = contextlib.ExitStack()
    served: dict[str, Served] = {}

    def get(name: str) -> Served:
        if name not in served:
            served[name] = stack.enter_context(serving(runtime, make_model("qwen3", chains=CHAINS[name])))
        return served[name]

    yield get
    stack.close()
    runtime.close()


def client(s: Served, **kwargs: Any):
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", 60)
    kwargs.setdefault("api_key", s.info.api_key)
    return anthropic.Anthropic(base_url=s.info.base_url, _strict_response_validation=True, **kwargs)


def create(s: Served, messages=HELLO, **kwargs: Any) -> Message:
    kwargs.setdefault("max_tokens", 64)
    kwargs.setdefault("extra_body", {"temperature": 0.0})  # this SDK no longer types sampling fields
    return client(s).messages.create(model=s.info.model_id, messages=messages, **kwargs)


# --- strict event checks --------------------------------------------------------------------

EVENT = TypeAdapter(RawMessageStreamEvent)


def assert_no_extras(model: Any, where: str = "") -> None:
    """Nothing in the payload that the SDK's type does not declare (a misspelt field passes
    pydantic silently otherwise)."""
    if isinstance(model, BaseModel):
        assert not model.model_extra, f"{where}: unknown fields {sorted(model.model_extra)}"
        for name in type(model).model_fields:
            assert_no_extras(getattr(model, name), f"{where}.{name}")
    elif isinstance(model, list):
        for i, item in enumerate(model):
            assert_no_extras(item, f"{where}[{i}]")


def raw_stream(s: Served, body: dict[str, Any]) -> list[dict[str, Any]]:
    """POST a streamed request; check every frame (``event:`` names its data's type, each
    validates as the SDK's event type) and the event grammar; returns the data objects."""
    body = {"model": s.info.model_id, "max_tokens": 64, "temperature": 0.0, **body, "stream": True}
    headers = {"x-api-key": s.info.api_key, "anthropic-version": "2023-06-01"}
    r = httpx.post(f"{s.info.base_url}/v1/messages", json=body, headers=headers, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events: list[dict[str, Any]] = []
    for frame in r.text.split("\n\n"):
        if not frame.strip():
            continue
        lines = dict(line.split(": ", 1) for line in frame.splitlines())
        data = json.loads(lines["data"])
        assert lines["event"] == data["type"], frame
        if data["type"] not in ("ping", "error"):
            assert_no_extras(EVENT.validate_python(data), data["type"])
        events.append(data)
    check_grammar([e for e in events if e["type"] != "ping"])
    return events


def check_grammar(events: list[dict[str, Any]]) -> None:
    assert events[0]["type"] == "message_start" and events[0]["message"]["content"] == []
    assert [e["type"] for e in events[-2:]] == ["message_delta", "message_stop"]
    open_index = None
    next_index = 0
    for event in events[1:-2]:
        kind = event["type"]
        if kind == "content_block_start":
            assert open_index is None and event["index"] == next_index
            open_index, next_index = event["index"], next_index + 1
        elif kind == "content_block_delta":
            assert event["index"] == open_index
        else:
            assert kind == "content_block_stop" and event["index"] == open_index, event
            open_index = None
    assert open_index is None


def blocks_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The content blocks a plain client builds from the deltas (``partial_json`` joined)."""
    blocks: list[dict[str, Any]] = []
    for event in events:
        if event["type"] == "content_block_start":
            blocks.append({**event["content_block"], "deltas": []})
        elif event["type"] == "content_block_delta":
            block, delta = blocks[event["index"]], event["delta"]
            if delta["type"] == "text_delta":
                block["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                block["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                block["signature"] = delta["signature"]
            else:
                assert delta["type"] == "input_json_delta"
                block["deltas"].append(delta["partial_json"])
    for block in blocks:
        deltas = block.pop("deltas")
        if block["type"] == "tool_use":
            block["input"] = json.loads("".join(deltas)) if deltas else {}
            block["n_deltas"] = len(deltas)
    return blocks


def as_param(message: Message) -> dict[str, Any]:
    """The reply handed back as the next request's assistant turn, blocks exactly as received."""
    return {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]}


def kinds(message: Message) -> list[str]:
    return [b.type for b in message.content]


# --- create and stream ------------------------------------------------------------------------


def test_create_keeps_thinking_apart_from_the_answer(lab):
    s = lab("reason")
    on = create(s, thinking=ON)
    assert_no_extras(on, "message")
    assert kinds(on) == ["thinking", "text"]
    assert on.content[0].thinking == REASONING and on.content[0].signature
    assert on.content[1].text == ANSWER
    assert on.stop_reason == "end_turn" and on.stop_sequence is None
    assert on.id.startswith("msg_") and on.role == "assistant" and on.model == s.info.model_id
    assert on.usage.output_tokens == 3 + 4 + 3  # markers, reasoning pieces, separator, answer
    default = create(s)  # thinking follows the load config (on)
    assert kinds(default) == ["thinking", "text"]
    off = create(s, thinking=OFF)
    assert kinds(off) == ["text"] and off.content[0].text == ANSWER
    assert "<think>" not in off.content[0].text


def test_budget_tokens_caps_the_thinking_and_the_answer_follows(lab):
    s = lab("reason")
    capped = create(s, thinking={"type": "enabled", "budget_tokens": 2})
    assert kinds(capped) == ["thinking", "text"]
    thought = capped.content[0].thinking
    assert thought == "The user greets"  # two reasoning tokens, then the end-of-thinking marker
    assert capped.content[1].text == ANSWER and capped.stop_reason == "end_turn"
    assert create(s, thinking=ON).content[0].thinking == REASONING  # a budget it stays within


@pytest.mark.parametrize("thinking", [ON, OFF], ids=["thinking", "no-thinking"])
def test_stream_events_are_typed_and_add_up_to_the_message(lab, thinking):
    s = lab("reason")
    events = raw_stream(s, {"messages": HELLO, "thinking": thinking})
    blocks = blocks_of(events)
    whole = create(s, thinking=thinking)
    assert blocks == [b.model_dump(exclude_none=True) for b in whole.content]
    deltas = [e["delta"]["type"] for e in events if e["type"] == "content_block_delta"]
    if thinking is ON:
        assert deltas.count("thinking_delta") == 4 and deltas.count("signature_delta") == 1
        assert deltas.index("signature_delta") < deltas.index("text_delta")  # thinking closes first
    else:
        assert "thinking_delta" not in deltas
    assert deltas.count("text_delta") == 3
    final = events[-2]
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == whole.usage.output_tokens
    assert any(e["type"] == "ping" for e in events)


def test_the_sdk_stream_helper_and_final_message(lab):
    s = lab("reason")
    with client(s).messages.stream(
        model=s.info.model_id, messages=HELLO, max_tokens=64, thinking=ON, extra_body={"temperature": 0.0}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == ANSWER
    assert kinds(final) == ["thinking", "text"] and final.content[0].thinking == REASONING
    assert final.content[0].signature == create(s, thinking=ON).content[0].signature
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == 10


def test_stop_sequences_and_max_tokens(lab):
    s = lab("reason")
    stopped = create(s, thinking=OFF, stop_sequences=["zzz", " there"])
    assert stopped.content[0].text == "Hello"
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == " there"
    events = raw_stream(s, {"messages": HELLO, "thinking": OFF, "stop_sequences": [" there"]})
    assert events[-2]["delta"] == {"stop_reason": "stop_sequence", "stop_sequence": " there"}
    assert blocks_of(events) == [{"type": "text", "text": "Hello"}]
    cut = create(s, thinking=OFF, max_tokens=2)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    assert cut.content[0].text == "Hello there"


# --- tools ------------------------------------------------------------------------------------


def test_a_tool_loop_with_streamed_input_json(lab):
    s = lab("tools")
    first = create(s, tools=TOOLS, thinking=ON)
    assert kinds(first) == ["thinking", "tool_use", "tool_use"]
    assert first.stop_reason == "tool_use"
    calls = first.content[1:]
    assert [(c.name, c.input) for c in calls] == [("get_weather", {"city": "Paris", "days": 3}), ("get_time", {"tz": "CET"})]

    events = raw_stream(s, {"messages": HELLO, "tools": TOOLS, "thinking": ON})
    streamed = blocks_of(events)
    assert [(b["name"], b["input"]) for b in streamed[1:]] == [(c.name, c.input) for c in calls]
    assert streamed[1]["n_deltas"] > 1  # the arguments arrive as the model writes them
    assert events[-2]["delta"]["stop_reason"] == "tool_use"

    results = {"get_weather": "21 C and sunny", "get_time": "10:00"}
    history = [
        *HELLO,
        as_param(first),  # thinking (with its signature) and tool_use blocks handed back
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": c.id, "content": results[c.name]} for c in calls],
        },
    ]
    answer = create(s, history, tools=TOOLS, thinking=OFF)
    assert kinds(answer) == ["text"] and answer.content[0].text == "It is sunny."
    assert answer.stop_reason == "end_turn"
    prompt = render_text(s, history, tools=TOOLS, thinking=OFF)
    assert "21 C and sunny" in prompt and "10:00" in prompt and '"city": "Paris"' in prompt

    single = create(s, tools=TOOLS, thinking=ON, tool_choice={"type": "auto", "disable_parallel_tool_use": True})
    assert [b.name for b in single.content if b.type == "tool_use"] == ["get_weather"]
    assert single.stop_reason == "tool_use"


def test_tool_choice_any_and_a_named_tool_are_enforced(lab):
    s = lab("forced")
    named = create(s, tools=TOOLS, tool_choice={"type": "tool", "name": "get_weather"})
    assert [(b.type, b.name, b.input) for b in named.content] == [("tool_use", "get_weather", {"city": "Rome"})]
    assert named.stop_reason == "tool_use"
    events = raw_stream(s, {"messages": HELLO, "tools": TOOLS, "tool_choice": {"type": "tool", "name": "get_weather"}})
    (block,) = blocks_of(events)
    assert block["input"] == {"city": "Rome"} and block["n_deltas"] > 1
    forced = create(s, tools=TOOLS, tool_choice={"type": "any"})
    assert [(b.name, b.input) for b in forced.content] == [("get_time", {})]
    assert forced.stop_reason == "tool_use"
    with pytest.raises(anthropic.BadRequestError) as info:
        create(s, tools=TOOLS, tool_choice={"type": "tool", "name": "nope"})
    assert "nope" in info.value.body["error"]["message"]


# --- tokens and the prompt cache --------------------------------------------------------------


def render_text(s: Served, messages, **kwargs: Any) -> str:
    from lib_mlx.server.messages.convert import to_chat_prompt
    from lib_mlx.server.messages.protocol import MessagesRequest

    req = MessagesRequest.model_validate({"messages": messages, "max_tokens": 64, **kwargs})
    return s.runtime._entry(s.handle).core.render(to_chat_prompt(req)).text


def test_count_tokens_is_the_prompt_and_a_second_turn_reads_the_cache(lab):
    s = lab("reason")
    c = client(s)
    conversation = [{"role": "user", "content": "Tell me a story about a cache that remembers."}]
    system = "You are terse."
    counted = c.messages.count_tokens(model=s.info.model_id, messages=conversation, system=system, tools=TOOLS, thinking=OFF)
    thinking = c.messages.count_tokens(model=s.info.model_id, messages=conversation, system=system, tools=TOOLS)
    assert thinking.input_tokens != counted.input_tokens  # the toggle shapes the prompt it counts
    first = create(s, conversation, system=system, tools=TOOLS, thinking=OFF)
    assert counted.input_tokens == first.usage.input_tokens + first.usage.cache_read_input_tokens
    assert first.usage.cache_creation_input_tokens == 0
    turn2 = [*conversation, as_param(first), {"role": "user", "content": "And then?"}]
    second = create(s, turn2, system=system, tools=TOOLS, thinking=OFF)
    assert second.usage.cache_read_input_tokens > 0  # the first turn's prompt, reused
    recount = c.messages.count_tokens(model=s.info.model_id, messages=turn2, system=system, tools=TOOLS, thinking=OFF)
    assert recount.input_tokens == second.usage.input_tokens + second.usage.cache_read_input_tokens
    # the whole first prompt but its thinking-off generation prompt, which history renders without
    assert counted.input_tokens - 8 <= second.usage.cache_read_input_tokens < counted.input_tokens


# --- errors -----------------------------------------------------------------------------------


def post(s: Served, body: Any, *, path: str = "/v1/messages", headers: dict[str, str] | None = None) -> httpx.Response:
    headers = {"x-api-key": s.info.api_key, "anthropic-version": "2023-06-01", "content-type": "application/json", **(headers or {})}
    kwargs = {"content": body} if isinstance(body, bytes) else {"json": body}
    return httpx.post(f"{s.info.base_url}{path}", headers=headers, timeout=60, **kwargs)


def anthropic_error(r: httpx.Response, status: int, kind: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
    assert body["error"]["type"] == kind, body
    return body["error"]["message"]


BAD = [
    ({"messages": HELLO}, "max_tokens"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}], "max_tokens": 8}, "messages[0].content[0]"),
    (
        {"messages": [{"role": "user", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}], "max_tokens": 8},
        "messages[0]",
    ),
    (
        {
            "messages": [
                *HELLO,
                {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_time", "input": {}}]},
                {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_2", "content": "10:00"}]},
            ],
            "max_tokens": 8,
            "tools": TOOLS,
        },
        "messages[2].content[0].tool_use_id",
    ),
    ({"messages": HELLO, "max_tokens": 8, "thinking": {"type": "enabled", "budget_tokens": 8}}, "budget_tokens"),
    ({"messages": HELLO, "max_tokens": 8, "temperature": 1.5}, "temperature"),
    ({"messages": [*HELLO, {"role": "assistant", "content": "Sure"}], "max_tokens": 8}, "messages[1].role"),
]


@pytest.mark.parametrize(("body", "field"), BAD, ids=[f for _, f in BAD])
def test_bad_input_is_an_anthropic_error_naming_the_field(lab, body, field):
    s = lab("reason")
    message = anthropic_error(post(s, body), 400, "invalid_request_error")
    assert field in message, message


def test_errors_keep_anthropics_shape_and_the_server_goes_on(lab):
    s = lab("reason")
    with pytest.raises(anthropic.BadRequestError) as info:
        client(s).messages.create(model=s.info.model_id, messages=HELLO, max_tokens=0)
    assert info.value.body["error"]["type"] == "invalid_request_error"
    huge = json.dumps({"messages": [{"role": "user", "content": "x" * (33 * 1024 * 1024)}], "max_tokens": 8}).encode()
    anthropic_error(post(s, huge), 413, "request_too_large")
    anthropic_error(post(s, b"{not json"), 400, "invalid_request_error")
    anthropic_error(post(s, {"messages": HELLO, "max_tokens": 8, "model": "other"}), 404, "not_found_error")
    anthropic_error(post(s, {"messages": HELLO}, path="/v1/messages/count_tokens", headers={"x-api-key": "wrong"}), 401, "authentication_error")
    anthropic_error(post(s, {"messages": HELLO}, headers={"Host": "evil.example"}), 403, "permission_error")
    with pytest.raises(anthropic.AuthenticationError):
        client(s, api_key="wrong").messages.create(model=s.info.model_id, messages=HELLO, max_tokens=8)
    # OpenAI routes keep OpenAI's shape.
    r = httpx.post(f"{s.info.base_url}/v1/chat/completions", json={}, headers={"x-api-key": s.info.api_key}, timeout=30)
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param", "code"}
    # The bearer token works here too, and the server still answers.
    bearer = post(s, {"messages": HELLO, "max_tokens": 8, "thinking": OFF}, headers={"x-api-key": "", "Authorization": f"Bearer {s.info.api_key}"})
    assert bearer.status_code == 200 and bearer.json()["content"][0]["text"] == ANSWER


def test_queue_full_is_a_rate_limit_error_with_retry_after():
    from lib_mlx.errors import QueueFullError
    from lib_mlx.server.errors import error_response

    r = error_response(QueueFullError(), "/v1/messages")
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert json.loads(r.body) == {"type": "error", "error": {"type": "rate_limit_error", "message": QueueFullError().message}}


# --- images -----------------------------------------------------------------------------------


def test_an_image_block_on_the_multimodal_model(serve, tmp_path_factory):
    pytest.importorskip("mlx_vlm")
    from lib_mlx.tiny_models import multimodal as mm

    model_dir = mm.build_gemma4_multimodal(tmp_path_factory.mktemp("mm") / "gemma4-mm", answer="It is red.", reasoning="I see a square")
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": base64.b64encode(mm.png_bytes(64, 48)).decode()}}
    messages = [{"role": "user", "content": [{"type": "text", "text": "What is in here?"}, image]}]
    with serve(model_dir) as s:
        reply = create(s, messages)
        assert [b.type for b in reply.content] == ["thinking", "text"]
        assert reply.content[0].thinking == "I see a square" and reply.content[1].text == "It is red."
        counted = client(s).messages.count_tokens(model=s.info.model_id, messages=messages)
        assert counted.input_tokens == reply.usage.input_tokens + reply.usage.cache_read_input_tokens
        text_only = client(s).messages.count_tokens(
            model=s.info.model_id, messages=[{"role": "user", "content": "What is in here?"}]
        )
        assert counted.input_tokens >= text_only.input_tokens + 12  # the image's soft tokens
        events = raw_stream(s, {"messages": messages})
        assert blocks_of(events)[1] == {"type": "text", "text": "It is red."}
        url = {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}}
        message = anthropic_error(post(s, {"messages": [{"role": "user", "content": [url]}], "max_tokens": 8}), 400, "invalid_request_error")
        assert "messages[0].content[0]" in message  # remote media are off unless allow_remote_media
        bad = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "bm90IGFuIGltYWdl"}}
        message = anthropic_error(post(s, {"messages": [{"role": "user", "content": [bad]}], "max_tokens": 8}), 400, "invalid_request_error")
        assert "messages[0].content[0]" in message
