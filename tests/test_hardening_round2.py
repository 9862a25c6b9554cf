"""Hardening, round two (issue 20): one request can never take the machine, keep-alive costs
nothing, and the footguns found by probing are refused with a clear error.

Each test names the issue's point it covers and fails without that point's fix.
"""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest

from hardening_support import (  # noqa: F401 (loaded, serve: the shared fixtures)
    CONTEXT,
    USER,
    Served,
    assert_openai_error,
    chat_body,
    loaded,
    serve,
)
from lib_mlx import MlxModelConfig, MlxServerConfig
from lib_mlx.errors import PayloadTooLargeError
from lib_mlx.server.media import MediaLimits, decode_messages
from lib_mlx.server.multipart import Attachment, inline_attachments
from lib_mlx.tiny_models.multimodal import png_bytes



# --- 2. multipart attachment amplification ---------------------------------------------------


def _references(n: int, name: str = "photo") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"attachment:{name}"}} for _ in range(n)]}]}


def test_every_reference_counts_against_the_cap_before_anything_is_copied() -> None:
    attachments = {"photo": Attachment("photo", b"x" * 10_000, "p.png", "image/png")}
    with pytest.raises(PayloadTooLargeError) as err:
        inline_attachments(_references(11), attachments, max_total_bytes=100_000)
    assert err.value.param == "messages[0].content[10].image_url.url"
    # Under the cap, every reference shares one encoded string: no copy per reference.
    payload = inline_attachments(_references(10), attachments, max_total_bytes=100_000)
    urls = [part["image_url"]["url"] for part in payload["messages"][0]["content"]]
    assert urls[0].startswith("data:image/png;base64,")
    assert all(url is urls[0] for url in urls)


def test_decoded_pixels_of_repeated_images_are_bounded() -> None:
    """A small, well-compressed image referenced many times must not decode into gigabytes:
    every decoded copy counts against ``max_decoded_bytes``."""
    png = png_bytes()
    url = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    part = {"type": "image_url", "image_url": {"url": url}}
    from PIL import Image
    import io

    w, h = Image.open(io.BytesIO(png)).size
    limits = MediaLimits(max_decoded_bytes=w * h * 3 * 3)
    decode_messages([{"role": "user", "content": [part] * 3}], limits=limits)
    with pytest.raises(PayloadTooLargeError) as err:
        decode_messages([{"role": "user", "content": [part] * 4}], limits=limits)
    assert err.value.param == "messages[0].content[3].image_url"


def test_multipart_part_referenced_many_times_is_413_over_http(serve) -> None:
    s = serve(max_body_bytes=256 * 1024, max_media_part_bytes=200 * 1024)
    request = json.dumps(_references(40))
    files = {"request": (None, request, "application/json"), "photo": ("p.png", b"\x89PNG" + b"\0" * 60_000, "image/png")}
    started = time.perf_counter()
    r = httpx.post(s.base_url + "/v1/chat/completions", headers=s.headers, files=files, timeout=30)
    assert_openai_error(r, 413, "payload_too_large", "messages[0].content[4].image_url.url")
    assert time.perf_counter() - started < 5
    assert httpx.get(s.base_url + "/health").status_code == 200


# --- 3. chat templates: no overrides, only declared toggles; renders count and stop --------


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_a_request_cannot_replace_the_chat_template(serve, path) -> None:
    s = serve()
    body = {"messages": USER} if path.endswith("completions") else {"input": "hello"}
    body.update(max_tokens=2) if path.endswith("completions") else body.update(max_output_tokens=2)
    evil = {"chat_template": "{% for i in range(10**9) %}x{% endfor %}"}
    r = s.post({**body, "chat_template_kwargs": evil}, path=path)
    assert_openai_error(r, 400, "unsupported_parameter", "chat_template_kwargs.chat_template")
    r = s.post({**body, "chat_template_kwargs": {"not_a_toggle": True}}, path=path)
    error = assert_openai_error(r, 400, "unsupported_parameter", "chat_template_kwargs.not_a_toggle")
    assert "enable_thinking" in error["message"]  # the template's own toggles are listed
    r = s.post({**body, "chat_template_kwargs": {"enable_thinking": False}}, path=path)
    assert r.status_code == 200, r.text


