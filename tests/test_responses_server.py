"""/v1/responses over a real server and the real ``openai`` client, with scripted tiny models.

Each family's model is scripted (``tiny_models`` chains) so that greedy decoding emits, after a
thinking-on prompt, reasoning, a short message and a call to ``add`` (all three output item
kinds in one response); after a named ``tool_choice`` (the call opened in the prompt) just the
call's arguments; and after the tool result (the family's prompt ending for it) a plain answer. Every streamed event is judged by the
``openai`` package's own types in strict mode (``test_responses_encoder.check_lifecycle``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import pytest

from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig, ServerInfo
from lib_mlx.core import MlxCore
from lib_mlx.tiny_models import TRIGGERS
from test_responses_encoder import check_lifecycle, validate_response

TOOLS = [
    {
        "type": "function",
        "name": "add",
        "description": "Add two integers.",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
        },
    }
]
QUESTION = "What is 2 + 3?"
REASONING = "I should add them."
MESSAGE = "Let me add."
ANSWER = "The sum is 5."
ANSWER_PIECES = ["The sum", " is 5", "."]
# A named tool_choice opens the call in the prompt, so the model writes only the call. The round
# trip needs a turn without text: Gemma 4's template renders an assistant turn's text after its
# tool results and closes the turn there, so a turn with text would not continue after them.
CALL_ADD = {"type": "function", "name": "add"}


@dataclass(frozen=True)
class Family:
    name: str
    chains: dict[str, list[str]]
    # The template's rendering of a tool result, as a pattern around the output "5".
    tool_result: str
    # The request fields that make the turn after a tool result reach the answer chain.
    after_tool: dict[str, Any]


FAMILIES = {
    "qwen3": Family(
        "qwen3",
        chains={
            TRIGGERS["qwen3"]["thinking"]: [
                "<think>", "\nI should", " add them", ".\n", "</think>",
                "Let me", " add.",
                "<tool_call>", '{"name": "add", "arguments": ', '{"a": 2, ', '"b": 3}', "}", "</tool_call>",
            ],
            TRIGGERS["qwen3"]["no_thinking"]: ANSWER_PIECES,
        },  # fmt: skip
        tool_result=r"<tool_response>\s*5\s*</tool_response>",
        after_tool={"reasoning": {"effort": "none"}},
    ),
    "gemma4_text": Family(
        "gemma4_text",
        chains={
            TRIGGERS["gemma4_text"]["thinking"]: [
                "<|channel>", "thought", "\nI should", " add them.", "<channel|>",
                "Let me", " add.",
                "<|tool_call>", "call:add", "{a:", "2", ",b:", "3", "}", "<tool_call|>",
            ],
            TRIGGERS["gemma4_text"]["after_tool"]: ANSWER_PIECES,
        },  # fmt: skip
        tool_result=r"<\|tool_response>.*5.*<tool_response\|>",
        after_tool={},
    ),
}


@dataclass
class Server:
    family: Family
    info: ServerInfo

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.info.base_url}/v1",
            api_key=self.info.api_key,
            _strict_response_validation=True,
            max_retries=0,
            timeout=60,
        )

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.info.api_key}"}

    def stream_raw(self, **body: Any) -> list[dict[str, Any]]:
        """POST a streaming request; every frame's ``event:`` line must name its data's type."""
        events = []
        with httpx.stream(
            "POST", f"{self.info.base_url}/v1/responses", json={**body, "stream": True}, headers=self.headers, timeout=60
        ) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            frame: dict[str, str] = {}
            for line in response.iter_lines():
                if line.startswith(":"):
                    continue  # keepalive comment
                if not line:
                    if frame:
                        assert "event" in frame, f"frame without an event line: {frame}"
                        data = json.loads(frame["data"])
                        assert frame["event"] == data["type"]
                        events.append(data)
                    frame = {}
                    continue
                key, _, value = line.partition(": ")
                assert key in ("event", "data") and key not in frame, line
                frame[key] = value
        return events


@pytest.fixture(scope="module", params=list(FAMILIES))
def server(request, make_model) -> Iterator[Server]:
    family = FAMILIES[request.param]
    model_dir = make_model(family.name, chains=family.chains)
    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(model_dir)))
        info = runtime.start_server(handle, MlxServerConfig(port=0))
        yield Server(family, info)
    finally:
        runtime.close()


def _first_turn(**extra: Any) -> dict[str, Any]:
    return {"input": QUESTION, "tools": TOOLS, **extra}


# --- streaming -------------------------------------------------------------------------------


def test_stream_lifecycle_validates_strictly(server: Server):
    events = server.stream_raw(**_first_turn())
    final = check_lifecycle(events)
    assert events[-1]["type"] == "response.completed" and final["status"] == "completed"
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call"]
    reasoning, message, call = final["output"]
    assert reasoning["content"][0]["text"].strip() == REASONING
    assert message["content"][0]["text"] == MESSAGE
    assert call["name"] == "add" and json.loads(call["arguments"]) == {"a": 2, "b": 3}
    assert call["call_id"] and call["status"] == "completed"
    arg_deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
    assert len(arg_deltas) > 1  # streamed as the model writes them, not in one piece
    usage = final["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert 0 < usage["output_tokens_details"]["reasoning_tokens"] < usage["output_tokens"]
    assert usage["output_tokens"] == len(server.family.chains[TRIGGERS[server.family.name]["thinking"]])


def test_stream_helper_final_response(server: Server):
    client = server.client()
    text: list[str] = []
    reasoning: list[str] = []
    arguments: list[str] = []
    with client.responses.stream(model=server.info.model_id, input=QUESTION, tools=TOOLS) as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                text.append(event.delta)
            elif event.type == "response.reasoning_text.delta":
                reasoning.append(event.delta)
            elif event.type == "response.function_call_arguments.delta":
                arguments.append(event.delta)
        final = stream.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(text) == MESSAGE
    reasoning_item = next(item for item in final.output if item.type == "reasoning")
    assert reasoning_item.content is not None
    assert "".join(c.text for c in reasoning_item.content) == "".join(reasoning)
    assert "".join(reasoning).strip() == REASONING
    call = next(item for item in final.output if item.type == "function_call")
    assert call.arguments == "".join(arguments)


def test_stream_incomplete_at_max_output_tokens(server: Server):
    events = server.stream_raw(**_first_turn(max_output_tokens=3))
    final = check_lifecycle(events)
    assert events[-1]["type"] == "response.incomplete"
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 3
    assert final["output"][-1]["status"] == "incomplete"


# --- non-streaming, store, round trip --------------------------------------------------------


def test_create_body_validates_and_matches_stream(server: Server):
    raw = httpx.post(f"{server.info.base_url}/v1/responses", json=_first_turn(), headers=server.headers, timeout=60)
    assert raw.status_code == 200
    body = validate_response(raw.text)
    assert body.status == "completed" and body.output_text == MESSAGE
    assert [item.type for item in body.output] == ["reasoning", "message", "function_call"]
    assert body.usage is not None and body.usage.input_tokens_details.cache_write_tokens >= 0
    assert body.tools[0].name == "add" and body.parallel_tool_calls is True

    # the typed client, strict, agrees
    again = server.client().responses.create(model=server.info.model_id, input=QUESTION, tools=TOOLS)
    assert again.output_text == MESSAGE and again.usage == body.usage


def test_function_call_round_trip(server: Server, monkeypatch: pytest.MonkeyPatch):
    rendered: list[str] = []
    original = MlxCore.render

    def spy(self: MlxCore, prompt: Any):
        result = original(self, prompt)
        rendered.append(result.text)
        return result

    monkeypatch.setattr(MlxCore, "render", spy)
    client = server.client()
    first = client.responses.create(
        model=server.info.model_id, input=QUESTION, tools=TOOLS, tool_choice=CALL_ADD, instructions="Use tools."
    )
    assert [item.type for item in first.output] == ["function_call"]
    call = first.output[0]
    assert call.type == "function_call" and call.name == "add" and json.loads(call.arguments) == {"a": 2, "b": 3}

    second = client.responses.create(
        model=server.info.model_id,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "5"}],
        tools=TOOLS,
        **server.family.after_tool,
    )
    assert second.status == "completed" and second.output_text == ANSWER
    assert second.previous_response_id == first.id
    assert [item.type for item in second.output] == ["message"]

    prompt = rendered[-1]
    # earlier input and output prepended, the tool result rendered by the family's template
    assert QUESTION in prompt and "add" in prompt
    assert re.search(server.family.tool_result, prompt, re.DOTALL), prompt
    # instructions do not carry over to a continuation
    assert "Use tools." in rendered[-2] and "Use tools." not in prompt
    assert second.usage is not None and second.usage.input_tokens > first.usage.input_tokens


def test_streamed_response_is_stored_and_continues(server: Server):
    events = server.stream_raw(**_first_turn(tool_choice=CALL_ADD))
    final = events[-1]["response"]
    client = server.client()
    fetched = client.responses.retrieve(final["id"])
    assert fetched.model_dump(exclude_none=True) == validate_response(final).model_dump(exclude_none=True)
    call = final["output"][-1]
    events = server.stream_raw(
        previous_response_id=final["id"],
        input=[{"type": "function_call_output", "call_id": call["call_id"], "output": "5"}],
        tools=TOOLS,
        **server.family.after_tool,
    )
    assert check_lifecycle(events)["output"][0]["content"][0]["text"] == ANSWER


def test_get_delete_and_not_found(server: Server):
    client = server.client()
    created = client.responses.create(model=server.info.model_id, input=QUESTION, metadata={"run": "1"}, max_output_tokens=2)
    assert client.responses.retrieve(created.id) == created
    client.responses.delete(created.id)
    for call in (lambda: client.responses.retrieve(created.id), lambda: client.responses.delete(created.id)):
        with pytest.raises(openai.NotFoundError) as info:
            call()
        assert info.value.status_code == 404
        assert info.value.body["code"] == "not_found" and info.value.body["type"] == "invalid_request_error"
        assert created.id in info.value.body["message"]

    with pytest.raises(openai.NotFoundError) as info:
        client.responses.create(model=server.info.model_id, input="x", previous_response_id="resp_missing")
    assert info.value.body["param"] == "previous_response_id"

    unstored = client.responses.create(model=server.info.model_id, input=QUESTION, store=False, max_output_tokens=1)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "function_call_output", "output": "5"}]}, "input[0].call_id"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
        ({"input": "x", "max_output_tokens": "many"}, "max_output_tokens"),
    ],
)
def test_bad_requests_are_400_naming_the_param(server: Server, body: dict[str, Any], param: str):
    response = httpx.post(f"{server.info.base_url}/v1/responses", json=body, headers=server.headers, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_unknown_model_is_404(server: Server):
    with pytest.raises(openai.NotFoundError) as info:
        server.client().responses.create(model="no-such-model", input="x")
    assert info.value.body["code"] == "model_not_found"


def test_item_references_stand_for_stored_items(server: Server, monkeypatch: pytest.MonkeyPatch):
    """Turn 2 as the AI SDK sends it with ``store`` on: earlier items by id (issue 17.2). The
    prompt equals the one ``previous_response_id`` renders."""
    rendered: list[str] = []
    original = MlxCore.render
    monkeypatch.setattr(MlxCore, "render", lambda self, prompt: rendered.append(original(self, prompt).text) or original(self, prompt))
    client = server.client()
    first = client.responses.create(model=server.info.model_id, input=QUESTION, tools=TOOLS, tool_choice=CALL_ADD)
    call = first.output[-1]
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "5"}
    by_id = client.responses.create(
        model=server.info.model_id,
        input=[{"role": "user", "content": QUESTION}, *({"type": "item_reference", "id": i.id} for i in first.output), result],
        tools=TOOLS,
        **server.family.after_tool,
    )
    assert by_id.output_text == ANSWER
    by_previous = client.responses.create(
        model=server.info.model_id, previous_response_id=first.id, input=[result], tools=TOOLS, **server.family.after_tool
    )
    assert rendered[-1] == rendered[-2] and by_previous.usage.input_tokens == by_id.usage.input_tokens

    response = httpx.post(
        f"{server.info.base_url}/v1/responses",
        json={"input": [{"role": "user", "content": "x"}, {"type": "item_reference", "id": "msg_unknown"}]},
        headers=server.headers,
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "input[1].id" and "msg_unknown" in response.json()["error"]["message"]
