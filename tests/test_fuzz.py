"""Fuzzing: hypothesis-generated input over the HTTP surface and the JSON lifecycle functions.

No input may produce a 5xx (none is deliberate here: the model never fails in these tests), a
hang (every request has a timeout, every test a bounded number of examples) or a lifecycle call
that raises or answers anything but ``{"ok": ...}`` JSON; afterwards the server still serves.
The whole module stays within about a minute on two cores: about 2,800 cases in all, over the
JSON ABI and every HTTP endpoint's body (issue 20).
"""

from __future__ import annotations

import json
import os
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hardening_support import USER, Served, wait_for
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig

# The same examples on every run, so that a failure reproduces. For a deeper hunt, run with
# LIB_MLX_FUZZ_SCALE=10 (ten times the examples) and LIB_MLX_FUZZ_RANDOM=1 (fresh ones).
SCALE = float(os.environ.get("LIB_MLX_FUZZ_SCALE", "1"))
FUZZ = settings(
    deadline=None,
    database=None,
    derandomize=not os.environ.get("LIB_MLX_FUZZ_RANDOM"),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large],
)


def examples(n: int) -> settings:
    return settings(FUZZ, max_examples=max(1, int(n * SCALE)))


# --- strategies -------------------------------------------------------------------------------

# Text that JSON can carry but UTF-8 cannot: lone surrogates (json.dumps writes "\\ud800").
surrogate_text = st.text(alphabet=st.one_of(st.characters(categories=["Cs"]), st.characters()), min_size=1, max_size=6)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),  # NaN and Infinity too: Python's json reads them
    st.text(max_size=20),
    surrogate_text,
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
roles = st.one_of(
    st.sampled_from(["system", "developer", "user", "assistant", "tool"]), st.text(max_size=10), json_values
)
parts = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "input_text"]), "text": st.one_of(st.text(max_size=40), json_values)}
    ),
    st.fixed_dictionaries(
        {"type": st.one_of(st.sampled_from(["image_url", "input_audio", "video"]), st.text(max_size=8))}
    ),
    json_values,
)
contents = st.one_of(st.text(max_size=80), st.lists(parts, max_size=3), json_values)
valid_messages = st.lists(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["system", "developer", "user", "assistant"]),
            "content": st.one_of(
                st.text(max_size=60),
                st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": st.text(max_size=30)}), max_size=2),
            ),
        }
    ),
    min_size=1,
    max_size=3,
)
messages = st.one_of(
    valid_messages,
    st.lists(
        st.one_of(
            st.fixed_dictionaries({"role": roles, "content": contents}),
            st.fixed_dictionaries(
                {"role": st.just("assistant"), "tool_calls": st.lists(json_values, max_size=2)},
                optional={"content": contents},
            ),
            st.fixed_dictionaries(
                {"role": st.just("tool"), "content": contents}, optional={"tool_call_id": json_values}
            ),
            json_values,
        ),
        max_size=4,
    ),
    json_values,
)
# The token budget stays small whatever else happens, so that valid requests finish quickly.
budgets = st.one_of(st.integers(min_value=-3, max_value=6), st.floats(max_value=10), st.text(max_size=3), st.none())
FIELDS: dict[str, Any] = {
    "messages": messages,
    "model": st.one_of(st.just("MODEL"), json_values),
    "temperature": st.one_of(st.floats(min_value=0, max_value=2), st.floats(), json_values),
    "top_p": st.one_of(st.floats(min_value=0, max_value=1), st.floats(min_value=-1, max_value=2), json_values),
    "top_k": st.one_of(
        st.integers(min_value=-5, max_value=10**12), st.integers(min_value=0, max_value=2000), json_values
    ),
    "min_p": st.one_of(st.floats(min_value=0, max_value=1), st.floats(min_value=-1, max_value=2), json_values),
    "seed": st.one_of(st.integers(min_value=-(2**65), max_value=2**65), json_values),
    "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6), json_values),
    "stream": st.one_of(st.booleans(), json_values),
    "stream_options": st.one_of(
        st.fixed_dictionaries({"include_usage": st.one_of(st.booleans(), json_values)}), json_values
    ),
    "n": st.one_of(st.integers(min_value=-1, max_value=3), json_values),
    "tools": st.one_of(
        st.lists(
            st.fixed_dictionaries(
                {
                    "type": st.just("function"),
                    "function": st.fixed_dictionaries(
                        {"name": st.text(max_size=12)}, optional={"parameters": json_values, "description": json_values}
                    ),
                }
            ),
            max_size=2,
        ),
        json_values,
    ),
    "tool_choice": st.one_of(st.sampled_from(["auto", "none", "required"]), json_values),
    "thinking": st.one_of(st.booleans(), json_values),
    "chat_template_kwargs": st.one_of(
        json_values,
        st.dictionaries(
            st.sampled_from(["enable_thinking", "chat_template", "tools", "messages", "bos_token", "x"]), json_values, max_size=3
        ),
    ),
    "reasoning_effort": json_values,
    "response_format": json_values,
    "logprobs": json_values,
}


