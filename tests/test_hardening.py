"""Hardening, part 1: no one else gets in, and bad input gets a clear 4xx naming its ``param``.

Every test asserts the status code, the OpenAI error body, and that a normal request (plain and
streamed, through the real ``openai`` client) still succeeds afterwards.
"""

from __future__ import annotations

import json
import socket

import httpx
import openai
import pytest

from hardening_support import (  # noqa: F401 (loaded, serve: the shared fixtures)
    CONTEXT,
    USER,
    assert_openai_error,
    chat_body,
    install_probe,
    loaded,
    remove_probe,
    serve,
)
from lib_mlx import MlxServerConfig



# --- access ----------------------------------------------------------------------------------


def test_v1_needs_the_servers_bearer_token(serve):
    s = serve()
    assert s.info.api_key and len(s.info.api_key) >= 24
    url = s.base_url + "/v1/chat/completions"
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": s.info.api_key},
        {"Authorization": f"Basic {s.info.api_key}"},
    ):
        r = httpx.post(url, json=chat_body(), headers=headers)
        assert_openai_error(r, 401, "invalid_api_key")
        assert r.json()["error"]["type"] == "authentication_error"
        assert r.headers["www-authenticate"] == "Bearer"
    assert_openai_error(httpx.get(s.base_url + "/v1/models"), 401, "invalid_api_key")
    assert_openai_error(httpx.get(s.base_url + "/v1/no-such-route"), 401)  # no route probing either
    assert httpx.get(s.base_url + "/health").status_code == 200  # public, says nothing secret
    assert httpx.get(s.base_url + "/v1/models", headers=s.headers).status_code == 200
    stranger = openai.OpenAI(base_url=s.base_url + "/v1", api_key="not-the-token", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        stranger.chat.completions.create(model=s.info.model_id, messages=USER, max_tokens=2)
    s.assert_serving()


def test_each_server_gets_its_own_token(serve, loaded):
    runtime, handle = loaded
    first = serve().info.api_key
    second = serve().info.api_key
    assert first != second
    # runtime.openai_client passes the current token.
    client = runtime.openai_client(handle, max_retries=0)
    assert [m.id for m in client.models.list().data] == [runtime.server_info(handle).model_id]


def test_configured_api_key_and_auth_none(serve):
    s = serve(api_key="my-app-secret")
    assert s.info.api_key == "my-app-secret"
    assert_openai_error(s.post(chat_body(), headers={"Authorization": "Bearer other"}), 401)
    s.assert_serving()

    s = serve(auth="none")
    assert s.info.api_key is None
    assert httpx.post(s.base_url + "/v1/chat/completions", json=chat_body()).status_code == 200
    s.assert_serving()


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example", "localhost.evil:{port}", "127.0.0.2:{port}", ""],
)
def test_dns_rebinding_foreign_host_header_is_refused(serve, host):
    s = serve()
    host = host.format(port=s.port)
    for method, path in (("POST", "/v1/chat/completions"), ("GET", "/v1/models"), ("GET", "/health"), ("GET", "/")):
        r = httpx.request(
            method,
            s.base_url + path,
            json=chat_body() if method == "POST" else None,
            headers={**s.headers, "Host": host},
        )
        assert_openai_error(r, 403, "forbidden_host")
        assert r.json()["error"]["type"] == "permission_error"
    s.assert_serving()


def test_host_header_may_name_the_bound_address_or_localhost(serve):
    s = serve()
    for host in (f"127.0.0.1:{s.port}", f"localhost:{s.port}", "localhost", f"LOCALHOST:{s.port}"):
        r = httpx.get(s.base_url + "/v1/models", headers={**s.headers, "Host": host})
        assert r.status_code == 200, (host, r.text)


def test_http10_request_without_host_is_refused(serve):
    s = serve()
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        sock.sendall(f"GET /v1/models HTTP/1.0\r\nAuthorization: Bearer {s.info.api_key}\r\n\r\n".encode())
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 403"), reply[:100]
    assert json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "forbidden_host"
    s.assert_serving()


