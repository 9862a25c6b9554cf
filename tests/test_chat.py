"""Chat Completions through the real openai client over a socket (issue 2)."""

from __future__ import annotations

import re
import threading

import httpx
import openai
import pytest

from lib_mlx.tiny_models import TRIGGERS

# Scripted answers: greedy decoding after the thinking-on generation prompt emits these pieces.
ANSWERS = {
    "qwen3": ["Paris", " is", " the", " capital", " of", " France", "."],
    "gemma4_text": ["Yes", ",", " Paris", " it", " is", "!"],
}


@pytest.fixture(params=sorted(ANSWERS))
def scripted(request, make_model):
    family = request.param
    pieces = ANSWERS[family]
    return family, make_model(family, chains={TRIGGERS[family]["thinking"]: pieces}), pieces


MESSAGES = [{"role": "user", "content": "Is the capital of France Paris? Answer Yes or No."}]


def test_chat_completion_exact_text_and_usage(serve, scripted) -> None:
    family, model_dir, pieces = scripted
    with serve(model_dir) as s:
        client = s.client()
        reply = client.chat.completions.create(model=s.info.model_id, messages=MESSAGES, temperature=0.0)
        choice = reply.choices[0]
        assert choice.message.role == "assistant"
        assert choice.message.content == "".join(pieces)
        assert choice.finish_reason == "stop"
        assert reply.object == "chat.completion" and reply.model == s.info.model_id
        assert reply.usage.completion_tokens == len(pieces)
        assert reply.usage.total_tokens == reply.usage.prompt_tokens + len(pieces)
        from lib_mlx.core import ChatPrompt

        rendered = s.core.render  # prompt token count from the same template

        assert reply.usage.prompt_tokens == len(rendered(ChatPrompt(messages=MESSAGES)).tokens)


def test_streamed_chat_completion_exact_text_and_usage(serve, scripted) -> None:
    family, model_dir, pieces = scripted
    with serve(model_dir) as s:
        stream = s.client().chat.completions.create(
            model=s.info.model_id,
            messages=MESSAGES,
            temperature=0.0,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(content) == "".join(pieces)
    assert len(content) == len(pieces)  # one delta per token: nothing is held back
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    assert usage.completion_tokens == len(pieces)


def test_max_tokens_and_stop(serve, scripted) -> None:
    family, model_dir, pieces = scripted
    with serve(model_dir) as s:
        client = s.client()
        cut = client.chat.completions.create(model=s.info.model_id, messages=MESSAGES, max_tokens=2)
        assert cut.choices[0].message.content == "".join(pieces[:2])
        assert cut.choices[0].finish_reason == "length" and cut.usage.completion_tokens == 2
        for field in ("max_completion_tokens", "max_output_tokens"):
            reply = client.chat.completions.create(
                model=s.info.model_id, messages=MESSAGES, extra_body={field: 3}
            )
            assert reply.usage.completion_tokens == 3
        stop_at = pieces[2]
        stopped = client.chat.completions.create(model=s.info.model_id, messages=MESSAGES, stop=[stop_at])
        assert stopped.choices[0].message.content == "".join(pieces[:2])
        assert stopped.choices[0].finish_reason == "stop"


def test_list_models_and_health(serve, make_model) -> None:
    with serve(make_model("qwen3"), model_id="my/model") as s:
        models = s.client().models.list()
        assert [m.id for m in models.data] == ["my/model"]
        assert models.data[0].owned_by == "local"
        health = httpx.get(f"{s.info.base_url}/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"


def test_retrieve_model_and_request_ids(serve, make_model, monkeypatch) -> None:
    """``models.retrieve`` and ``x-request-id`` (the SDKs' ``request_id``) on every response,
    refusals and streams included (issue 17.3, 17.6)."""
    with serve(make_model("qwen3"), model_id="my/model") as s:
        client = s.client()
        model = client.models.retrieve("my/model")
        assert (model.id, model.object, model.owned_by) == ("my/model", "model", "local")
        with pytest.raises(openai.NotFoundError) as info:
            client.models.retrieve("other/model")
        assert info.value.body["code"] == "model_not_found" and "other/model" in info.value.body["message"]
        assert re.fullmatch(r"req_[0-9a-f]{32}", info.value.request_id or "")

        reply = client.chat.completions.with_raw_response.create(model="my/model", messages=MESSAGES, max_tokens=2)
        assert re.fullmatch(r"req_[0-9a-f]{32}", reply.headers["x-request-id"])
        assert reply.parse()._request_id == reply.headers["x-request-id"]
        with client.chat.completions.with_streaming_response.create(
            model="my/model", messages=MESSAGES, max_tokens=2, stream=True
        ) as streamed:
            assert streamed.headers["x-request-id"].startswith("req_")
        base = s.info.base_url
        ids = [
            httpx.get(f"{base}/health").headers.get("x-request-id"),
            httpx.get(f"{base}/v1/models").headers.get("x-request-id"),  # 401: no key
            httpx.get(f"{base}/v1/nothing", headers=s.headers).headers.get("x-request-id"),  # 404
            httpx.post(f"{base}/v1/chat/completions", json={}, headers=s.headers).headers.get("x-request-id"),  # 400
        ]
        assert all(i and i.startswith("req_") for i in ids) and len(set(ids)) == len(ids)
        # the Messages API also names it as Anthropic does (the anthropic SDK's ``_request_id``)
        anthropic = httpx.post(f"{base}/v1/messages", json={}, headers=s.headers)
        assert anthropic.status_code == 400 and anthropic.headers["request-id"] == anthropic.headers["x-request-id"]
        assert "request-id" not in httpx.get(f"{base}/health").headers
        # a caller's own id is echoed, one that is not a plain token is replaced
        echoed = httpx.get(f"{base}/health", headers={"x-request-id": "trace-42"}).headers["x-request-id"]
        replaced = httpx.get(f"{base}/health", headers={"x-request-id": "a b"}).headers["x-request-id"]
        assert echoed == "trace-42" and replaced.startswith("req_")
        # Starlette answers an unexpected error from outside every middleware: named all the same
        from lib_mlx.server import models

        monkeypatch.setattr(models, "_model", lambda request: 1 / 0)
        broken = httpx.get(f"{base}/v1/models", headers={**s.headers, "x-request-id": "trace-500"})
        assert broken.status_code == 500 and broken.headers["x-request-id"] == "trace-500"


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["message"]
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": []}, "messages"),
        ({}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"messages": [{"role": "user"}]}, "messages[0]"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "hi"}], "n": 2}, "n"),
        ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": "ten"}, "max_tokens"),
        ({"messages": [{"role": "user", "content": "hi"}], "temperature": 9}, "temperature"),
        ({"messages": "hi"}, "messages"),
    ],
)
def test_bad_requests_get_400(serve, make_model, body, param) -> None:
    with serve(make_model("qwen3")) as s:
        r = httpx.post(f"{s.info.base_url}/v1/chat/completions", json=body, headers=s.headers)
        error = _error(r, 400)
        assert error["type"] == "invalid_request_error"
        assert error["param"] == param


