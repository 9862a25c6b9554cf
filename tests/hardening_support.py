"""Helpers shared by the tests that serve a model (``Served``, also what ``conftest.serve``
yields), and by the hardening, fuzz and soak tests.

``ModelProbe`` stands in for a loaded model's forward pass while the real generation path runs
around it: every call goes to the real (tiny, random) model, then the probe may sleep (a slow
model, so a test can act mid-answer), raise (a fault inside generation, e.g. the RuntimeError
MLX's allocator throws when memory runs out) or mask the end-of-sequence tokens (an answer that
runs until ``max_tokens``).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig

# What MLX's allocators throw (std::runtime_error -> RuntimeError) when memory runs out.
METAL_OOM = (
    "[metal::malloc] Attempting to allocate 96905199616 bytes which is greater than the maximum "
    "allowed buffer size of 17179869184 bytes."
)
MALLOC_OOM = "[malloc] Unable to allocate 34359738368 bytes."

USER = [{"role": "user", "content": "hello"}]


class ModelProbe:
    def __init__(self, model: Any, eos_ids: Any) -> None:
        self._model = model
        self.calls = 0
        self.delay = 0.0
        self.mask_eos = False
        self._eos = sorted(int(t) for t in eos_ids)
        self._mask: Any = None
        self._fault: tuple[int, Callable[[], None]] | None = None
        self._lock = threading.Lock()

    def fail_after(self, calls: int, error: BaseException | Callable[[], None]) -> None:
        """Raise ``error`` (or run ``error()``, which raises) on the ``calls``-th forward pass
        from now, once."""
        action = error if callable(error) and not isinstance(error, BaseException) else _raiser(error)
        with self._lock:
            self._fault = (self.calls + calls, action)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls += 1
            fault = self._fault
            if fault is not None and self.calls >= fault[0]:
                self._fault = None
            else:
                fault = None
        if fault is not None:
            fault[1]()
        out = self._model(*args, **kwargs)
        if self.mask_eos and self._eos:
            out = out + self._eos_mask(out)
        if self.delay:
            time.sleep(self.delay)
        return out

    def _eos_mask(self, logits: Any) -> Any:
        import mlx.core as mx

        vocab = logits.shape[-1]
        if self._mask is None or self._mask.shape[-1] != vocab:
            mask = [0.0] * vocab
            for token in self._eos:
                if token < vocab:
                    mask[token] = -1e9
            self._mask = mx.array(mask, dtype=logits.dtype)
        return self._mask

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _raiser(error: BaseException) -> Callable[[], None]:
    def raise_it() -> None:
        raise error

    return raise_it


def poison_random_state() -> None:
    """Fail the way a compiled mlx-lm sampler fails while being traced: the exception leaves
    ``mx.random.state`` holding a placeholder array (every later sampled token would fail)."""
    from functools import partial

    import mlx.core as mx

    @partial(mx.compile, inputs=mx.random.state, outputs=mx.random.state)
    def traced(x: Any) -> Any:
        mx.random.categorical(x)
        raise ValueError("failure while a compiled sampler was traced")

    traced(mx.zeros((4,)))


def core_of(runtime: LibMlxRuntime, handle: int) -> Any:
    return runtime._entry(handle).core


def install_probe(runtime: LibMlxRuntime, handle: int) -> ModelProbe:
    loaded = core_of(runtime, handle).loaded
    model = loaded.model
    if isinstance(model, ModelProbe):
        model = model._model
    probe = ModelProbe(model, loaded.tokenizer.eos_token_ids)
    loaded.model = probe
    return probe


def remove_probe(runtime: LibMlxRuntime, handle: int) -> None:
    loaded = core_of(runtime, handle).loaded
    if isinstance(loaded.model, ModelProbe):
        loaded.model = loaded.model._model


def in_flight(runtime: LibMlxRuntime, handle: int) -> int:
    return core_of(runtime, handle).in_flight


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def chat_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": USER, "max_tokens": 4, "temperature": 0}
    body.update(extra)
    return body


@contextlib.contextmanager
def raw_request(
    port: int,
    body: bytes,
    *,
    token: str | None,
    path: str = "/v1/chat/completions",
    host: str | None = None,
    content_length: int | None = None,
) -> Iterator[socket.socket]:
    """An HTTP/1.1 POST written on a plain socket, which the test may close at any moment
    (``content_length`` may promise more than ``body``)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    try:
        head = [
            f"POST {path} HTTP/1.1",
            f"Host: {host or f'127.0.0.1:{port}'}",
            "Content-Type: application/json",
            f"Content-Length: {len(body) if content_length is None else content_length}",
        ]
        if token:
            head.append(f"Authorization: Bearer {token}")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        yield sock
    finally:
        sock.close()