def test_no_cors_headers_unless_origins_are_allowed(serve):
    s = serve()
    origin = {"Origin": "http://evil.example"}
    r = httpx.post(s.base_url + "/v1/chat/completions", json=chat_body(), headers={**s.headers, **origin})
    assert r.status_code == 200
    assert not [k for k in r.headers if k.lower().startswith("access-control-")]
    preflight = httpx.options(
        s.base_url + "/v1/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"},
    )
    assert preflight.status_code >= 400
    assert not [k for k in preflight.headers if k.lower().startswith("access-control-")]

    s = serve(allowed_origins=("http://app.example",))
    ok = httpx.options(
        s.base_url + "/v1/chat/completions",
        headers={
            "Origin": "http://app.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization",
        },
    )
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "http://app.example"
    r = httpx.post(
        s.base_url + "/v1/chat/completions", json=chat_body(), headers={**s.headers, "Origin": "http://app.example"}
    )
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "http://app.example"
    # The allow-list is exact: another origin gets no CORS grant, and still needs the token.
    bad = httpx.options(
        s.base_url + "/v1/chat/completions",
        headers={**origin, "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in bad.headers
    assert_openai_error(httpx.post(s.base_url + "/v1/chat/completions", json=chat_body(), headers=origin), 401)
    s.assert_serving()


# --- limits ----------------------------------------------------------------------------------


def test_body_over_the_cap_is_413_with_content_length(serve):
    s = serve(max_body_bytes=4096)
    big = chat_body(messages=[{"role": "user", "content": "x" * 5000}])
    for path in ("/v1/chat/completions", "/v1/responses"):
        r = s.post(big, path=path)
        error = assert_openai_error(r, 413, "payload_too_large")
        assert "4096" in error["message"]
    # Just under the cap is read (and then refused for its length in tokens, not in bytes).
    assert_openai_error(
        s.post(chat_body(messages=[{"role": "user", "content": "x" * 3900}])), 400, "context_length_exceeded"
    )
    s.assert_serving()


def test_body_over_the_cap_is_413_when_chunked(serve):
    s = serve(max_body_bytes=4096)

    def chunks():
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(10):
            yield b"x" * 1000
        yield b'"}]}'

    r = s.post(chunks())
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert_openai_error(r, 413, "payload_too_large")
    s.assert_serving()


def test_declared_length_over_the_cap_is_refused_before_the_body_is_read(serve):
    s = serve(max_body_bytes=4096)
    with socket.create_connection(("127.0.0.1", s.port), timeout=10) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n"
            f"Authorization: Bearer {s.info.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {50 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode())  # and not one byte of the 50 MB
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    s.assert_serving()


def test_default_body_cap_is_tens_of_megabytes():
    assert 16 * 2**20 <= MlxServerConfig().max_body_bytes <= 128 * 2**20


def test_prompt_longer_than_the_context_is_400_context_length_exceeded(serve):
    s = serve()
    long = [{"role": "user", "content": "hello " * (CONTEXT * 2)}]
    error = assert_openai_error(s.post(chat_body(messages=long)), 400, "context_length_exceeded", "messages")
    assert str(CONTEXT) in error["message"]
    assert_openai_error(s.post(chat_body(messages=long, stream=True)), 400, "context_length_exceeded")
    s.assert_serving()


def test_a_request_refused_after_rendering_leaves_no_announcement(serve, loaded):
    """With batching on, the server announces a request to the engine while its prompt renders
    (so that a burst prefills together); one refused after rendering must not leave the engine
    waiting for it."""
    from hardening_support import core_of

    runtime, handle = loaded
    s = serve(queue_limit=4)
    long = [{"role": "user", "content": "hello " * (CONTEXT * 2)}]
    assert_openai_error(s.post(chat_body(messages=long)), 400, "context_length_exceeded", "messages")
    assert_openai_error(s.post(chat_body(messages=long, stream=True)), 400, "context_length_exceeded")
    s.assert_serving()
    assert core_of(runtime, handle).stats().announced == 0


def test_max_tokens_beyond_the_context_is_clamped(serve, loaded):
    runtime, handle = loaded
    s = serve()
    probe = install_probe(runtime, handle)
    probe.mask_eos = True  # the answer runs until the context is full
    try:
        reply = s.client().chat.completions.create(
            model=s.info.model_id, messages=USER, max_tokens=10**9, temperature=0
        )
    finally:
        remove_probe(runtime, handle)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens + reply.usage.completion_tokens == CONTEXT
    s.assert_serving()


BAD_BODIES = [
    # (body, param, code)
    (b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', None, "invalid_json"),
    (b'{"messages": [', None, "invalid_json"),
    (b"", None, "invalid_json"),
    (b"[1, 2]", None, "invalid_request"),
    (b'"just a string"', None, "invalid_request"),
    (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", None, "invalid_json"),
    ({"messages": []}, "messages", "invalid_request"),
    ({}, "messages", "invalid_request"),
    ({"messages": "hello"}, "messages", "invalid_request"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "invalid_request"),
    ({"messages": [{"content": "x"}]}, "messages[0].role", "invalid_request"),
    ({"messages": [{"role": "user"}]}, "messages[0]", "invalid_request"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content", "invalid_request"),
    (
        {"messages": [USER[0], {"role": "user", "content": [{"type": "text", "text": 5}]}]},
        "messages[1].content[0].text",
        "invalid_request",
    ),
    (
        {"messages": [{"role": "user", "content": [{"type": "video"}]}]},
        "messages[0].content[0].type",
        "invalid_request",
    ),
    ({"messages": USER, "temperature": "hot"}, "temperature", "invalid_request"),
    ({"messages": USER, "temperature": 3.5}, "temperature", "invalid_request"),
    ({"messages": USER, "max_tokens": 0}, "max_tokens", "invalid_request"),
    ({"messages": USER, "max_tokens": 2.5}, "max_tokens", "invalid_request"),
    ({"messages": USER, "max_tokens": "10"}, "max_tokens", "invalid_request"),
    ({"messages": USER, "stream": "yes"}, "stream", "invalid_request"),
    ({"messages": USER, "n": 2}, "n", "invalid_request"),
    ({"messages": USER, "stop": [1]}, "stop[0]", "invalid_request"),
    ({"messages": USER, "seed": 2**70}, "seed", "invalid_request"),
    ({"messages": USER, "model": 7}, "model", "invalid_request"),
    (
        {"messages": USER, "tools": [{"type": "function", "function": {"name": ""}}]},
        "tools[0].function.name",
        "invalid_request",
    ),
    ({"messages": USER, "tool_choice": {"type": "function"}}, "tool_choice.function", "invalid_request"),
]


@pytest.mark.parametrize("body, param, code", BAD_BODIES, ids=[f"bad{i}" for i in range(len(BAD_BODIES))])
def test_bad_input_is_400_naming_the_param(serve, body, param, code):
    s = serve()
    r = s.post(body)
    error = assert_openai_error(r, 400, code, param)
    assert error["type"] == "invalid_request_error"
    if param:
        assert error["message"].startswith(param)


def test_server_still_serves_after_bad_input(serve):
    s = serve()
    for body, _, _ in BAD_BODIES:
        assert s.post(body).status_code == 400
    s.assert_serving()


def test_unknown_model_route_and_method(serve):
    s = serve()
    assert_openai_error(s.post(chat_body(model="nope")), 404, "model_not_found", "model")
    assert_openai_error(httpx.get(s.base_url + "/v1/nope", headers=s.headers), 404, "not_found")
    assert_openai_error(httpx.get(s.base_url + "/v1/chat/completions", headers=s.headers), 405)
    s.assert_serving()


@pytest.mark.parametrize(
    "extra", [{"seed": -1}, {"seed": 2**64 - 1}, {"top_k": 10**9}, {"stop": ["", "never"]}, {"top_p": 1e-9}]
)
def test_edge_values_are_accepted_not_500(serve, extra):
    s = serve()
    r = s.post(chat_body(temperature=1.0, **extra))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    s.assert_serving()


@pytest.mark.parametrize(
    "bound, host, allowed",
    [
        ("127.0.0.1", "127.0.0.1:8000", True),
        ("127.0.0.1", "localhost:8000", True),
        ("127.0.0.1", "[::1]:8000", True),
        ("127.0.0.1", "10.0.0.5:8000", False),
        ("127.0.0.1", "localhost:9999", False),
        ("0.0.0.0", "10.0.0.5:8000", True),  # every interface: any bare address
        ("0.0.0.0", "[fe80::1]:8000", True),
        ("0.0.0.0", "evil.example:8000", False),  # but never a DNS name (rebinding)
        ("0.0.0.0", "10.0.0.5.evil.example", False),
        ("::", "192.168.1.2", True),
        ("::1", "[::1]:8000", True),
    ],
)
def test_host_allow_list(bound, host, allowed):
    from starlette.datastructures import Headers

    from lib_mlx.server.security import AccessMiddleware, allowed_hosts

    guard = AccessMiddleware(None, api_key=None, hosts=allowed_hosts(bound, 8000))
    error = guard._check({"type": "http", "path": "/v1/models", "method": "GET"}, Headers({"host": host}))
    assert (error is None) is allowed, error
