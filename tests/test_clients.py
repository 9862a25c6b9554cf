"""The client matrix (issue 17): the SDKs and frameworks people build on, each used as its
documentation shows, against the real server with scripted tiny models.

Two servers run for the whole module:

* ``chat`` -- a Qwen3 model that, thinking on (the default), reasons "The user greets me." and
  answers "Hello there!" (any turn: its chain keys on the generation prompt's last token);
* ``tools`` -- a Gemma 4 model that reasons "I need the weather", calls
  ``get_weather(city="Paris")`` and, after the tool result (Gemma 4's prompt then ends the tool
  response), answers "It is sunny in Paris." -- a two-step tool loop that ends by itself.

Their ``generation_config.json`` asks for temperature 0, so a client's default request decodes
greedily (Gemma 4's softcapped chains are exact only then). The Python clients run in this
process; the Node clients run as scripts under ``tests/node`` (``npm ci`` once, into the
gitignored ``node_modules``). A client that cannot be imported or installed is skipped on a
developer's machine and fails in CI (``CI`` set).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import serving

from lib_mlx import LibMlxRuntime
from lib_mlx.tiny_models import TRIGGERS

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no cost map download

API_KEY = "sk-local-test"
REASONING, ANSWER = "The user greets me.", "Hello there!"
TOOL_REASONING, TOOL_ANSWER = "I need the weather", "It is sunny in Paris."
QUESTION = "What is the weather in Paris?"
CHAT_CHAINS = {
    TRIGGERS["qwen3"]["thinking"]: ["<think>", "\nThe user", " greets", " me", ".\n", "</think>", "\n\n", "Hello", " there", "!"],
    TRIGGERS["qwen3"]["no_thinking"]: ["Hello", " there", "!"],
}  # fmt: skip
TOOLS_CHAINS = {
    TRIGGERS["gemma4_text"]["thinking"]: [
        "<|channel>", "thought", "\nI need", " the weather", "<channel|>",
        "<|tool_call>", "call:get_weather{", "city:", '<|"|>', "Par", 'is<|"|>', "}", "<tool_call|>", "<|tool_response>",
    ],
    TRIGGERS["gemma4_text"]["after_tool"]: ["It", " is", " sunny", " in Paris", "."],
}  # fmt: skip
WEATHER_PARAMETERS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Current weather for a city", "parameters": WEATHER_PARAMETERS},
}
NODE_DIR = Path(__file__).parent / "node"


@dataclass(frozen=True)
class Endpoint:
    base_url: str  # with /v1, as every client wants it
    model: str


@dataclass(frozen=True)
class Matrix:
    chat: Endpoint
    tools: Endpoint


def weather(city: str) -> str:
    return f"sunny in {city}"


def _greedy(model_dir: Path, out: Path) -> Path:
    shutil.copytree(model_dir, out)
    config = json.loads((out / "generation_config.json").read_text())
    config["temperature"] = 0.0
    (out / "generation_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def matrix(make_model, tmp_path_factory) -> Iterator[Matrix]:
    root = tmp_path_factory.mktemp("clients")
    chat = _greedy(make_model("qwen3", chains=CHAT_CHAINS), root / "chat")
    tools = _greedy(make_model("gemma4_text", chains=TOOLS_CHAINS), root / "tools")
    runtime = LibMlxRuntime()
    with contextlib.ExitStack() as stack:
        endpoints = []
        for name, path in (("chat", chat), ("tools", tools)):
            served = stack.enter_context(
                serving(runtime, path, model_id=f"tiny-{name}", api_key=API_KEY, queue_limit=4)
            )
            endpoints.append(Endpoint(f"{served.info.base_url}/v1", f"tiny-{name}"))
        yield Matrix(*endpoints)
    runtime.close()


def need(module: str) -> Any:
    """Import a client; in CI a missing client fails the test instead of skipping it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"client {module!r} is not installed ({exc}); `pip install -e '.[test]'`")
        pytest.skip(f"client {module!r} is not installed: {exc}")


