"""Structured output, log-probabilities, penalties, bias and the thinking budget, through the
real server and the real ``openai`` client, on a random-weight Qwen3 model (whose output
without a grammar is garbage: anything that validates here was enforced while decoding).

One model, one server (``queue_limit`` 4, so that concurrent requests run as a batch),
small token budgets.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, Field

from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig

from conftest import Served

QUESTION = [{"role": "user", "content": "Describe a city as JSON."}]
OBJ = {"type": "object", "additionalProperties": False}


def _obj(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    return {**OBJ, "properties": properties, "required": list(properties) if required is None else required}


NAME = {"type": "string", "maxLength": 8}
SMALL_INT = {"type": "integer", "minimum": 0, "maximum": 99}

# Twenty-two schemas: nested objects, arrays with min/max items, enums, anyOf, bounded numbers,
# patterns, required and optional keys. Leaves are bounded so that a random model's answer
# ends within the token budget (the grammar, not the model, decides when it may end).
SCHEMAS: list[dict[str, Any]] = [
    _obj({"name": NAME}),
    _obj({"age": SMALL_INT}),
    _obj({"ok": {"type": "boolean"}}),
    _obj({"nothing": {"type": "null"}}),
    _obj({"color": {"enum": ["red", "green", "blue"]}}),
    _obj({"n": {"type": "integer", "minimum": -50, "maximum": -10}}),
    _obj({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"}}),
    _obj({"tags": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 3}}),
    _obj({"pair": {"type": "array", "items": SMALL_INT, "minItems": 2, "maxItems": 2}}),
    _obj({"inner": _obj({"x": SMALL_INT, "y": SMALL_INT})}),
    _obj({"a": _obj({"b": _obj({"c": {"enum": ["deep"]}})})}),
    _obj({"v": {"anyOf": [SMALL_INT, NAME, {"type": "null"}]}}),
    _obj({"name": NAME, "nick": NAME}, required=["name"]),
    _obj({"opt1": SMALL_INT, "opt2": {"type": "boolean"}}, required=[]),
    _obj({"kind": {"const": "point"}, "x": SMALL_INT}),
    _obj({"items": {"type": "array", "items": _obj({"id": SMALL_INT, "tag": {"enum": ["a", "b"]}}), "maxItems": 2}}),
    _obj({"score": {"type": "number", "minimum": 0, "maximum": 10, "multipleOf": 0.5}}),
    _obj({"when": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]$"}}),
    _obj({"mixed": {"type": "array", "items": {"anyOf": [{"type": "boolean"}, SMALL_INT]}, "maxItems": 3}}),
    {"type": "array", "items": SMALL_INT, "minItems": 1, "maxItems": 3},
    {"enum": ["yes", "no", "maybe"]},
    _obj({"city": NAME, "stats": _obj({"pop": SMALL_INT, "rainy": {"type": "boolean"}}), "sights": {"type": "array", "items": NAME, "maxItems": 2}}),
]


def _fmt(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": True}}


@pytest.fixture(scope="module")
def model_dir(make_model) -> Path:
    return make_model("qwen3")


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[Served]:
    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(model_dir), thinking_enabled=False))
        info = runtime.start_server(handle, MlxServerConfig(port=0, queue_limit=4))
        yield Served(runtime, handle, info)
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def vocab(model_dir: Path) -> dict[str, int]:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(model_dir / "tokenizer.json")).get_vocab(with_added_tokens=True)


def _post(served: Served, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{served.info.base_url}/v1/{path}", json=body, headers=served.headers, timeout=120)


def _chat(served: Served, **body: Any) -> dict[str, Any]:
    body.setdefault("messages", QUESTION)
    r = _post(served, "chat/completions", body)
    assert r.status_code == 200, r.text
    return r.json()


def _chat_stream(served: Served, **body: Any) -> tuple[str, str, list[dict[str, Any]], dict[str, Any]]:
    """Content, reasoning, logprobs entries and the last chunk of a streamed chat request."""
    client = served.client()
    body.setdefault("messages", QUESTION)
    extra = {k: body.pop(k) for k in ("thinking", "thinking_budget", "top_k") if k in body}
    content, reasoning, logprobs, last = [], [], [], None
    for chunk in client.chat.completions.create(model=served.info.model_id, stream=True, extra_body=extra, **body):
        last = chunk
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content.append(choice.delta.content or "")
        reasoning.append((choice.delta.model_extra or {}).get("reasoning_content") or "")
        if choice.logprobs is not None and choice.logprobs.content:
            logprobs += [e.model_dump() for e in choice.logprobs.content]
    return "".join(content), "".join(reasoning), logprobs, last.model_dump()


def _parallel(fn, calls: list[dict[str, Any]]) -> list[Any]:
    out: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            out[i] = fn(**calls[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return out


def _check(schema: dict[str, Any], text: str) -> None:
    jsonschema.validate(json.loads(text), schema)


# --- structured output -------------------------------------------------------------------------


def test_unconstrained_output_is_garbage(served: Served):
    body = _chat(served, max_tokens=24, temperature=0)
    text = body["choices"][0]["message"]["content"]
    with pytest.raises(ValueError):
        json.loads(text)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_schemas_alone(served: Served, stream: bool):
    for i, schema in enumerate(SCHEMAS):
        args = dict(response_format=_fmt(schema), max_tokens=200, temperature=1.0, seed=i, thinking=False)
        if stream:
            text, _, _, last = _chat_stream(served, **args)
            assert last["choices"][0]["finish_reason"] == "stop", (i, text)
        else:
            body = _chat(served, **args)
            text = body["choices"][0]["message"]["content"]
            assert body["choices"][0]["finish_reason"] == "stop", (i, text)
        _check(schema, text)


def test_streamed_equals_whole(served: Served):
    for i in (0, 9, 15):
        args = dict(response_format=_fmt(SCHEMAS[i]), max_tokens=200, temperature=1.0, seed=100 + i, thinking=False)
        whole = _chat(served, **args)["choices"][0]["message"]["content"]
        streamed, _, _, _ = _chat_stream(served, **args)
        assert streamed == whole


def _think_bias(vocab: dict[str, int]) -> dict[str, int]:
    """Push the random model to open its reasoning (then the budget closes it)."""
    return {str(vocab["<think>"]): 100}


@pytest.mark.parametrize("thinking", [False, True], ids=["no-thinking", "thinking"])
def test_schemas_in_batches_of_four(served: Served, vocab: dict[str, int], thinking: bool):
    calls = []
    for i, schema in enumerate(SCHEMAS):
        args: dict[str, Any] = dict(response_format=_fmt(schema), max_tokens=200, temperature=1.0, seed=1000 + i, thinking=thinking)
        if thinking:
            args.update(thinking_budget=3, logit_bias=_think_bias(vocab))
        calls.append((schema, args, i % 2 == 1))

    def one(schema: dict[str, Any], args: dict[str, Any], stream: bool) -> tuple[str, str]:
        if stream:
            text, reasoning, _, _ = _chat_stream(served, **dict(args))
        else:
            message = _chat(served, **args)["choices"][0]["message"]
            text, reasoning = message["content"], message.get("reasoning_content") or ""
        _check(schema, text)
        return text, reasoning

    for start in range(0, len(calls), 4):
        results = _parallel(one, [dict(schema=s, args=a, stream=st) for s, a, st in calls[start : start + 4]])
        if thinking:
            assert all(reasoning for _, reasoning in results), results
    assert served.status()["stats"]["max_batch_size"] >= 2  # they did run as a batch


def test_thinking_stays_free_and_the_budget_closes_it(served: Served, vocab: dict[str, int]):
    schema = SCHEMAS[-1]
    body = _chat(
        served,
        response_format=_fmt(schema),
        max_tokens=200,
        temperature=0,
        thinking=True,
        thinking_budget=5,
        logit_bias=_think_bias(vocab),
    )
    message = body["choices"][0]["message"]
    assert message["reasoning_content"]  # the reasoning was not constrained to JSON
    # five tokens of thought, and the two markers the model wrote (<think>, the forced </think>)
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 5 + 2
    _check(schema, message["content"])


def test_json_object(served: Served, vocab: dict[str, int]):
    # A bias towards closing quotes and braces keeps the random model's free-form object short.
    bias = {str(vocab['"']): 6, str(vocab["}"]): 6}
    for seed in range(3):
        body = _chat(served, response_format={"type": "json_object"}, max_tokens=120, temperature=1.0, seed=seed, logit_bias=bias)
        text = body["choices"][0]["message"]["content"]
        assert body["choices"][0]["finish_reason"] == "stop", text
        assert isinstance(json.loads(text), dict)


def test_responses_text_format(served: Served):
    schema = SCHEMAS[9]
    fmt = {"type": "json_schema", "name": "answer", "schema": schema, "strict": True}
    client = served.client()
    whole = client.responses.create(model=served.info.model_id, input="A point?", text={"format": fmt}, max_output_tokens=200, temperature=0)
    _check(schema, whole.output_text)
    deltas = []
    with client.responses.stream(model=served.info.model_id, input="A point?", text={"format": fmt}, max_output_tokens=200, temperature=0) as s:
        for event in s:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = s.get_final_response()
    assert "".join(deltas) == final.output_text == whole.output_text


class City(BaseModel):
    name: str = Field(max_length=8)
    population: int = Field(ge=0, le=1000)
    kind: Literal["town", "city"]
    sights: list[Annotated[str, Field(max_length=8)]] = Field(max_length=2)


def test_openai_parse_helpers(served: Served):
    client = served.client()
    completion = client.chat.completions.parse(
        model=served.info.model_id, messages=QUESTION, response_format=City, max_tokens=200, temperature=0
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, City)
    response = client.responses.parse(model=served.info.model_id, input="A city?", text_format=City, max_output_tokens=200, temperature=0)
    assert isinstance(response.output_parsed, City)


@pytest.mark.parametrize(
    "schema, feature",
    [({"type": "array", "uniqueItems": True}, "uniqueItems"), ({"not": {"type": "string"}}, "not"), ({"type": "string", "pattern": "(?<=a)b"}, "look-around")],
)
def test_unsupported_schema_features_are_refused_by_name(served: Served, schema: dict[str, Any], feature: str):
    r = _post(served, "chat/completions", {"messages": QUESTION, "response_format": _fmt(schema), "max_tokens": 4})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "response_format" and feature in error["message"]
    fmt = {"type": "json_schema", "name": "x", "schema": schema}
    r = _post(served, "responses", {"input": "hi", "text": {"format": fmt}, "max_output_tokens": 4})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == "text.format" and feature in error["message"]


# --- tools ---------------------------------------------------------------------------------------

WEATHER = _obj({"city": NAME, "days": {"type": "integer", "minimum": 1, "maximum": 7}})
TIME = _obj({"tz": {"enum": ["UTC", "CET"]}})
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "parameters": WEATHER, "strict": True}},
    {"type": "function", "function": {"name": "get_time", "parameters": TIME, "strict": True}},
]
SCHEMA_OF = {"get_weather": WEATHER, "get_time": TIME}


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_time"}}], ids=["required", "named"])
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_forced_call_never_leaks_text(served: Served, choice: Any, stream: bool):
    client = served.client()
    for seed in range(3):
        args = dict(model=served.info.model_id, messages=QUESTION, tools=TOOLS, tool_choice=choice, max_tokens=150, temperature=1.0, seed=seed)
        if stream:
            content, calls, finish = "", {}, None
            for chunk in client.chat.completions.create(stream=True, **args):
                if not chunk.choices:
                    continue
                delta = chunk.choices[0].delta
                content += delta.content or ""
                for call in delta.tool_calls or []:
                    entry = calls.setdefault(call.index, {"name": "", "arguments": ""})
                    entry["name"] += call.function.name or ""
                    entry["arguments"] += call.function.arguments or ""
                finish = chunk.choices[0].finish_reason or finish
            found = [(c["name"], c["arguments"]) for c in calls.values()]
        else:
            message = client.chat.completions.create(**args).choices[0]
            content, finish = message.message.content or "", message.finish_reason
            found = [(c.function.name, c.function.arguments) for c in message.message.tool_calls or []]
        assert content == "" and finish == "tool_calls" and found, (content, found)
        for name, arguments in found:
            if isinstance(choice, dict):
                assert found[0][0] == "get_time"
            jsonschema.validate(json.loads(arguments), SCHEMA_OF[name])


def test_strict_tool_arguments_validate_under_auto(served: Served, vocab: dict[str, int]):
    # The bias makes the random model open a call; the arguments are then the grammar's.
    bias = {str(vocab["<tool_call>"]): 100}
    for seed in range(3):
        body = _chat(served, tools=TOOLS, tool_choice="auto", parallel_tool_calls=False, max_tokens=120, temperature=1.0, seed=seed, logit_bias=bias)
        assert body["choices"][0]["finish_reason"] == "tool_calls"
        calls = body["choices"][0]["message"]["tool_calls"]
        assert len(calls) == 1
        call = calls[0]["function"]
        jsonschema.validate(json.loads(call["arguments"]), SCHEMA_OF[call["name"]])


# --- log-probabilities ---------------------------------------------------------------------------


def _raw_greedy(model_dir: Path, n: int) -> list[tuple[int, float, list[float]]]:
    """mlx-lm alone: greedy tokens and the log-softmax each was sampled from."""
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.generate import generate_step
    from mlx_lm.sample_utils import make_sampler

    model, tokenizer = load(str(model_dir))
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, enable_thinking=False)
    out = []
    for token, logprobs in generate_step(mx.array(prompt), model, max_tokens=n, sampler=make_sampler(0.0)):
        if token in tokenizer.eos_token_ids:
            break
        values = logprobs.tolist()
        out.append((token, values[token], sorted(values, reverse=True)[:5]))
    return out


def test_logprobs_equal_raw_mlx_lm_streamed_and_not(served: Served, model_dir: Path):
    raw = _raw_greedy(model_dir, 8)
    args = dict(max_tokens=8, temperature=0, logprobs=True, top_logprobs=5, thinking=False)
    whole = _chat(served, **args)["choices"][0]["logprobs"]["content"]
    _, _, streamed, _ = _chat_stream(served, **args)
    assert len(whole) == len(raw) > 0
    for entry, (_, chosen, top5) in zip(whole, raw):
        assert math.isclose(entry["logprob"], chosen, abs_tol=1e-4)
        assert len(entry["top_logprobs"]) == 5
        for mine, theirs in zip(entry["top_logprobs"], top5):
            assert math.isclose(mine["logprob"], theirs, abs_tol=1e-4)
        assert bytes(entry["bytes"]) == entry["token"].encode()
    assert streamed == whole

    # batched: four at once, each the same as alone
    batch = _parallel(lambda **a: _chat(served, **a), [dict(args)] * 4)
    for body in batch:
        for entry, alone in zip(body["choices"][0]["logprobs"]["content"], whole):
            assert entry["token"] == alone["token"] and math.isclose(entry["logprob"], alone["logprob"], abs_tol=1e-4)

    # Responses: the same values on output_text and on the deltas
    client = served.client()
    response = client.responses.create(
        model=served.info.model_id, input=QUESTION[0]["content"], include=["message.output_text.logprobs"],
        top_logprobs=5, max_output_tokens=8, temperature=0, extra_body={"thinking": False},
    )  # fmt: skip
    part = response.output[-1].content[0]
    assert [round(e.logprob, 5) for e in part.logprobs] == [round(e["logprob"], 5) for e in whole]
    deltas = []
    with client.responses.stream(
        model=served.info.model_id, input=QUESTION[0]["content"], include=["message.output_text.logprobs"],
        top_logprobs=5, max_output_tokens=8, temperature=0, extra_body={"thinking": False},
    ) as s:  # fmt: skip
        for event in s:
            if event.type == "response.output_text.delta":
                deltas += [e.logprob for e in event.logprobs]
    assert [round(v, 5) for v in deltas] == [round(e.logprob, 5) for e in part.logprobs]


def test_reasoning_tokens_have_no_logprobs(served: Served, vocab: dict[str, int]):
    body = _chat(
        served, response_format=_fmt(SCHEMAS[9]), max_tokens=200, temperature=0, logprobs=True, thinking=True,
        thinking_budget=4, logit_bias=_think_bias(vocab),
    )  # fmt: skip
    choice = body["choices"][0]
    usage = body["usage"]
    reasoning = usage["completion_tokens_details"]["reasoning_tokens"]
    assert reasoning == 4 + 2 and choice["message"]["reasoning_content"]  # with its two markers
    entries = choice["logprobs"]["content"]
    # <think>, 4 reasoning tokens, </think>: none of them in the answer's logprobs
    assert len(entries) == usage["completion_tokens"] - reasoning
    assert "".join(e["token"] for e in entries).strip() == choice["message"]["content"]


# --- penalties and bias --------------------------------------------------------------------------


def test_logit_bias_and_penalties_per_request_in_a_batch(served: Served, vocab: dict[str, int]):
    words = ["Paris", "city", "the"]
    ids = [vocab[w] for w in words if w in vocab][:2] or [vocab["a"], vocab["b"]]
    calls = [dict(max_tokens=6, temperature=0, logprobs=True, logit_bias={str(i): 100}) for i in ids]
    calls.append(dict(max_tokens=6, temperature=0, logprobs=True, presence_penalty=2.0, frequency_penalty=2.0))
    calls.append(dict(max_tokens=6, temperature=0, logprobs=True))
    results = _parallel(lambda **a: _chat(served, **a), calls)
    for token_id, body in zip(ids, results):
        tokens = [e["token"] for e in body["choices"][0]["logprobs"]["content"]]
        assert len(tokens) == 6 and len(set(tokens)) == 1  # the biased token, every time
    penalised = [e["token"] for e in results[-2]["choices"][0]["logprobs"]["content"]]
    free = [e["token"] for e in results[-1]["choices"][0]["logprobs"]["content"]]
    assert len(set(penalised)) == len(penalised)  # a repeat would cost 4 logits
    alone = _chat(served, **calls[-2])["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in alone] == penalised
    assert free  # unpenalised greedy run is whatever the model likes


def test_bad_values_are_refused_by_name(served: Served):
    cases = [
        ({"logit_bias": {"notanid": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 500}}, "logit_bias"),
        ({"logit_bias": {"99999999": 1}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"presence_penalty": 3}, "presence_penalty"),
        ({"response_format": {"type": "xml"}}, "response_format"),
        ({"reasoning_effort": "extreme"}, "reasoning_effort"),
        ({"thinking_budget": -1}, "thinking_budget"),
    ]
    for extra, param in cases:
        r = _post(served, "chat/completions", {"messages": QUESTION, "max_tokens": 2, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (extra, r.text)


@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"])
def test_gemma4_forced_call_in_its_own_syntax(make_model, choice: Any):
    """Gemma 4 writes calls in its own syntax (``call:name{key:<|"|>text<|"|>}``): the grammar
    is built from the tool's schema in that syntax; the parser turns it into JSON."""
    from lib_mlx.core import ChatPrompt, MlxCore, SamplingParams
    from lib_mlx.core.events import TextDelta, ToolCallEnd

    core = MlxCore.load(MlxModelConfig(str(make_model("gemma4_text"))))
    try:
        for seed in range(3):
            rendered = core.render(ChatPrompt(QUESTION, tools=TOOLS, tool_choice=choice, thinking=False))
            events = list(core.submit(rendered, SamplingParams(max_tokens=150, temperature=1.0, seed=seed)))
            assert not [e for e in events if isinstance(e, TextDelta)]
            calls = [e for e in events if isinstance(e, ToolCallEnd)]
            assert calls and events[-1].finish_reason == "tool_calls"
            for call in calls:
                jsonschema.validate(json.loads(call.arguments), SCHEMA_OF[call.name])
    finally:
        core.close()


def test_grammar_survives_a_move_into_the_batch(served: Served):
    """A request decoding alone moves into a batch when a second arrives (``Handoff``): its
    grammar state moves with it."""
    schema = _obj({"tags": {"type": "array", "items": NAME, "maxItems": 6}, "n": SMALL_INT})
    handoffs = served.status()["stats"]["handoffs"]
    client = served.client()
    args = dict(model=served.info.model_id, messages=QUESTION, response_format=_fmt(schema), max_tokens=300, temperature=1.0)
    first = client.chat.completions.create(stream=True, seed=1, **args)
    pieces, second = [], []
    for i, chunk in enumerate(first):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        if i == 3:
            thread = threading.Thread(target=lambda: second.append(client.chat.completions.create(seed=2, **args)))
            thread.start()
    thread.join()
    _check(schema, "".join(pieces))
    _check(schema, second[0].choices[0].message.content)
    assert served.status()["stats"]["handoffs"] > handoffs
