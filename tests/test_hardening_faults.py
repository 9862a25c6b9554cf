"""Hardening, part 2: faults lose nothing.

A client that hangs up stops its generation at the next token and frees its queue slot; an
exception inside generation (an MLX out-of-memory error included) becomes that request's error
and the worker goes on serving; stopping the server or unloading the model with requests open
ends them cleanly. Each scenario runs through the real generation path, on both engine paths
(one request at a time, ``queue_limit=1``; continuous batching, ``queue_limit=2``), with
``ModelProbe`` slowing, failing or lengthening the tiny model's forward passes.
"""

from __future__ import annotations

import json
import threading
import time

import httpx
import openai
import pytest

from hardening_support import (
    MALLOC_OOM,
    METAL_OOM,
    USER,
    Served,
    assert_openai_error,
    chat_body,
    core_of,
    install_probe,
    poison_random_state,
    raw_request,
    remove_probe,
    sse_data,
    wait_for,
)
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig
from lib_mlx.core.events import Done
from lib_mlx.errors import UnknownHandleError

LONG = 200  # tokens asked for when a test means to interrupt the answer
DELAY = 0.03  # seconds added to every forward pass: a slow model


@pytest.fixture(scope="module")
def model_dir(make_model):
    return make_model("qwen3", max_position_embeddings=512)


@pytest.fixture(scope="module")
def loaded(model_dir):
    runtime = LibMlxRuntime()
    handle = runtime.load_model(MlxModelConfig(str(model_dir)))
    yield runtime, handle
    runtime.close()


@pytest.fixture(params=[1, 2], ids=["single", "batched"])
def served(request, loaded):
    """A server on the module's model (``queue_limit`` 1 or 2) with a probe on its model."""
    runtime, handle = loaded
    runtime.stop_server(handle)
    s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(queue_limit=request.param)))
    s.probe = install_probe(runtime, handle)
    s.queue_limit = request.param
    yield s
    remove_probe(runtime, handle)
    runtime.stop_server(handle)
    assert wait_for(lambda: s.in_flight == 0, 10), "a generation outlived its server"


def slow(s: Served) -> None:
    s.probe.delay = DELAY
    s.probe.mask_eos = True


def healthy(s: Served) -> None:
    s.probe.delay = 0.0
    s.probe.mask_eos = False
    s.assert_serving()


def assert_stopped_soon(s: Served, calls_before: int) -> None:
    """The generation ends within a few forward passes and its queue slot is free."""
    assert wait_for(lambda: s.in_flight == 0, 5), "the queue slot was not freed"
    time.sleep(5 * DELAY)
    assert s.probe.calls - calls_before <= 4, (calls_before, s.probe.calls)


# --- client disconnects ----------------------------------------------------------------------


def test_disconnect_mid_stream_stops_generation_and_frees_the_slot(served):
    s = served
    slow(s)
    with httpx.Client(timeout=30) as http:
        with http.stream(
            "POST", s.base_url + "/v1/chat/completions", json=chat_body(stream=True, max_tokens=LONG), headers=s.headers
        ) as r:
            assert r.status_code == 200
            seen = 0
            for line in r.iter_lines():
                if line.startswith("data: {"):
                    seen += 1
                if seen >= 4:
                    break
            assert s.in_flight == 1
            calls = s.probe.calls
        # leaving the block closes the connection mid-stream
    assert_stopped_soon(s, calls)
    assert s.probe.calls < LONG // 2
    healthy(s)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/responses"])
def test_disconnect_of_a_non_streaming_request_cancels_it(served, path):
    s = served
    slow(s)
    if path == "/v1/responses":
        body = json.dumps({"input": "hello", "max_output_tokens": LONG, "temperature": 0}).encode()
    else:
        body = json.dumps(chat_body(max_tokens=LONG)).encode()
    with raw_request(s.port, body, token=s.info.api_key, path=path):
        assert wait_for(lambda: s.probe.calls >= 4, 10), "generation did not start"
        assert s.in_flight == 1
        calls = s.probe.calls
    assert_stopped_soon(s, calls)
    assert s.probe.calls < LONG // 2
    healthy(s)


