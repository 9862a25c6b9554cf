"""Every endpoint applies the same rules (``server.rules``, ``server.streaming``): the same
fault gives the same outcome in each API, in that API's own error shape.

- a generation error: a non-streamed request is a 500, a stream ends with the API's error event;
- the server stopping under an open request: 503 ``cancelled``, or the error event in a stream;
- a bug in an encoder mid-stream: the stream still ends with the API's error event;
and after each, the server goes on serving with nothing left in flight.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import httpx
import pytest

from hardening_support import USER, Served, install_probe, remove_probe, wait_for
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig
from lib_mlx.server import rules
from lib_mlx.server.chat.encoder import ChatChunkEncoder
from lib_mlx.server.responses.encoder import ResponseEncoder
from lib_mlx.server.streaming import STOPPED

LONG = 200
PATHS = ["/v1/chat/completions", "/v1/responses", "/v1/messages"]


def body_for(path: str, *, stream: bool, max_tokens: int = LONG) -> dict[str, Any]:
    if path == "/v1/responses":
        return {"input": "hello", "max_output_tokens": max_tokens, "temperature": 0, "stream": stream}
    return {"messages": USER, "max_tokens": max_tokens, "temperature": 0, "stream": stream}


def outcome(path: str, response: httpx.Response) -> tuple[str, int, str]:
    """``("error", status, message)`` for a refused or failed request, ``("stream-error", 200,
    message)`` for a stream that ended with its API's error event, ``("ok", status, "")``."""
    if response.headers["content-type"].startswith("application/json"):
        body = response.json()
        if response.status_code != 200:
            if path == "/v1/messages":
                assert body["type"] == "error" and set(body["error"]) == {"type", "message"}, body
            else:
                assert set(body["error"]) >= {"message", "type", "param", "code"}, body
            return ("error", response.status_code, body["error"]["message"])
        return ("ok", 200, "")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: {")]
    last = events[-1]
    if path == "/v1/chat/completions":
        assert response.text.endswith("data: [DONE]\n\n")
        failure = last.get("error")
    elif path == "/v1/responses":
        failure = last["response"]["error"] if last["type"] == "response.failed" else None
    else:
        failure = last["error"] if last["type"] == "error" else None
    if failure is None:
        return ("ok", 200, "")
    return ("stream-error", 200, failure["message"])


@pytest.fixture(scope="module")
def served(make_model):
    runtime = LibMlxRuntime()
    handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3", max_position_embeddings=512))))
    s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(queue_limit=2)))
    s.probe = install_probe(runtime, handle)
    yield s
    remove_probe(runtime, handle)
    runtime.close()


def post(s: Served, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(s.base_url + path, json=body, headers=s.headers, timeout=30)


def settle(s: Served) -> None:
    s.probe.delay, s.probe.mask_eos = 0.0, False
    assert wait_for(lambda: s.in_flight == 0, 10), "a generation stayed in flight"
    for path in PATHS:
        assert post(s, path, body_for(path, stream=False, max_tokens=3)).status_code == 200


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_a_generation_error_is_the_same_outcome_everywhere(served, stream):
    s = served
    seen = {}
    for path in PATHS:
        s.probe.mask_eos = True
        s.probe.fail_after(3, RuntimeError("boom in the forward pass"))
        seen[path] = outcome(path, post(s, path, body_for(path, stream=stream)))
    kinds = {o[:2] for o in seen.values()}
    assert kinds == {("stream-error", 200) if stream else ("error", 500)}, seen
    assert len({o[2] for o in seen.values()}) == 1, seen  # the same message, too
    assert "boom in the forward pass" in seen[PATHS[0]][2]
    settle(s)


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
def test_stopping_the_server_is_the_same_outcome_everywhere(served, stream):
    """A request still open when the server stops: 503 ``cancelled`` (README), or the API's
    error event in a stream -- in every API (Responses once answered a 200 ``failed``)."""
    s = served
    seen = {}
    for path in PATHS:
        s.probe.delay, s.probe.mask_eos = 0.03, True
        result: list = []
        thread = threading.Thread(target=lambda: result.append(post(s, path, body_for(path, stream=stream))))
        calls = s.probe.calls
        thread.start()
        assert wait_for(lambda: s.probe.calls >= calls + 3, 15), "generation did not start"
        s.runtime.stop_server(s.handle)
        thread.join(15)
        assert not thread.is_alive(), f"{path}: the client hung after the server stopped"
        seen[path] = outcome(path, result[0])
        if not stream:
            body = result[0].json()
            code = body["error"]["type"] if path == "/v1/messages" else body["error"]["code"]
            assert code == ("overloaded_error" if path == "/v1/messages" else "cancelled"), body
        s.info = s.runtime.start_server(s.handle, MlxServerConfig(queue_limit=2))
    assert set(seen.values()) == {("stream-error", 200, STOPPED) if stream else ("error", 503, STOPPED)}, seen
    settle(s)


def test_a_bug_in_an_encoder_ends_every_stream_with_its_error_event(served, monkeypatch):
    from lib_mlx.server.messages.encoder import MessageEncoder

    s = served
    def broken(self, event):
        raise RuntimeError("encoder bug")

    for encoder in (ChatChunkEncoder, ResponseEncoder, MessageEncoder):
        monkeypatch.setattr(encoder, "encode", broken)
    seen = {path: outcome(path, post(s, path, body_for(path, stream=True, max_tokens=8))) for path in PATHS}
    assert set(seen.values()) == {("stream-error", 200, "RuntimeError: encoder bug")}, seen
    monkeypatch.undo()
    settle(s)


def test_the_field_table_refuses_by_name_and_ignores_the_rest():
    with pytest.raises(Exception) as info:
        rules.check_fields("chat", {"messages": [], "n": 2})
    assert info.value.param == "n" and info.value.status == 400
    rules.check_fields("chat", {"n": 1, "user": "u", "some_future_field": 1})  # no error
    with pytest.raises(Exception) as info:
        rules.check_fields("responses", {"background": True})
    assert info.value.param == "background"
    assert set(rules.FIELDS) == {"chat", "responses", "messages", "messages_count"}
    with pytest.raises(Exception) as info:
        rules.check_fields("messages", {"output_config": {"format": {"type": "json_schema"}}})
    assert info.value.param == "output_config"
    rules.check_fields("messages", {"output_config": {"effort": "low"}})


def test_the_thinking_toggle_has_one_precedence():
    flag = rules.thinking_flag
    assert flag(None) is None
    assert flag(False, {"enable_thinking": True}, "high") is False  # the explicit toggle first
    assert flag(None, {"enable_thinking": True}, "none") is True  # then the template kwargs
    assert flag(None, {"thinking": False}) is False
    assert flag(None, {"enable_thinking": "yes"}, "none") is False  # not a bool: the effort decides
    assert flag(None, None, "low") is True
    assert rules.template_kwargs({"enable_thinking": True, "thinking": False, "x": 1}) == {"x": 1}


def test_the_sdks_surface_a_mid_stream_failure_as_an_error(served):
    """The error event each API ends a failed stream with is what its own SDK raises on."""
    anthropic = pytest.importorskip("anthropic")
    s = served
    s.probe.mask_eos = True
    s.probe.fail_after(3, RuntimeError("boom in the forward pass"))
    client = anthropic.Anthropic(base_url=s.base_url, api_key=s.info.api_key, max_retries=0, timeout=30)
    with pytest.raises(anthropic.APIStatusError, match="boom in the forward pass"):
        for _ in client.messages.create(model=s.info.model_id, messages=USER, max_tokens=LONG, stream=True):
            pass
    settle(s)
