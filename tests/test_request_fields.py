"""No silent drops: every field of openai-python's request types for Chat Completions and
Responses is honoured, refused with a 400 naming it, or ignored by design -- as the field table
(``server.rules.FIELDS``) says and the README shows."""

from __future__ import annotations

import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig
from lib_mlx.server.rules import FIELDS, fields_markdown

from conftest import Served

README = Path(__file__).resolve().parents[1] / "README.md"


def openai_fields(api: str) -> set[str]:
    if api == "chat":
        from openai.types.chat.completion_create_params import CompletionCreateParamsBase as params
    else:
        from openai.types.responses.response_create_params import ResponseCreateParamsBase as params
    return set(typing.get_type_hints(params)) | {"stream"}


# A value for each field: valid where the field is honoured or ignored, and one that is refused
# where the table refuses it (a refusal may depend on the value: n=2, verbosity "high").
SAMPLES: dict[str, dict[str, Any]] = {
    "chat": {
        "model": None, "messages": None, "temperature": 0.5, "top_p": 0.9, "top_k": 5, "min_p": 0.1, "max_tokens": 2,
        "max_completion_tokens": 2, "max_output_tokens": 2, "stop": ["zzz"], "seed": 3, "stream": False,
        "stream_options": {"include_usage": True}, "n": 2, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
        "tool_choice": "none", "parallel_tool_calls": False, "thinking": False, "chat_template_kwargs": {"enable_thinking": False},
        "reasoning_effort": "low", "ignore_eos": True, "response_format": {"type": "text"}, "logprobs": True, "top_logprobs": 2,
        "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1, "logit_bias": {"5": 1},
        "thinking_budget": 8, "audio": {"voice": "alloy", "format": "wav"}, "modalities": ["text", "audio"],
        "functions": [{"name": "f"}], "function_call": "auto", "web_search_options": {}, "verbosity": "high",
        "prediction": {"type": "content", "content": "x"}, "store": True, "metadata": {"k": "v"}, "user": "u",
        "safety_identifier": "s", "service_tier": "auto", "prompt_cache_key": "k", "prompt_cache_retention": "24h",
        "prompt_cache_options": {"mode": "implicit"}, "moderation": {"model": "omni-moderation-latest"},
    },
    "responses": {
        "model": None, "input": None, "instructions": "Be brief.", "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
        "tool_choice": "none", "parallel_tool_calls": False, "max_output_tokens": 2, "temperature": 0.5, "top_p": 0.9,
        "reasoning": {"effort": "low", "max_tokens": 8}, "thinking": False, "store": False, "stream": False,
        "previous_response_id": None, "metadata": {"k": "v"}, "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "truncation": "disabled", "include": ["message.output_text.logprobs"], "top_logprobs": 2, "max_tool_calls": 1,
        "chat_template_kwargs": {"enable_thinking": False}, "top_k": 5, "min_p": 0.1, "seed": 3, "thinking_budget": 8,
        "presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1, "logit_bias": {"5": 1},
        "stream_options": {"include_obfuscation": False}, "background": True, "background_options": {"completion_window": "soonest"},
        "conversation": "conv_1", "prompt": {"id": "pmpt_1"}, "context_management": [{"type": "compaction"}],
        "image": {"context_compression": "auto"}, "access_programs": {"cyber": "standard"}, "user": "u",
        "safety_identifier": "s", "service_tier": "auto", "prompt_cache_key": "k", "prompt_cache_retention": "24h",
        "prompt_cache_options": {"mode": "implicit"}, "moderation": {"model": "omni-moderation-latest"},
    },
}
BASE = {"chat": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}, "responses": {"input": "hi", "max_output_tokens": 2}}
PATH = {"chat": "chat/completions", "responses": "responses"}
COMPANIONS = {("chat", "top_logprobs"): {"logprobs": True}}  # fields that need another


@pytest.fixture(scope="module")
def served(make_model) -> Iterator[Served]:
    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3"))))
        yield Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(port=0)))
    finally:
        runtime.close()


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_every_openai_field_is_in_the_table(api: str):
    missing = openai_fields(api) - set(FIELDS[api])
    assert not missing, f"{api}: fields of openai's request type without a rule: {sorted(missing)}"
    assert set(SAMPLES[api]) >= set(FIELDS[api]), sorted(set(FIELDS[api]) - set(SAMPLES[api]))


@pytest.mark.parametrize("api", ["chat", "responses"])
def test_each_field_is_honoured_ignored_or_refused_by_name(served: Served, api: str):
    for name, rule in FIELDS[api].items():
        value = SAMPLES[api][name]
        if value is None:  # the request's own core fields, exercised everywhere else
            continue
        body = {**BASE[api], **COMPANIONS.get((api, name), {}), name: value}
        r = httpx.post(f"{served.info.base_url}/v1/{PATH[api]}", json=body, headers=served.headers, timeout=60)
        if rule.handling == "refused":
            assert r.status_code == 400, (api, name, r.status_code, r.text)
            assert r.json()["error"]["param"] == name, (api, name, r.text)
        else:
            assert r.status_code == 200, (api, name, r.text)


def test_readme_shows_the_table():
    assert fields_markdown() in README.read_text(), "README's field table is out of date: paste rules.fields_markdown()"