def test_disconnect_while_the_prompt_is_processed(served):
    """Gone before the first token: nothing is generated for nobody."""
    s = served
    slow(s)
    s.probe.delay = 0.5  # a long prefill
    body = json.dumps(chat_body(stream=True, max_tokens=LONG)).encode()
    with raw_request(s.port, body, token=s.info.api_key):
        assert wait_for(lambda: s.probe.calls >= 1, 10)
        calls = s.probe.calls
    s.probe.delay = DELAY
    assert_stopped_soon(s, calls)
    healthy(s)


def test_disconnect_while_sending_the_body(served):
    """Content-Length promises more than the client sends before it hangs up."""
    s = served
    for sent in (b"", b'{"messages": [{"role": "us'):
        with raw_request(s.port, sent, token=s.info.api_key, content_length=1000):
            time.sleep(0.2)  # the server is reading the body
    assert s.in_flight == 0
    healthy(s)


def test_queue_full_is_429_and_a_hang_up_frees_the_slot(loaded):
    runtime, handle = loaded
    runtime.stop_server(handle)
    s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(queue_limit=1)))
    s.probe = install_probe(runtime, handle)
    try:
        slow(s)
        with raw_request(s.port, json.dumps(chat_body(max_tokens=LONG)).encode(), token=s.info.api_key):
            assert wait_for(lambda: s.in_flight == 1, 10)
            r = s.post(chat_body())
            assert_openai_error(r, 429, "queue_full")
            assert r.json()["error"]["type"] == "rate_limit_error"
            assert r.headers["retry-after"] == "1"
        assert wait_for(lambda: s.in_flight == 0, 5)
        healthy(s)
    finally:
        remove_probe(runtime, handle)
        runtime.stop_server(handle)


# --- exceptions inside generation -------------------------------------------------------------


def stream_frames(s: Served, **body) -> list:
    with httpx.Client(timeout=30) as http:
        r = http.post(s.base_url + "/v1/chat/completions", json=chat_body(stream=True, **body), headers=s.headers)
    assert r.status_code == 200
    return sse_data(r.text.splitlines())