rarely = st.sampled_from([False] * 7 + [True])  # hypothesis favours the first: mostly False


@st.composite
def chat_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request with some fields replaced by anything at all, some dropped, and unknown
    fields added; the token budget always small."""
    body: dict[str, Any] = {"messages": list(USER), "max_tokens": 4, "temperature": 0.0}
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True)):
        body[name] = draw(FIELDS[name])
    if draw(rarely):
        body.pop("messages", None)
    # Mostly a valid budget, so that most bodies get as far as generation.
    body["max_tokens"] = draw(budgets if draw(rarely) else st.integers(1, 6))
    for budget in draw(st.lists(st.sampled_from(["max_completion_tokens", "max_output_tokens"]), max_size=1)):
        body[budget] = draw(budgets)
    body.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return body


@st.composite
def responses_bodies(draw: st.DrawFn) -> dict[str, Any]:
    body: dict[str, Any] = {"input": "hello", "max_output_tokens": 4, "temperature": 0.0}
    mutations = {
        "input": st.one_of(st.text(max_size=40), messages, json_values),
        "instructions": json_values,
        "model": st.one_of(st.just("MODEL"), json_values),
        "stream": st.one_of(st.booleans(), json_values),
        "tools": FIELDS["tools"],
        "tool_choice": FIELDS["tool_choice"],
        "reasoning": json_values,
        "previous_response_id": json_values,
        "store": json_values,
        "text": json_values,
        "temperature": FIELDS["temperature"],
        "top_p": FIELDS["top_p"],
    }
    for name in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=3, unique=True)):
        body[name] = draw(mutations[name])
    body["max_output_tokens"] = draw(budgets if draw(rarely) else st.integers(1, 6))
    return body


anthropic_blocks = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": st.one_of(st.text(max_size=30), json_values)}),
    st.fixed_dictionaries({"type": st.just("image"), "source": json_values}),
    st.fixed_dictionaries(
        {"type": st.just("tool_use"), "id": st.text(max_size=6), "name": st.text(max_size=6), "input": json_values}
    ),
    st.fixed_dictionaries(
        {"type": st.just("tool_result"), "tool_use_id": st.text(max_size=6)}, optional={"content": json_values}
    ),
    st.fixed_dictionaries({"type": st.just("thinking"), "thinking": st.text(max_size=20)}, optional={"signature": json_values}),
    st.fixed_dictionaries({"type": st.one_of(st.text(max_size=8), json_values)}),
)
anthropic_messages = st.one_of(
    st.lists(
        st.fixed_dictionaries(
            {
                "role": st.one_of(st.sampled_from(["user", "assistant"]), roles),
                "content": st.one_of(st.text(max_size=40), st.lists(anthropic_blocks, max_size=3), json_values),
            }
        ),
        max_size=4,
    ),
    json_values,
)


@st.composite
def messages_bodies(draw: st.DrawFn) -> dict[str, Any]:
    """Anthropic Messages requests: valid, with fields replaced by anything at all."""
    body: dict[str, Any] = {"messages": list(USER), "max_tokens": 4, "temperature": 0.0}
    mutations = {
        "messages": anthropic_messages,
        "system": st.one_of(st.text(max_size=20), st.lists(anthropic_blocks, max_size=2), json_values),
        "model": st.one_of(st.just("MODEL"), json_values),
        "stream": st.one_of(st.booleans(), json_values),
        "tools": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.text(max_size=8), "input_schema": json_values}, optional={"description": json_values}
                ),
                max_size=2,
            ),
            json_values,
        ),
        "tool_choice": st.one_of(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["auto", "any", "tool", "none"])},
                optional={"name": st.text(max_size=8), "disable_parallel_tool_use": json_values},
            ),
            json_values,
        ),
        "thinking": st.one_of(
            st.fixed_dictionaries(
                {"type": st.sampled_from(["enabled", "disabled", "adaptive"])}, optional={"budget_tokens": budgets}
            ),
            json_values,
        ),
        "stop_sequences": st.one_of(st.lists(st.text(max_size=4), max_size=3), json_values),
        "metadata": json_values,
        "output_config": json_values,
        "temperature": st.one_of(st.floats(min_value=0, max_value=1), json_values),
        "top_p": FIELDS["top_p"],
        "top_k": FIELDS["top_k"],
    }
    for name in draw(st.lists(st.sampled_from(sorted(mutations)), max_size=3, unique=True)):
        body[name] = draw(mutations[name])
    body["max_tokens"] = draw(budgets if draw(rarely) else st.integers(1, 6))
    return body


# --- HTTP ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(make_model):
    runtime = LibMlxRuntime()
    handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3", max_position_embeddings=256))))
    s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(queue_limit=2, max_body_bytes=1 << 20)))
    s.http = httpx.Client(timeout=30, headers=s.headers)
    yield s
    s.http.close()
    runtime.close()


def _with_model(value: Any, model_id: str) -> Any:
    if isinstance(value, dict) and value.get("model") == "MODEL":
        return {**value, "model": model_id}
    return value


def post_json(s: Served, path: str, body: Any) -> httpx.Response:
    # json.dumps writes NaN/Infinity where hypothesis drew them, as a careless client would.
    return s.http.post(s.base_url + path, content=json.dumps(body), headers={"Content-Type": "application/json"})


def check(s: Served, response: httpx.Response, sent: Any) -> None:
    assert response.status_code < 500, (sent, response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        error = body["error"]
        if response.url.path.startswith("/v1/messages"):  # Anthropic's shape
            assert body["type"] == "error" and set(error) == {"type", "message"}, body
        else:
            assert error["code"], error
        assert isinstance(error["message"], str) and error["message"], error
    elif response.headers.get("content-type", "").startswith("text/event-stream"):
        lines = response.text.splitlines()
        ends = {"data: [DONE]", "event: response.completed", "event: response.incomplete", "event: message_stop"}
        assert ends.intersection(lines), response.text[-300:]
        failed = ("event: response.failed", "event: error")
        assert not [line for line in lines if line.startswith('data: {"error"') or line in failed], response.text[-500:]


@examples(700)
@given(body=chat_bodies())
def test_fuzz_chat_completions(served, body):
    s = served
    body = _with_model(body, s.info.model_id)
    check(s, post_json(s, "/v1/chat/completions", body), body)


@examples(300)
@given(body=responses_bodies())
def test_fuzz_responses(served, body):
    s = served
    body = _with_model(body, s.info.model_id)
    check(s, post_json(s, "/v1/responses", body), body)


@examples(300)
@given(body=messages_bodies())
def test_fuzz_messages(served, body):
    s = served
    body = _with_model(body, s.info.model_id)
    check(s, post_json(s, "/v1/messages", body), body)
    if isinstance(body, dict):
        counted = {k: v for k, v in body.items() if k not in ("max_tokens", "stream", "temperature", "stop_sequences")}
        check(s, post_json(s, "/v1/messages/count_tokens", counted), counted)


@examples(400)
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        json_values.map(lambda v: json.dumps(v).encode()),
        st.integers(min_value=1, max_value=3000).map(
            lambda depth: b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"
        ),
    ),
    path=st.sampled_from(["/v1/chat/completions", "/v1/responses", "/v1/messages"]),
    content_type=st.sampled_from(
        ["application/json", "text/plain", "multipart/form-data; boundary=x", "application/x-www-form-urlencoded"]
    ),
)
def test_fuzz_raw_bodies(served, raw, path, content_type):
    s = served
    check(s, s.http.post(s.base_url + path, content=raw, headers={"Content-Type": content_type}), raw)


raw_payloads = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200).map(str.encode),
    json_values.map(lambda v: json.dumps(v).encode()),
    chat_bodies().map(lambda v: json.dumps(v).encode()),
    st.integers(min_value=1, max_value=3000).map(lambda depth: b'{"messages": ' + b"[" * depth + b"]" * depth + b"}"),
)


@examples(250)
@given(
    request_part=raw_payloads,
    part_name=st.sampled_from(["request", "payload", "json", "other"]),
    attachments=st.dictionaries(st.text(min_size=1, max_size=8), st.binary(max_size=64), max_size=2),
    path=st.sampled_from(["/v1/chat/completions", "/v1/responses"]),
)
def test_fuzz_multipart_bodies(served, request_part, part_name, attachments, path):
    s = served
    files = {part_name: ("request.json", request_part, "application/json")}
    for name, data in attachments.items():
        files.setdefault(name, ("blob.bin", data, "application/octet-stream"))
    check(s, s.http.post(s.base_url + path, files=files), (part_name, request_part[:100]))


@examples(300)
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]),
    path=st.one_of(
        st.sampled_from(
            [
                "/",
                "/health",
                "/v1/models",
                "/v1/chat/completions",
                "/v1/responses",
                "/v1/responses/resp_x",
                "/v1/messages",
                "/v1/messages/count_tokens",
                "/static/app.js",
            ]
        ),
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?%"), max_size=30).map(
            lambda p: "/" + p
        ),
    ),
    auth=st.sampled_from(["good", "none", "bad"]),
)
def test_fuzz_routes_methods_and_auth(served, method, path, auth):
    s = served
    headers = {"good": s.headers, "none": {"Authorization": ""}, "bad": {"Authorization": "Bearer nope"}}[auth]
    r = s.http.request(
        method, s.base_url + path, headers=headers, content=b"{}" if method in ("POST", "PUT", "PATCH") else None
    )
    assert r.status_code < 500, (method, path, r.status_code, r.text[:300])
    if auth != "good" and path.startswith("/v1"):
        assert r.status_code in (401, 405) or method == "OPTIONS", (method, path, r.status_code)


@examples(250)
@given(
    response_id=st.one_of(
        st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="#?%/"), max_size=40),
        st.sampled_from(["resp_", "resp_" + "0" * 32, "resp_x" * 100]),
    ),
    method=st.sampled_from(["GET", "DELETE"]),
    store=st.booleans(),
)
def test_fuzz_stored_responses(served, response_id, method, store):
    """Retrieve and delete by any id, also right after storing a real response."""
    s = served
    if store:
        created = post_json(s, "/v1/responses", {"input": "hi", "max_output_tokens": 2, "store": True})
        check(s, created, "store")
        if created.status_code == 200 and response_id.startswith("resp_"):
            response_id = created.json()["id"]
    r = s.http.request(method, f"{s.base_url}/v1/responses/{response_id}")
    check(s, r, (method, response_id))
    if response_id:
        assert r.status_code in (200, 404), (method, response_id, r.status_code, r.text[:200])


def test_server_healthy_after_fuzzing(served):
    s = served
    assert wait_for(lambda: s.in_flight == 0, 10)
    assert s.http.get(s.base_url + "/health").json()["status"] == "ok"
    s.assert_serving()


# --- JSON lifecycle functions ----------------------------------------------------------------

# Host values that never reach a DNS resolver (no network beyond loopback in tests).
hosts = st.one_of(
    st.sampled_from(["127.0.0.1", "localhost", "::1", "", "0.0.0.0"]),
    json_values.filter(lambda v: not isinstance(v, str)),
)
server_configs = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "host": hosts,
            "port": st.one_of(
                st.just(0),
                st.integers(min_value=-(2**40), max_value=-1),
                st.integers(min_value=65536, max_value=2**40),
                json_values.filter(lambda v: not isinstance(v, int)),
            ),
            "queue_limit": st.one_of(st.integers(min_value=-5, max_value=5000), json_values),
            "model_id": json_values,
            "api_key": json_values,
            "auth": st.one_of(st.sampled_from(["bearer", "none", "basic"]), json_values),
            "allowed_origins": json_values,
            "max_body_bytes": st.one_of(st.integers(min_value=-1, max_value=2**62), json_values),
            "max_media_part_bytes": st.one_of(st.integers(min_value=-1, max_value=2**62), json_values),
            "allow_remote_media": json_values,
            "chat_page": json_values,
        },
    ),
    json_values.filter(lambda v: not isinstance(v, dict)),
)
model_configs = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "model_path": st.one_of(
                st.sampled_from(["", ".", "/", "/nonexistent/model", "~", "/etc/passwd"]),
                st.text(max_size=20),
                json_values,
            ),
            "model_id": st.one_of(st.sampled_from(["", "org/name", "../../etc"]), json_values),
            "revision": json_values,
            "thinking_enabled": json_values,
            "lazy_encoders": json_values,
        },
    ),
    json_values,
)


def encoded(strategy: st.SearchStrategy) -> st.SearchStrategy:
    """A config as the C ABI would pass it: JSON text, the same as bytes, or anything else."""
    return st.one_of(
        strategy.map(json.dumps),
        strategy.map(lambda v: json.dumps(v).encode()),
        st.text(max_size=40),
        st.binary(max_size=40),
        st.none(),
    )


def _reply(raw: Any) -> dict[str, Any]:
    assert isinstance(raw, str)
    body = json.loads(raw)
    assert isinstance(body, dict) and isinstance(body.get("ok"), bool), body
    if not body["ok"]:
        error = body["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), body
        # No lifecycle input may reach an unexpected exception.
        assert error["code"] not in ("internal_error",), body
    return body


@pytest.fixture(scope="module")
def abi_handle(make_model):
    import huggingface_hub.constants

    from lib_mlx import abi

    offline, huggingface_hub.constants.HF_HUB_OFFLINE = huggingface_hub.constants.HF_HUB_OFFLINE, True
    path = str(make_model("qwen3", max_position_embeddings=256))
    handle = _reply(abi.load_model(json.dumps({"model_path": path})))["handle"]
    yield handle
    _reply(abi.unload_model(handle))
    huggingface_hub.constants.HF_HUB_OFFLINE = offline


handles = st.one_of(st.integers(min_value=-(2**63), max_value=2**63), json_values)


@examples(400)
@given(config=encoded(model_configs))
def test_fuzz_abi_load_model(abi_handle, config):
    from lib_mlx import abi

    body = _reply(abi.load_model(config))
    if body["ok"]:  # a config that names a real model: give it back
        assert _reply(abi.unload_model(body["handle"]))["ok"]


@examples(200)
@given(
    steps=st.lists(
        st.tuples(
            st.sampled_from(["start", "stop", "status", "unload"]),
            st.one_of(st.just("HANDLE"), handles),
            encoded(server_configs),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_fuzz_abi_lifecycle_calls(abi_handle, steps):
    from lib_mlx import abi

    for op, handle, config in steps:
        if handle == "HANDLE":
            if op == "unload":
                continue  # keep the module's model loaded
            handle = abi_handle
        if op == "start":
            body = _reply(abi.start_server(handle, config))
            if body["ok"]:
                assert body["server"]["status"] == "running" and body["server"]["port"] > 0
        elif op == "stop":
            _reply(abi.stop_server(handle))
        elif op == "status":
            _reply(abi.server_status(handle))
        else:
            body = _reply(abi.unload_model(handle))
            assert not body["ok"] and body["error"]["code"] == "unknown_handle"
    _reply(abi.stop_server(abi_handle))


def test_abi_healthy_after_fuzzing(abi_handle):
    from lib_mlx import abi

    started = _reply(abi.start_server(abi_handle, json.dumps({"port": 0})))
    assert started["ok"], started
    status = _reply(abi.server_status(abi_handle))
    assert status["ok"] and status["server"]["status"] == "running"
    info = started["server"]
    r = httpx.post(
        info["base_url"] + "/v1/chat/completions",
        json={"messages": USER, "max_tokens": 2},
        headers={"Authorization": f"Bearer {info['api_key']}"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert _reply(abi.stop_server(abi_handle))["ok"]