def test_template_toggles_are_what_the_template_reads() -> None:
    from lib_mlx.core.template_guard import check_template_kwargs, template_toggles

    source = "{% if enable_thinking %}T{% endif %}{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
    assert template_toggles(source) == {"enable_thinking"}
    check_template_kwargs({"enable_thinking": False}, source)
    for key in ("bos_token", "messages", "add_generation_prompt", "chat_template", "other"):
        with pytest.raises(Exception) as err:
            check_template_kwargs({key: "x"}, source)
        assert err.value.param == f"chat_template_kwargs.{key}"
    with pytest.raises(Exception) as err:
        check_template_kwargs({"enable_thinking": {"nested": [1] * 10}}, source)
    assert err.value.code == "invalid_type"


class SlowRender:
    """Wraps the core's real ``render`` with a delay, counting renders at once."""

    def __init__(self, core, delay: float) -> None:
        import threading

        self.core, self.delay, self.real = core, delay, core.render
        self.now = self.peak = 0
        self._lock = threading.Lock()

    def __call__(self, prompt):
        with self._lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
        try:
            time.sleep(self.delay)
            return self.real(prompt)
        finally:
            with self._lock:
                self.now -= 1

    def __enter__(self):
        self.core.render = self
        return self

    def __exit__(self, *exc):
        del self.core.render


def _post_later(s: Served, body: dict, results: list, **kwargs):
    import threading

    def run():
        try:
            results.append(s.post(body, **kwargs))
        except Exception as exc:  # noqa: BLE001
            results.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_rendering_counts_against_queue_limit(serve, loaded) -> None:
    from hardening_support import core_of

    s = serve(queue_limit=1)
    with SlowRender(core_of(*loaded), 1.5):
        first: list = []
        thread = _post_later(s, chat_body(max_tokens=1), first)
        time.sleep(0.5)  # the first request is rendering now
        started = time.perf_counter()
        r = s.post(chat_body(max_tokens=1))
        assert_openai_error(r, 429, "queue_full")
        assert time.perf_counter() - started < 1.0  # refused at once, not after its own render
        thread.join(30)
    assert first[0].status_code == 200, first[0].text


def test_renders_at_once_are_bounded(serve, loaded) -> None:
    from hardening_support import core_of
    from lib_mlx.server.context import MAX_CONCURRENT_RENDERS

    s = serve(queue_limit=16)
    with SlowRender(core_of(*loaded), 0.4) as slow:
        results: list = []
        threads = [_post_later(s, chat_body(max_tokens=1), results) for _ in range(MAX_CONCURRENT_RENDERS + 4)]
        for thread in threads:
            thread.join(60)
    assert [r.status_code for r in results] == [200] * len(threads)
    assert slow.peak == MAX_CONCURRENT_RENDERS


def test_a_request_rendering_when_the_server_stops_is_cancelled(serve, loaded) -> None:
    from hardening_support import core_of

    runtime, handle = loaded
    s = serve()
    with SlowRender(core_of(*loaded), 6.0):
        results: list = []
        thread = _post_later(s, chat_body(max_tokens=1), results)
        time.sleep(0.5)
        started = time.perf_counter()
        runtime.stop_server(handle)
        stopped_in = time.perf_counter() - started
        thread.join(30)
    assert_openai_error(results[0], 503, "cancelled")
    assert stopped_in < 3.0


# --- 4. over-long prompts are refused before they are tokenized ------------------------------


