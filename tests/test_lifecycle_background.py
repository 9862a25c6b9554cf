"""Issue 19: loading in the background with progress, serving 503 until ready, cancelling a
load, idle unload, and the memory guard -- through the runtime, its JSON twins and HTTP."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from hub_standin import REPO, HubStandIn, hub  # noqa: F401 - the fixture
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig, abi
from lib_mlx.errors import InsufficientMemoryError, ModelLoadError

PHASES = ["resolve", "download", "load", "warmup"]


def call(fn, *args) -> dict:
    return json.loads(fn(*args))


def poll_abi(handle: int, until: set[str], timeout: float = 60) -> list[dict]:
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = call(abi.server_status, handle)
        assert reply["ok"] is True, reply
        seen.append(reply["model"])
        if reply["model"]["status"] in until:
            return seen
        time.sleep(0.002)
    raise AssertionError(f"still {seen[-1]} after {timeout}s")


def assert_monotonic(progress: list[dict]) -> None:
    for a, b in zip(progress, progress[1:]):
        assert PHASES.index(b["phase"]) >= PHASES.index(a["phase"]), (a, b)
        for key in ("bytes_done", "bytes_total", "files_done", "files_total"):
            assert b[key] >= a[key], (key, a, b)


@pytest.fixture(scope="module")
def big_model(make_model) -> Path:
    """~60 MB of weights: big enough to measure, and to take a moment to load."""
    return make_model("llama", hidden_size=1024, num_layers=6)


def test_background_load_reaches_ready_with_monotonic_progress(big_model: Path) -> None:
    started = time.monotonic()
    loaded = call(abi.load_model, json.dumps({"model_path": str(big_model), "model_id": "big", "wait": False}))
    returned_in = time.monotonic() - started
    assert loaded["ok"] is True and loaded["status"] == "loading" and loaded["model_id"] == "big", loaded
    assert returned_in < 0.5, returned_in  # at once, not after the load
    handle = loaded["handle"]
    try:
        seen = poll_abi(handle, {"ready", "failed"})
        assert seen[0]["status"] == "loading" and seen[-1]["status"] == "ready", (seen[0], seen[-1])
        progress = [m["progress"] for m in seen]
        assert_monotonic(progress)
        assert {p["phase"] for p in progress} >= {"load"}
        final = progress[-1]
        files = [p for p in big_model.iterdir() if p.is_file()]
        assert final["bytes_done"] == final["bytes_total"] == sum(p.stat().st_size for p in files)
        assert final["files_done"] == final["files_total"] == len(files)
        assert seen[-1]["model_path"] == str(big_model) and seen[-1]["loads"] == 1
    finally:
        assert call(abi.unload_model, handle)["status"] == "unloaded"


def test_unload_cancels_a_load_and_frees_its_memory(big_model: Path) -> None:
    import mlx.core as mx

    from lib_mlx.core.memory import release_memory

    rt = LibMlxRuntime()
    release_memory()
    before = mx.get_active_memory()
    handle = rt.load_model(MlxModelConfig(str(big_model), wait=False))
    assert rt.server_status(handle)["model"]["status"] == "loading"
    while (model := rt.server_status(handle)["model"])["progress"]["phase"] == "resolve":
        time.sleep(0.001)
    assert model["status"] == "loading", model  # the weights are on their way in
    rt.unload_model(handle)  # mid-load: waits for the load to stop, then frees what it made
    after = mx.get_active_memory()
    assert abs(after - before) <= 0.05 * max(before, 1) + 1024 * 1024, (before, after)
    assert rt.handles() == []
    assert call(abi.server_status, handle)["ok"] is False


def test_a_failed_background_load_shows_failed_with_its_error(tmp_path: Path, make_model, runtime: LibMlxRuntime) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for p in make_model("qwen3").iterdir():
        (broken / p.name).write_bytes(p.read_bytes())
    (broken / "model.safetensors").write_bytes(b"\0" * 1000)  # not a safetensors file
    handle = runtime.load_model(MlxModelConfig(str(broken), wait=False))
    deadline = time.monotonic() + 30
    while (model := runtime.server_status(handle)["model"])["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert model["status"] == "failed"
    assert model["error"]["code"] == "model_load_failed" and "model.safetensors" in model["error"]["message"]
    with pytest.raises(ModelLoadError):  # waiting for it gives its error
        runtime.start_server(handle, MlxServerConfig(port=0))
    info = runtime.start_server(handle, MlxServerConfig(port=0, wait=False, auth="none"))
    health = httpx.get(f"{info.base_url}/health")
    assert health.status_code == 503 and health.json()["error"]["code"] == "model_load_failed"
    runtime.unload_model(handle)
    with pytest.raises(ModelLoadError):  # waiting: nothing is registered
        runtime.load_model(MlxModelConfig(str(broken)))
    assert runtime.handles() == []


def test_a_server_on_a_loading_handle_answers_503_until_ready(hub: HubStandIn, runtime: LibMlxRuntime) -> None:
    hub.throttle_s = 0.1  # ~1.3 s of download: the server is up long before the model
    handle = runtime.load_model(MlxModelConfig(model_id=REPO, wait=False))
    info = runtime.start_server(handle, MlxServerConfig(port=0, wait=False))
    assert runtime.server_status(handle)["model"]["status"] == "loading"
    auth = {"Authorization": f"Bearer {info.api_key}"}
    health = httpx.get(f"{info.base_url}/health")
    assert health.status_code == 503 and health.headers["retry-after"] == "1"
    assert health.json()["error"]["code"] == "model_not_ready" and "loading" in health.json()["error"]["message"]
    for method, path in (
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/responses"),
        ("POST", "/tokenize"),
    ):
        reply = httpx.request(method, f"{info.base_url}{path}", headers=auth, json={})
        assert reply.status_code == 503 and reply.headers["retry-after"] == "1", (path, reply.text)
    anthropic = httpx.post(f"{info.base_url}/v1/messages", headers=auth, json={})
    assert anthropic.status_code == 503 and anthropic.json()["type"] == "error", anthropic.text  # its own shape
    assert httpx.get(f"{info.base_url}/v1/models").status_code == 401  # access control still first

    deadline = time.monotonic() + 30
    while runtime.server_status(handle)["model"]["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert httpx.get(f"{info.base_url}/health").json()["model_status"] == "ready"
    reply = runtime.openai_client(handle).chat.completions.create(
        model=REPO, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.usage.completion_tokens <= 2


def test_start_server_waits_for_a_loading_handle(hub: HubStandIn, runtime: LibMlxRuntime) -> None:
    hub.throttle_s = 0.02
    handle = runtime.load_model(MlxModelConfig(model_id=REPO, wait=False))
    assert runtime.server_status(handle)["model"]["status"] == "loading"
    info = runtime.start_server(handle, MlxServerConfig(port=0))
    assert runtime.server_status(handle)["model"]["status"] == "ready"
    assert httpx.get(f"{info.base_url}/health").status_code == 200


def test_idle_unload_frees_memory_and_the_next_request_reloads(big_model: Path) -> None:
    import mlx.core as mx

    from lib_mlx.core.memory import release_memory

    rt = LibMlxRuntime()
    try:
        release_memory()
        before = mx.get_active_memory()
        handle = rt.load_model(MlxModelConfig(str(big_model)))
        weights = mx.get_active_memory() - before
        info = rt.start_server(handle, MlxServerConfig(port=0, idle_unload_s=0.5))
        client = rt.openai_client(handle)
        chat = dict(model=info.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        client.chat.completions.create(**chat)
        assert rt.server_status(handle)["server"]["idle_unload_s"] == 0.5

        deadline = time.monotonic() + 10
        while (status := rt.server_status(handle))["model"]["status"] != "sleeping":
            assert time.monotonic() < deadline, status
            time.sleep(0.05)
        assert status["server"]["status"] == "running"
        assert status["memory"]["active_bytes"] - before <= 0.05 * weights, (before, weights, status["memory"])
        assert httpx.get(f"{info.base_url}/health").json()["model_status"] == "sleeping"

        loads = status["model"]["loads"]
        reply = client.chat.completions.create(**chat)  # loads again, then answers
        assert reply.choices[0].message is not None and reply.usage.completion_tokens <= 2
        status = rt.server_status(handle)
        assert status["model"]["status"] == "ready" and status["model"]["loads"] == loads + 1
        assert status["memory"]["active_bytes"] - before >= 0.9 * weights
    finally:
        rt.close()


def test_insufficient_memory_names_both_figures(make_model, runtime: LibMlxRuntime) -> None:
    model_dir = make_model("qwen3")
    weights = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    reply = call(abi.load_model, json.dumps({"model_path": str(model_dir), "memory_budget_bytes": weights}))
    assert reply["ok"] is False and reply["error"]["code"] == "insufficient_memory", reply
    message = reply["error"]["message"]
    assert "margin" in message and "memory_budget_bytes" in message and "is available" in message, message
    # in the background, the load fails with the same error
    handle = runtime.load_model(MlxModelConfig(str(model_dir), memory_budget_bytes=weights, wait=False))
    deadline = time.monotonic() + 30
    while (model := runtime.server_status(handle)["model"])["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert model["error"]["code"] == "insufficient_memory"
    with pytest.raises(InsufficientMemoryError):
        runtime.start_server(handle)
    # a budget with room loads
    ok = runtime.load_model(MlxModelConfig(str(model_dir), memory_budget_bytes=weights + 2**30))
    assert runtime.server_status(ok)["model"]["status"] == "ready"


def test_a_request_over_the_kv_budget_is_refused_before_any_work(make_model, runtime: LibMlxRuntime) -> None:
    model_dir = make_model("qwen3")
    config = json.loads((model_dir / "config.json").read_text())
    per_token = 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * config["head_dim"] * 4  # float32
    budget = 200 * per_token
    handle = runtime.load_model(MlxModelConfig(str(model_dir), max_request_kv_bytes=budget))
    info = runtime.start_server(handle, MlxServerConfig(port=0))
    client = runtime.openai_client(handle, max_retries=0)
    import openai

    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model=info.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=500
        )
    body = err.value.body
    assert body["code"] == "context_length_exceeded" and body["param"] == "max_tokens", body
    assert "per-request budget" in body["message"] and f"{per_token} bytes a token" in body["message"], body
    status = runtime.server_status(handle)
    assert status["in_flight"] == 0 and status["model"]["context_length"] == 200
    reply = client.chat.completions.create(
        model=info.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=5
    )
    assert reply.usage.completion_tokens <= 5
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=info.model_id, messages=[{"role": "user", "content": "hi " * 300}])
    assert err.value.body["code"] == "context_length_exceeded"