def test_bad_json_unknown_model_and_route(serve, make_model) -> None:
    with serve(make_model("qwen3")) as s:
        url = f"{s.info.base_url}/v1/chat/completions"
        headers = {**s.headers, "Content-Type": "application/json"}
        assert _error(httpx.post(url, content=b"{nope", headers=headers), 400)["code"] == "invalid_json"
        body = {"model": "not-this-one", "messages": [{"role": "user", "content": "hi"}]}
        assert _error(httpx.post(url, json=body, headers=s.headers), 404)["code"] == "model_not_found"
        assert _error(httpx.get(f"{s.info.base_url}/v1/nothing", headers=s.headers), 404)["code"] == "not_found"
        with pytest.raises(openai.NotFoundError):
            s.client().chat.completions.create(model="not-this-one", messages=MESSAGES)
        # The server still serves afterwards.
        assert s.client().chat.completions.create(model=s.info.model_id, messages=MESSAGES, max_tokens=2)


def test_queue_full_gets_429_with_retry_after(serve, make_model) -> None:
    # A random model generates until max_tokens: a long request holds the only slot.
    with serve(make_model("llama"), queue_limit=1) as s:
        client = s.client()
        stream = client.chat.completions.create(
            model=s.info.model_id, messages=MESSAGES, max_tokens=3000, stream=True,
            extra_body={"ignore_eos": True},
        )
        first = next(iter(stream))
        assert first.choices[0].delta.role == "assistant"
        r = httpx.post(
            f"{s.info.base_url}/v1/chat/completions",
            json={"model": s.info.model_id, "messages": MESSAGES, "max_tokens": 2},
            headers=s.headers,
        )
        error = _error(r, 429)
        assert error["type"] == "rate_limit_error" and error["code"] == "queue_full"
        assert r.headers["retry-after"] == "1"
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model=s.info.model_id, messages=MESSAGES, max_tokens=2)
        stream.close()  # the client goes away: its generation is cancelled and the slot freed
        for _ in range(200):
            if s.status()["in_flight"] == 0:
                break
            threading.Event().wait(0.05)
        assert s.status()["in_flight"] == 0
        assert client.chat.completions.create(model=s.info.model_id, messages=MESSAGES, max_tokens=2)