def test_an_over_long_prompt_is_refused_before_tokenizing(serve, loaded) -> None:
    from hardening_support import core_of
    from lib_mlx.core.template_guard import MAX_CHARS_PER_TOKEN

    s = serve(max_body_bytes=32 * 1024 * 1024)
    tokenizer = core_of(*loaded).loaded.tokenizer._tokenizer  # the Hugging Face tokenizer
    calls = []
    real_encode = tokenizer.encode
    tokenizer.encode = lambda *a, **k: calls.append(1) or real_encode(*a, **k)
    try:
        huge = "word " * (2 * 1024 * 1024)  # 10 MiB of text
        started = time.perf_counter()
        r = s.post({"messages": [{"role": "user", "content": huge}], "max_tokens": 1})
        elapsed = time.perf_counter() - started
        error = assert_openai_error(r, 400, "context_length_exceeded", "messages")
        assert str(CONTEXT) in error["message"]
        assert not calls, "the prompt was tokenized"
        assert elapsed < 4.0, elapsed
        # Just over the bound is refused too; a prompt that merely exceeds the context after
        # tokenizing still gets the exact token count.
        r = s.post({"messages": [{"role": "user", "content": "x" * (CONTEXT * MAX_CHARS_PER_TOKEN + 1)}]})
        assert_openai_error(r, 400, "context_length_exceeded")
        assert not calls
        r = s.post({"messages": [{"role": "user", "content": "word " * (CONTEXT * 2)}]})
        error = assert_openai_error(r, 400, "context_length_exceeded")
        assert "tokens" in error["message"] and calls
    finally:
        del tokenizer.encode


# --- 5. keep-alive costs nothing (TCP_NODELAY on accepted connections) -----------------------