def sse_data(lines: list[str]) -> list[Any]:
    """The ``data:`` payloads of an SSE body: JSON objects, and the literal ``[DONE]``."""
    out: list[Any] = []
    for line in lines:
        if line.startswith("data: "):
            payload = line[len("data: ") :]
            out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


class Served:
    """A running server on a loaded handle, with clients that carry its token."""

    def __init__(self, runtime: LibMlxRuntime, handle: int, info: Any) -> None:
        self.runtime = runtime
        self.handle = handle
        self.info = info

    @property
    def base_url(self) -> str:
        return self.info.base_url

    @property
    def port(self) -> int:
        return self.info.port

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.info.api_key}"} if self.info.api_key else {}

    @property
    def in_flight(self) -> int:
        return in_flight(self.runtime, self.handle)

    @property
    def core(self) -> Any:
        return core_of(self.runtime, self.handle)

    def status(self) -> dict[str, Any]:
        return self.runtime.server_status(self.handle)

    def client(self, **kwargs: Any) -> Any:
        """The real ``openai`` client with strict response validation."""
        import openai

        kwargs.setdefault("_strict_response_validation", True)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("timeout", 60)
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=self.info.api_key or "none", **kwargs)

    def post(self, body: Any, *, path: str = "/v1/chat/completions", **kwargs: Any) -> Any:
        import httpx

        headers = {**self.headers, **kwargs.pop("headers", {})}
        if isinstance(body, (bytes, str)) or hasattr(body, "__next__"):
            kwargs["content"] = body
            # Raw bodies are labelled JSON (POST routes refuse other types with 415).
            if not any(k.lower() == "content-type" for k in headers):
                headers["Content-Type"] = "application/json"
        else:
            kwargs["json"] = body
        return httpx.post(self.base_url + path, headers=headers, timeout=60, **kwargs)

    def assert_serving(self) -> None:
        """A normal request, plain and streamed, still succeeds, and nothing is left in flight."""
        client = self.client()
        reply = client.chat.completions.create(model=self.info.model_id, messages=USER, max_tokens=3, temperature=0)
        assert reply.choices[0].finish_reason in ("stop", "length")
        assert reply.usage is not None and reply.usage.completion_tokens >= 1
        chunks = list(
            client.chat.completions.create(
                model=self.info.model_id, messages=USER, max_tokens=3, temperature=0, stream=True
            )
        )
        assert chunks[-1].choices[0].finish_reason in ("stop", "length")
        assert wait_for(lambda: self.in_flight == 0, 5), "a generation stayed in flight"


def assert_openai_error(response: Any, status: int, code: str | None = None, param: str | None = None) -> dict:
    """``response`` has ``status`` and the OpenAI error shape; returns the error object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert set(error) >= {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, error
    if param is not None:
        assert error["param"] == param, error
    return error


# --- a model loaded once per test module, served with the settings each test asks for ----------

CONTEXT = 256  # the loaded model's context length (small, so that limits are cheap to reach)


@pytest.fixture(scope="module")
def loaded(make_model):
    runtime = LibMlxRuntime()
    handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3", max_position_embeddings=CONTEXT))))
    yield runtime, handle
    runtime.close()


@pytest.fixture
def serve(loaded):
    """``serve(**MlxServerConfig fields) -> Served`` on the module's loaded model."""
    runtime, handle = loaded

    def start(**settings) -> Served:
        runtime.stop_server(handle)
        return Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(**settings)))

    yield start
    runtime.stop_server(handle)