# --- openai-python ---------------------------------------------------------------------------------
def test_openai_python(matrix: Matrix) -> None:
    openai = need("openai")
    client = openai.OpenAI(base_url=matrix.chat.base_url, api_key=API_KEY, max_retries=0, _strict_response_validation=True)
    hello = [{"role": "user", "content": "Hi"}]

    reply = client.chat.completions.create(model=matrix.chat.model, messages=hello)
    message = reply.choices[0].message
    assert (message.content, message.model_extra["reasoning_content"]) == (ANSWER, REASONING)
    assert reply._request_id and reply._request_id.startswith("req_")
    assert reply.usage.completion_tokens_details.reasoning_tokens == 6  # <think>, 4 pieces, </think>

    with client.chat.completions.stream(model=matrix.chat.model, messages=hello) as stream:
        deltas = [event.delta for event in stream if event.type == "content.delta"]
        final = stream.get_final_completion()
    assert "".join(deltas) == final.choices[0].message.content == ANSWER and len(deltas) > 1

    # a second turn carries the first
    again = client.chat.completions.create(
        model=matrix.chat.model, messages=[*hello, {"role": "assistant", "content": ANSWER}, {"role": "user", "content": "Again"}]
    )
    assert again.choices[0].message.content == ANSWER and again.usage.prompt_tokens > reply.usage.prompt_tokens

    with client.responses.stream(model=matrix.chat.model, input="Hi", reasoning={"summary": "auto"}) as stream:
        kinds = [event.type for event in stream]
        response = stream.get_final_response()
    assert response.output_text == ANSWER
    reasoning = response.output[0]
    assert reasoning.type == "reasoning" and [s.text for s in reasoning.summary] == [REASONING]
    assert "response.reasoning_summary_text.delta" in kinds
    follow = client.responses.create(model=matrix.chat.model, input="Again", previous_response_id=response.id)
    assert follow.output_text == ANSWER and follow.usage.input_tokens > response.usage.input_tokens

    assert client.models.retrieve(matrix.chat.model).id == matrix.chat.model

    tools = openai.OpenAI(base_url=matrix.tools.base_url, api_key=API_KEY, max_retries=0, _strict_response_validation=True)
    asked = [{"role": "user", "content": QUESTION}]
    first = tools.chat.completions.create(model=matrix.tools.model, messages=asked, tools=[WEATHER])
    call = first.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    result = {"role": "tool", "tool_call_id": call.id, "content": weather("Paris")}
    second = tools.chat.completions.create(
        model=matrix.tools.model, messages=[*asked, first.choices[0].message.model_dump(exclude_none=True), result], tools=[WEATHER]
    )
    assert second.choices[0].message.content == TOOL_ANSWER


# --- openai-agents ---------------------------------------------------------------------------------
def test_openai_agents(matrix: Matrix) -> None:
    agents = need("agents")
    from openai import AsyncOpenAI
    from openai.types.responses import ResponseTextDeltaEvent
    from openai.types.shared import Reasoning

    agents.set_tracing_disabled(True)  # no trace export to api.openai.com
    called: list[str] = []

    @agents.function_tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        called.append(city)
        return weather(city)

    async def run(model: Any) -> tuple[Any, Any, list[str]]:
        agent = agents.Agent(
            name="weather",
            instructions="Answer with the weather.",
            model=model,
            tools=[get_weather],
            model_settings=agents.ModelSettings(reasoning=Reasoning(summary="auto")),
        )
        result = await agents.Runner.run(agent, QUESTION)
        streamed = agents.Runner.run_streamed(agent, QUESTION)
        deltas = [
            event.data.delta
            async for event in streamed.stream_events()
            if event.type == "raw_response_event" and isinstance(event.data, ResponseTextDeltaEvent)
        ]
        return result, streamed, deltas

    for make in (agents.OpenAIResponsesModel, agents.OpenAIChatCompletionsModel):
        called.clear()
        client = AsyncOpenAI(base_url=matrix.tools.base_url, api_key=API_KEY, max_retries=0)
        result, streamed, deltas = asyncio.run(run(make(model=matrix.tools.model, openai_client=client)))
        assert result.final_output == TOOL_ANSWER, make.__name__
        kinds = [type(item).__name__ for item in result.new_items]
        assert kinds == ["ReasoningItem", "ToolCallItem", "ToolCallOutputItem", "MessageOutputItem"], make.__name__
        raw = result.new_items[0].raw_item
        shown = [s.text for s in raw.summary] or [c.text for c in raw.content or []]
        assert shown == [TOOL_REASONING], make.__name__
        assert streamed.final_output == TOOL_ANSWER and "".join(deltas) == TOOL_ANSWER and len(deltas) > 1
        assert called == ["Paris", "Paris"]