def test_requests_on_a_reused_connection_are_not_delayed(serve) -> None:
    s = serve()
    with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=10) as client:
        client.get("/health")
        timings = []
        for _ in range(8):
            started = time.perf_counter()
            assert client.get("/v1/models").status_code == 200
            timings.append(time.perf_counter() - started)
        # The same connection throughout (keep-alive), and no ~40 ms delayed-ACK stall.
        assert len(client._transport._pool.connections) == 1
    timings.sort()
    assert timings[len(timings) // 2] < 0.025, timings


# --- 6. every config field through the JSON ABI; 13. ABI codes and api_key footguns ----------


SERVER_FIELDS = {
    "host": "127.0.0.1",
    "port": 0,
    "model_id": "served-name",
    "queue_limit": 3,
    "api_key": "a-token_of.ASCII~only",
    "auth": "bearer",
    "allowed_origins": ["http://localhost:3000", "app://local"],
    "max_body_bytes": 4 * 1024 * 1024,
    "max_media_part_bytes": 2 * 1024 * 1024,
    "allow_remote_media": True,
    "chat_page": False,
    "wait": True,  # on a loading handle: wait for the model (False: listen and answer 503)
    "idle_unload_s": 600.0,
}


def test_every_config_field_is_settable_through_the_json_abi(make_model, tmp_path) -> None:
    import dataclasses

    from lib_mlx import abi
    from lib_mlx.config import MlxModelConfig as ModelConfig, MlxServerConfig as ServerConfig

    # head_dim 32: KV quantization needs groups of at least 32 along the head dimension.
    model_dir = str(make_model("qwen3", max_position_embeddings=CONTEXT, head_dim=32))
    model_fields = {
        "model_path": model_dir,
        "model_id": "org/tiny",
        "revision": "main",
        "thinking_enabled": False,
        "lazy_encoders": False,
        "prompt_cache_bytes": 1 << 20,
        "distributed": None,  # one process (a mode needs ranks started by mlx.launch)
        "distributed_backend": "ring",
        "distributed_timeout_s": 12.5,
        "family": "qwen3",
        "kv_bits": 8,
        "kv_group_size": 32,
        "quantized_kv_start": 16,
        "prompt_cache_dir": str(tmp_path / "kv"),
        "prompt_cache_disk_bytes": 1 << 24,
        "draft_model_path": model_dir,  # the model drafting for itself
        "num_draft_tokens": 3,
        "prompt_lookup": False,  # one kind of speculation at a time (the draft model here)
        "prompt_lookup_ngram": 2,
        "wait": True,  # False returns while it loads (tests/test_lifecycle_background.py)
        "memory_budget_bytes": 1 << 40,
        "max_request_kv_bytes": 1 << 30,
    }
    # A field added later without a JSON value here fails this test.
    assert set(SERVER_FIELDS) == {f.name for f in dataclasses.fields(ServerConfig)}
    assert set(model_fields) == {f.name for f in dataclasses.fields(ModelConfig)}
    loaded_reply = json.loads(abi.load_model(json.dumps(model_fields)))
    assert loaded_reply["ok"], loaded_reply
    handle = loaded_reply["handle"]
    try:
        entry = abi.runtime()._entry(handle)
        for name, value in model_fields.items():
            assert getattr(entry.config, name) == value, name
        reply = json.loads(abi.start_server(handle, json.dumps(SERVER_FIELDS)))
        assert reply["ok"], reply
        settings = entry.server.settings
        for name, value in SERVER_FIELDS.items():
            expected = tuple(value) if isinstance(value, list) else value
            assert getattr(settings, name) == expected, name
        assert reply["server"]["model_id"] == "served-name" and reply["server"]["api_key"] == SERVER_FIELDS["api_key"]
        # allowed_origins took effect: a CORS preflight from a listed origin is answered.
        r = httpx.options(
            reply["server"]["base_url"] + "/v1/chat/completions",
            headers={"Origin": "app://local", "Access-Control-Request-Method": "POST"},
        )
        assert r.headers.get("access-control-allow-origin") == "app://local"
        for empty in ([], ()):
            assert json.loads(abi.stop_server(handle))["ok"]
            assert json.loads(abi.start_server(handle, json.dumps({"allowed_origins": list(empty)})))["ok"]
    finally:
        abi.unload_model(handle)


@pytest.mark.parametrize(
    ("config", "code", "param"),
    [
        ({"api_key": " padded "}, "invalid_config", "api_key"),
        ({"api_key": "ключ"}, "invalid_config", "api_key"),
        ({"api_key": "two words"}, "invalid_config", "api_key"),
        ({"api_key": ""}, "invalid_config", "api_key"),
        ({"allowed_origins": [1]}, "invalid_config", "allowed_origins.0"),
        ({"model_id": "\ud800"}, "invalid_json", "model_id"),
    ],
)
def test_bad_server_configs_are_refused_by_field(config, code, param) -> None:
    from lib_mlx.config import MlxServerConfig as ServerConfig, parse_config
    from lib_mlx.errors import LibMlxError

    with pytest.raises(LibMlxError) as err:
        parse_config(ServerConfig, json.dumps(config))
    assert err.value.code == code and err.value.param == param, err.value


@pytest.mark.parametrize(
    ("config_json", "code"),
    [
        ('{"a": ' * 5000, "invalid_json"),  # nested too deeply for the parser
        ('{"model_path": "\\ud800"}', "invalid_json"),  # a lone surrogate escape
        (json.dumps({"model_path": "/" + "a" * 5000}), "model_not_found"),  # ENAMETOOLONG
        (json.dumps({"model_id": "nobody/not-cached"}), "model_not_found"),
    ],
)
def test_abi_error_codes_are_the_ones_the_header_promises(config_json, code) -> None:
    from lib_mlx import abi

    reply = json.loads(abi.load_model(config_json))
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"]["message"].encode("utf-8")


# --- 7. importing mlx-lm keeps the host's open-file limits ----------------------------------


@pytest.mark.parametrize("limits", ["high", "low"])
def test_loading_keeps_the_hosts_open_file_limits(make_model, limits) -> None:
    """A fresh process with a hard limit above 4096 keeps it (mlx-lm lowered it to 4096), and
    one with a hard limit below 4096 can still load (mlx-lm's setrlimit failed the import)."""
    import resource
    import subprocess
    import sys
    from pathlib import Path

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if limits == "high":
        if hard != resource.RLIM_INFINITY and hard <= 4096:
            pytest.skip(f"this process's hard limit ({hard}) is not above 4096")
        start = (1024, 8192 if hard == resource.RLIM_INFINITY else min(hard, 65536))
    else:
        start = (256, 1024)
    model_dir = make_model("qwen3", max_position_embeddings=CONTEXT)
    code = (
        "import json, resource, sys\n"
        f"resource.setrlimit(resource.RLIMIT_NOFILE, {start!r})\n"
        "from lib_mlx import abi\n"
        "reply = json.loads(abi.load_model(json.dumps({'model_path': sys.argv[1]})))\n"
        "print(json.dumps({'reply': reply, 'limits': resource.getrlimit(resource.RLIMIT_NOFILE)}))\n"
        "abi.unload_model(reply.get('handle', 0))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    proc = subprocess.run(
        [sys.executable, "-c", code, str(model_dir)],
        capture_output=True, text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": src},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["reply"]["ok"], out
    new_soft, new_hard = out["limits"]
    assert new_hard == start[1], out  # never lowered
    assert new_soft >= start[0]  # raised at most (mlx-lm wants 2048 where the hard limit allows)


# --- 8. lone surrogates: 400 naming the field --------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "\\ud800"}], "max_tokens": 2}', "messages[0].content"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "hi"}], "stop": ["\\udfff"], "max_tokens": 2}', "stop[0]"),
        ("/v1/responses", '{"input": "\\ud800", "max_output_tokens": 2}', "input"),
        ("/v1/responses", '{"input": "\\ud800", "max_output_tokens": 2, "stream": true}', "input"),
        ("/v1/responses", '{"input": "hi", "max_output_tokens": 2, "metadata": {"k": "\\ud800"}}', "metadata.k"),
    ],
)
def test_lone_surrogate_escapes_are_400_naming_the_field(serve, path, body, param) -> None:
    s = serve()
    r = s.post(body.encode(), path=path, headers={"Content-Type": "application/json"})
    assert_openai_error(r, 400, "invalid_json", param)
    # A real astral character written as a surrogate *pair* is fine.
    ok = s.post(b'{"messages": [{"role": "user", "content": "\\ud83d\\ude00"}], "max_tokens": 2}', headers={"Content-Type": "application/json"})
    assert ok.status_code == 200, ok.text