@pytest.mark.parametrize(
    "error, code",
    [
        (RuntimeError("boom in the forward pass"), "generation_failed"),
        (RuntimeError(METAL_OOM), "out_of_memory"),
        (RuntimeError(MALLOC_OOM), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
    ],
    ids=["runtime-error", "metal-oom", "malloc-oom", "memory-error"],
)
def test_exception_mid_stream_is_an_sse_error_then_done(served, error, code):
    s = served
    s.probe.mask_eos = True
    s.probe.fail_after(6, error)
    frames = stream_frames(s, max_tokens=LONG)
    assert frames[-1] == "[DONE]"
    failure = frames[-2]
    assert set(failure) == {"error"}, failure
    assert failure["error"]["code"] == code
    assert failure["error"]["type"] == "server_error"
    chunks = frames[:-2]
    assert chunks and all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert not any(c["choices"] and c["choices"][0]["finish_reason"] for c in chunks)
    # The openai client surfaces the same frame as an APIError.
    s.probe.fail_after(6, error)
    with pytest.raises(openai.APIError):
        for _ in s.client().chat.completions.create(model=s.info.model_id, messages=USER, max_tokens=LONG, stream=True):
            pass
    healthy(s)


@pytest.mark.parametrize(
    "error, code",
    [(RuntimeError("boom in the forward pass"), "generation_failed"), (RuntimeError(METAL_OOM), "out_of_memory")],
    ids=["runtime-error", "metal-oom"],
)
def test_exception_in_a_non_streaming_request_is_a_500_body(served, error, code):
    s = served
    s.probe.mask_eos = True
    s.probe.fail_after(3, error)
    r = s.post(chat_body(max_tokens=LONG))
    failure = assert_openai_error(r, 500, code)
    assert failure["type"] == "server_error"
    healthy(s)


def test_failure_while_a_sampler_is_traced_does_not_poison_later_requests(served):
    """An exception thrown while a compiled mlx-lm sampler is traced leaves MLX's global random
    state unusable; without the engine's recovery every later sampled request would fail."""
    s = served
    s.probe.fail_after(2, poison_random_state)
    assert_openai_error(s.post(chat_body(temperature=1.0, max_tokens=8)), 500, "generation_failed")
    for _ in range(2):
        r = s.post(chat_body(temperature=1.0, max_tokens=8))
        assert r.status_code == 200, r.text
    healthy(s)


# --- server stop and unload with requests open --------------------------------------------------


def _stream_in_thread(s: Served, results: list, started: threading.Event) -> threading.Thread:
    def run() -> None:
        frames: list = []
        try:
            with httpx.Client(timeout=30) as http:
                with http.stream(
                    "POST",
                    s.base_url + "/v1/chat/completions",
                    json=chat_body(stream=True, max_tokens=LONG),
                    headers=s.headers,
                ) as r:
                    for line in r.iter_lines():
                        frames.extend(sse_data([line]))
                        if len(frames) >= 2:
                            started.set()
            results.append(("ended", frames))
        except httpx.HTTPError as exc:  # a closed connection is a clean end too
            results.append(("closed", type(exc).__name__, frames))
        finally:
            started.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def _plain_in_thread(s: Served, results: list) -> threading.Thread:
    def run() -> None:
        try:
            r = httpx.post(
                s.base_url + "/v1/chat/completions", json=chat_body(max_tokens=LONG), headers=s.headers, timeout=30
            )
            results.append(("answered", r.status_code, r.json()))
        except httpx.HTTPError as exc:
            results.append(("closed", type(exc).__name__, None))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_stopping_the_server_ends_open_requests_cleanly(served):
    """A stream still being read gets an error frame (code ``cancelled``) and ``[DONE]``; a
    plain request gets a 503 ``cancelled`` body; nobody hangs."""
    s = served
    slow(s)
    streams: list = []
    plain: list = []
    started = threading.Event()
    threads = [_stream_in_thread(s, streams, started)]
    assert started.wait(15)
    if s.queue_limit > 1:
        threads.append(_plain_in_thread(s, plain))
        assert wait_for(lambda: s.in_flight == 2, 10)
    t0 = time.monotonic()
    s.runtime.stop_server(s.handle)
    assert time.monotonic() - t0 < 10
    for t in threads:
        t.join(10)
        assert not t.is_alive(), "a client hung after the server stopped"
    (stream,) = streams
    assert stream[0] == "ended", stream
    frames = stream[1]
    assert frames[-1] == "[DONE]" and frames[-2]["error"]["code"] == "cancelled", frames[-2:]
    for result in plain:
        assert result[:2] == ("answered", 503) and result[2]["error"]["code"] == "cancelled", result
    assert wait_for(lambda: s.in_flight == 0, 5)
    # Start again: serving as before.
    s.info = s.runtime.start_server(s.handle, MlxServerConfig(queue_limit=s.queue_limit))
    healthy(s)


def test_unloading_while_requests_run_cancels_them(model_dir):
    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(model_dir)))
        s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(queue_limit=2)))
        s.probe = install_probe(runtime, handle)
        slow(s)
        # One request over HTTP, one through the core's synchronous API.
        core = core_of(runtime, handle)
        from lib_mlx.core import ChatPrompt, SamplingParams

        generation = core.submit(
            core.render(ChatPrompt(messages=USER)), SamplingParams(max_tokens=LONG, temperature=0.0)
        )
        results: list = []
        started = threading.Event()
        thread = _stream_in_thread(s, results, started)
        assert started.wait(15)
        t0 = time.monotonic()
        runtime.unload_model(handle)
        assert time.monotonic() - t0 < 15
        thread.join(10)
        assert not thread.is_alive()
        ((how, frames),) = results
        assert how == "ended" and frames[-1] == "[DONE]" and frames[-2]["error"]["code"] == "cancelled", frames[-2:]
        events = list(generation)  # ends, never hangs
        assert isinstance(events[-1], Done) and events[-1].finish_reason == "cancelled", events[-1]
        assert events[-1].usage.completion_tokens < LONG
        with pytest.raises(UnknownHandleError):
            runtime.server_status(handle)
        # The runtime goes on: load and serve again.
        handle = runtime.load_model(MlxModelConfig(str(model_dir)))
        again = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig()))
        again.assert_serving()
    finally:
        runtime.close()