# --- langchain-openai ------------------------------------------------------------------------------
def test_langchain_openai(matrix: Matrix) -> None:
    langchain_openai = need("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_core.tools import tool

    llm = langchain_openai.ChatOpenAI(model=matrix.chat.model, base_url=matrix.chat.base_url, api_key=API_KEY, max_retries=0)
    reply = llm.invoke("Hi")
    assert reply.content == ANSWER and reply.usage_metadata["output_token_details"]["reasoning"] == 6
    chunks = list(llm.stream("Hi"))
    assert "".join(c.content for c in chunks) == ANSWER and sum(bool(c.content) for c in chunks) > 1

    @tool
    def get_weather(city: str) -> str:
        """Current weather for a city."""
        return weather(city)

    bound = langchain_openai.ChatOpenAI(
        model=matrix.tools.model, base_url=matrix.tools.base_url, api_key=API_KEY, max_retries=0
    ).bind_tools([get_weather])
    history: list[Any] = [HumanMessage(QUESTION)]
    ai = bound.invoke(history)
    assert [(c["name"], c["args"]) for c in ai.tool_calls] == [("get_weather", {"city": "Paris"})]
    history += [ai, ToolMessage(get_weather.invoke(ai.tool_calls[0]["args"]), tool_call_id=ai.tool_calls[0]["id"])]
    assert bound.invoke(history).content == TOOL_ANSWER

    # Responses mode: reasoning shows as summary blocks; turn 2 sends turn 1's items back
    responses = langchain_openai.ChatOpenAI(
        model=matrix.chat.model,
        base_url=matrix.chat.base_url,
        api_key=API_KEY,
        max_retries=0,
        use_responses_api=True,
        reasoning={"effort": "low", "summary": "auto"},
    )
    conversation: list[Any] = [HumanMessage("Hi")]
    first = responses.invoke(conversation)
    blocks = {block["type"]: block for block in first.content}
    assert first.text == ANSWER and [s["text"] for s in blocks["reasoning"]["summary"]] == [REASONING]
    conversation += [first, HumanMessage("Again")]
    second = responses.invoke(conversation)
    assert second.text == ANSWER
    assert second.usage_metadata["input_tokens"] > first.usage_metadata["input_tokens"]


# --- litellm ---------------------------------------------------------------------------------------
def test_litellm(matrix: Matrix) -> None:
    litellm = need("litellm")
    litellm.telemetry = False
    chat = {"model": f"openai/{matrix.chat.model}", "api_base": matrix.chat.base_url, "api_key": API_KEY}
    hello = [{"role": "user", "content": "Hi"}]
    reply = litellm.completion(messages=hello, **chat)
    message = reply.choices[0].message
    assert (message.content, message.reasoning_content) == (ANSWER, REASONING)
    chunks = list(litellm.completion(messages=hello, stream=True, **chat))
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks)
    assert (text, reasoning) == (ANSWER, REASONING)

    tools = {"model": f"openai/{matrix.tools.model}", "api_base": matrix.tools.base_url, "api_key": API_KEY}
    asked = [{"role": "user", "content": QUESTION}]
    first = litellm.completion(messages=asked, tools=[WEATHER], **tools)
    assert first.choices[0].finish_reason == "tool_calls"
    call = first.choices[0].message.tool_calls[0]
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    streamed = litellm.stream_chunk_builder(list(litellm.completion(messages=asked, tools=[WEATHER], stream=True, **tools)))
    assert [c.function.name for c in streamed.choices[0].message.tool_calls] == ["get_weather"]
    result = {"role": "tool", "tool_call_id": call.id, "content": weather("Paris")}
    second = litellm.completion(messages=[*asked, first.choices[0].message.model_dump(), result], tools=[WEATHER], **tools)
    assert second.choices[0].message.content == TOOL_ANSWER


# --- pydantic-ai -----------------------------------------------------------------------------------
def test_pydantic_ai(matrix: Matrix) -> None:
    pydantic_ai = need("pydantic_ai")
    from pydantic_ai.messages import ThinkingPart, ToolCallPart
    from pydantic_ai.models.openai import OpenAIChatModel, OpenAIResponsesModel, OpenAIResponsesModelSettings
    from pydantic_ai.providers.openai import OpenAIProvider

    def parts(messages: list[Any], kind: type) -> list[Any]:
        return [part for message in messages for part in message.parts if isinstance(part, kind)]

    settings = OpenAIResponsesModelSettings(openai_reasoning_summary="detailed")
    for make, model_settings in ((OpenAIChatModel, None), (OpenAIResponsesModel, settings)):
        called: list[str] = []
        provider = OpenAIProvider(base_url=matrix.tools.base_url, api_key=API_KEY)
        agent = pydantic_ai.Agent(make(matrix.tools.model, provider=provider), model_settings=model_settings)

        @agent.tool_plain
        def get_weather(city: str) -> str:
            """Current weather for a city."""
            called.append(city)
            return weather(city)

        result = agent.run_sync(QUESTION)
        assert result.output == TOOL_ANSWER and called == ["Paris"], make.__name__
        assert [p.tool_name for p in parts(result.all_messages(), ToolCallPart)] == ["get_weather"]
        assert [p.content for p in parts(result.all_messages(), ThinkingPart)] == [TOOL_REASONING], make.__name__

        async def streamed() -> list[str]:
            async with agent.run_stream(QUESTION) as stream:
                return [delta async for delta in stream.stream_text(delta=True)]

        assert "".join(asyncio.run(streamed())) == TOOL_ANSWER

    # a conversation over the Responses model, the history sent back
    provider = OpenAIProvider(base_url=matrix.chat.base_url, api_key=API_KEY)
    agent = pydantic_ai.Agent(OpenAIResponsesModel(matrix.chat.model, provider=provider), model_settings=settings)
    first = agent.run_sync("Hi")
    second = agent.run_sync("Again", message_history=first.all_messages())
    assert (first.output, second.output) == (ANSWER, ANSWER)
    assert [p.content for p in parts(second.new_messages(), ThinkingPart)] == [REASONING]
    assert second.usage.input_tokens > first.usage.input_tokens