def test_a_stored_response_never_holds_a_lone_surrogate(serve) -> None:
    s = serve()
    body = json.dumps({"input": "hi", "max_output_tokens": 2, "store": True, "instructions": "\ud800"})  # ASCII escapes
    r = s.post(body.encode(), path="/v1/responses", headers={"Content-Type": "application/json"})
    assert_openai_error(r, 400, "invalid_json", "instructions")
    r = s.post({"input": "hi", "max_output_tokens": 2, "store": True}, path="/v1/responses")
    assert r.status_code == 200
    assert httpx.get(f"{s.base_url}/v1/responses/{r.json()['id']}", headers=s.headers).status_code == 200


# --- 9. read timeouts and a connection cap -----------------------------------------------------


@pytest.fixture
def short_limits(monkeypatch):
    from lib_mlx.server import connections

    monkeypatch.setattr(connections, "HEADER_TIMEOUT", 1.0)
    monkeypatch.setattr(connections, "BODY_IDLE_TIMEOUT", 1.0)
    monkeypatch.setattr(connections, "MAX_CONNECTIONS", 6)


def _read_until_closed(sock: socket.socket, limit: float = 10.0) -> tuple[bytes, float]:
    sock.settimeout(limit)
    started, got = time.perf_counter(), b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return got, time.perf_counter() - started
        got += chunk


def test_a_connection_that_sends_nothing_is_closed(serve, short_limits) -> None:
    s = serve()
    with socket.create_connection(("127.0.0.1", s.port)) as sock:
        got, elapsed = _read_until_closed(sock)
    assert got == b"" and 0.5 < elapsed < 4.0, elapsed


def test_trickled_headers_get_408_however_slowly_they_come(serve, short_limits) -> None:
    import threading

    s = serve()
    with socket.create_connection(("127.0.0.1", s.port)) as sock:
        stop = threading.Event()

        def trickle() -> None:
            for byte in f"GET /health HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\nX-Slow: ".encode() + b"a" * 1000:
                if stop.wait(0.05):
                    return
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    return

        thread = threading.Thread(target=trickle)
        thread.start()
        try:
            got, elapsed = _read_until_closed(sock)
        finally:
            stop.set()
            thread.join()
    assert got.startswith(b"HTTP/1.1 408"), got
    assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert elapsed < 4.0


def test_a_stalled_body_is_closed_and_the_server_serves_on(serve, short_limits) -> None:
    s = serve()
    body = json.dumps(chat_body()).encode()
    with socket.create_connection(("127.0.0.1", s.port)) as sock:
        head = (
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{s.port}\r\n"
            f"Authorization: Bearer {s.info.api_key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[:10])
        got, elapsed = _read_until_closed(sock)
    assert elapsed < 4.0
    s.assert_serving()


def test_connections_over_the_cap_are_refused_at_once(serve, short_limits) -> None:
    s = serve()
    idle = [socket.create_connection(("127.0.0.1", s.port)) for _ in range(6)]
    try:
        time.sleep(0.1)
        with socket.create_connection(("127.0.0.1", s.port)) as extra:
            got, elapsed = _read_until_closed(extra, 3.0)
        assert got.startswith(b"HTTP/1.1 503"), got
        assert json.loads(got.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "too_many_connections"
        assert elapsed < 1.0
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)
    assert httpx.get(s.base_url + "/health").status_code == 200


# --- 10. the sampler cache is bounded; 12. a tiny top_p is greedy ----------------------------


def _sampling_module():
    try:
        from lib_mlx.core import sampling as module  # after core's split
    except ImportError:
        from lib_mlx.core import decode as module
    return module


def test_the_shared_sampler_cache_is_bounded(serve) -> None:
    module = _sampling_module()
    s = serve()
    for i in range(module.MAX_SHARED_SAMPLERS + 8):
        r = s.post(chat_body(max_tokens=1, temperature=0.5 + i / 1000))
        assert r.status_code == 200, r.text
    assert len(module._shared_samplers) <= module.MAX_SHARED_SAMPLERS
    # Many distinct temperatures straight through the sampler factory: still bounded.
    from lib_mlx.core import SamplingParams

    for i in range(3 * module.MAX_SHARED_SAMPLERS):
        module.make_request_sampler(SamplingParams(temperature=0.1 + i / 10_000), {})
    assert len(module._shared_samplers) == module.MAX_SHARED_SAMPLERS


@pytest.mark.parametrize("top_p", [1e-46, 1e-30, 1e-7])
@pytest.mark.parametrize("seed", [None, 7])
def test_a_tiny_top_p_is_greedy(serve, top_p, seed) -> None:
    s = serve()
    greedy = s.post(chat_body(max_tokens=12, temperature=0, ignore_eos=True)).json()
    sampled = s.post(chat_body(max_tokens=12, temperature=1.0, top_p=top_p, seed=seed, ignore_eos=True)).json()
    assert sampled["choices"][0]["message"]["content"] == greedy["choices"][0]["message"]["content"]


# --- 14. POST bodies must be JSON or multipart (415) ---------------------------------------------


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None, "application/jsonx"])
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_post_bodies_of_other_types_are_415(serve, loaded, content_type, path) -> None:
    from hardening_support import core_of

    s = serve(auth="none")
    core = core_of(*loaded)
    body = json.dumps(chat_body() if path.endswith("completions") else {"input": "hi", "max_output_tokens": 2})
    headers = {"Content-Type": content_type} if content_type else {}
    r = httpx.post(s.base_url + path, content=body.encode(), headers=headers)
    error = assert_openai_error(r, 415, "unsupported_media_type", "Content-Type")
    assert "application/json" in error["message"]
    assert core.in_flight == 0
    ok = httpx.post(s.base_url + path, content=body.encode(), headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 200, ok.text


# --- 13. a multipart boundary over 256 characters is a 400 ------------------------------------


@pytest.mark.parametrize("length", [256, 257, 5000])
def test_a_long_multipart_boundary_is_400_not_500(serve, length) -> None:
    s = serve()
    b = "b" * length
    request = json.dumps(chat_body(max_tokens=1))
    body = f'--{b}\r\nContent-Disposition: form-data; name="request"\r\n\r\n{request}\r\n--{b}--\r\n'.encode()
    r = s.post(body, headers={"Content-Type": f"multipart/form-data; boundary={b}"})
    if length <= 256:
        assert r.status_code == 200, r.text
    else:
        assert_openai_error(r, 400, "invalid_multipart")