# --- Node: openai-node and the Vercel AI SDK ------------------------------------------------------
def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def node() -> str:
    """``node`` with the pinned packages installed (``npm ci`` once, when the lockfile is newer
    than ``node_modules``)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        _unavailable("node and npm are needed for the Node clients (scripts/install-node.sh installs Debian's)")
    lock, installed = NODE_DIR / "package-lock.json", NODE_DIR / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if done.returncode != 0:
            _unavailable(f"npm ci failed in tests/node:\n{done.stderr[-2000:]}")
    return node


def run_node(node: str, matrix: Matrix, script: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "CHAT_BASE_URL": matrix.chat.base_url.removesuffix("/v1"),
        "TOOLS_BASE_URL": matrix.tools.base_url.removesuffix("/v1"),
        "CHAT_MODEL": matrix.chat.model,
        "TOOLS_MODEL": matrix.tools.model,
        "API_KEY": API_KEY,
        "AI_SDK_LOG_WARNINGS": "false",
    }
    done = subprocess.run([node, script], cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script} failed:\n{done.stderr[-4000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_node_openai_chat_stream_and_run_tools(node: str, matrix: Matrix) -> None:
    out = run_node(node, matrix, "openai_chat.mjs")
    assert "".join(out["deltas"]) == out["content"] == ANSWER and len(out["deltas"]) > 1
    assert out["reasoning"] == REASONING
    assert out["usage"]["completion_tokens_details"]["reasoning_tokens"] == 6
    assert (out["tool_answer"], out["called"]) == (TOOL_ANSWER, ["Paris"])
    assert out["tool_messages"] == ["user", "assistant", "tool", "assistant"]
    assert out["model"] == matrix.chat.model and out["request_id"].startswith("req_")


def test_node_openai_responses_stream_final_response(node: str, matrix: Matrix) -> None:
    out = run_node(node, matrix, "openai_responses.mjs")
    assert out["output_text"] == "".join(out["text_deltas"]) == ANSWER
    assert out["reasoning"] == REASONING and out["summary"] == []  # no summary asked for
    assert out["summarized"] == [{"type": "summary_text", "text": REASONING}]
    assert out["second_text"] == ANSWER and out["second_previous"]
    assert out["input_tokens"][1] > out["input_tokens"][0]
    assert out["reasoning_tokens"] == 6


def test_node_ai_sdk(node: str, matrix: Matrix) -> None:
    out = run_node(node, matrix, "ai_sdk.mjs")
    responses, chat = out["responses"], out["chat"]
    # turn 2 refers to turn 1's reasoning and message by id (store on)
    assert responses["turn2_input_types"] == ["user", "item_reference", "item_reference", "user"]
    for turns in (responses, chat):
        assert (turns["first"], turns["second"]) == (ANSWER, ANSWER) and turns["second_deltas"] > 1
        assert turns["input_tokens"][1] > turns["input_tokens"][0]
    assert responses["first_reasoning"] == responses["second_reasoning"] == REASONING

    for loop in (out["responses_tools"], out["chat_tools"]):
        assert loop["text"] == loop["streamed_text"] == TOOL_ANSWER
        assert loop["steps"] == ["tool-calls", "stop"]
        assert loop["calls"] == [["get_weather", {"city": "Paris"}]]
        assert loop["called"] == loop["streamed_called"] == ["Paris"]
    assert out["responses_tools"]["step2_input_types"] == ["user", "item_reference", "function_call", "function_call_output"]
    assert out["responses_tools"]["reasoning"] == TOOL_REASONING
    assert out["chat_tools"]["step2_input_types"] == ["user", "assistant", "tool"]
