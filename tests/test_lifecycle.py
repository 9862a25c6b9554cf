"""The lifecycle through LibMlxRuntime and its JSON twins in lib_mlx.abi (issue 2)."""

from __future__ import annotations

import json
import socket
import threading

import httpx
import pytest

from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig, abi
from lib_mlx.errors import UnknownHandleError

# README's lifecycle JSON schemas: the keys each reply must carry.
LOAD_KEYS = {"ok", "handle", "status", "model_id"}
START_KEYS = {"ok", "handle", "server"}
SERVER_KEYS = {"host", "port", "base_url", "model_id", "status"}
STOP_KEYS = {"ok", "handle", "status"}
STATUS_KEYS = {"ok", "handle", "model", "server"}
STATUS_MODEL_KEYS = {"status", "model_id", "model_path"}
UNLOAD_KEYS = {"ok", "handle", "status"}


def call(fn, *args) -> dict:
    reply = fn(*args)
    assert isinstance(reply, str)
    return json.loads(reply)


def test_runtime_lifecycle(runtime: LibMlxRuntime, make_model) -> None:
    model_dir = make_model("qwen3")
    handle = runtime.load_model(MlxModelConfig(str(model_dir)))
    assert handle >= 1
    info = runtime.start_server(handle, MlxServerConfig(port=0))
    assert info.port > 0 and info.status == "running"
    assert info.base_url == f"http://127.0.0.1:{info.port}"
    assert runtime.server_status(handle)["server"]["status"] == "running"
    assert httpx.get(f"{info.base_url}/health").status_code == 200

    assert runtime.stop_server(handle) is True
    assert runtime.server_status(handle)["server"]["status"] == "stopped"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{info.base_url}/health", timeout=2)
    assert runtime.stop_server(handle) is False  # idempotent

    again = runtime.start_server(handle, MlxServerConfig(port=0))
    assert runtime.server_status(handle)["server"]["status"] == "running"
    assert httpx.get(f"{again.base_url}/health").status_code == 200

    runtime.unload_model(handle)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{again.base_url}/health", timeout=2)
    for op in (runtime.server_status, runtime.stop_server, runtime.unload_model, runtime.start_server):
        with pytest.raises(UnknownHandleError):
            op(handle)


def test_json_twins_follow_the_design_note_schemas(make_model) -> None:
    model_dir = make_model("qwen3")
    loaded = call(abi.load_model, json.dumps({"model_path": str(model_dir), "model_id": "tiny/qwen3"}))
    assert LOAD_KEYS <= loaded.keys()
    assert loaded["ok"] is True and loaded["status"] == "ready" and loaded["model_id"] == "tiny/qwen3"
    handle = loaded["handle"]
    try:
        started = call(abi.start_server, handle, json.dumps({"host": "127.0.0.1", "port": 0, "queue_limit": 1}))
        assert START_KEYS <= started.keys() and started["ok"] is True
        server = started["server"]
        assert SERVER_KEYS <= server.keys()
        assert server["status"] == "running" and server["model_id"] == "tiny/qwen3"
        assert server["base_url"] == f"http://127.0.0.1:{server['port']}"

        status = call(abi.server_status, handle)
        assert STATUS_KEYS <= status.keys()
        assert STATUS_MODEL_KEYS <= status["model"].keys()
        assert status["model"]["status"] == "ready" and status["model"]["model_path"] == str(model_dir)
        assert status["server"]["status"] == "running"
        assert set(status["memory"]) == {"active_bytes", "peak_bytes", "cache_bytes"}
        assert status["memory"]["active_bytes"] > 0

        stopped = call(abi.stop_server, handle)
        assert STOP_KEYS <= stopped.keys() and stopped["status"] == "stopped"
        assert call(abi.server_status, handle)["server"] == {"status": "stopped"}
    finally:
        unloaded = call(abi.unload_model, handle)
    assert UNLOAD_KEYS <= unloaded.keys() and unloaded == {"ok": True, "handle": handle, "status": "unloaded"}
    for fn in (abi.server_status, abi.stop_server, abi.unload_model):
        reply = call(fn, handle)
        assert reply == {"ok": False, "error": {"code": "unknown_handle", "message": reply["error"]["message"]}}
    assert call(abi.start_server, handle, "{}")["error"]["code"] == "unknown_handle"


@pytest.mark.parametrize(
    ("config", "code"),
    [
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_config"),
        ("{}", "invalid_config"),
        ('{"model_path": 5}', "invalid_config"),
        ('{"model_path": "/nonexistent/model"}', "model_not_found"),
        ('{"model_id": "nobody/no-such-model-here"}', "model_not_found"),
        ('{"model_path": "/tmp", "thinking_enabled": "yes"}', "invalid_config"),
    ],
)
def test_load_model_errors(config: str, code: str) -> None:
    reply = call(abi.load_model, config)
    assert reply["ok"] is False and reply["error"]["code"] == code
    assert reply["error"]["message"]


def test_start_server_errors(make_model) -> None:
    handle = call(abi.load_model, json.dumps({"model_path": str(make_model("qwen3"))}))["handle"]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        port = busy.getsockname()[1]
        reply = call(abi.start_server, handle, json.dumps({"port": port}))
        assert reply["ok"] is False and reply["error"]["code"] == "port_in_use"
        assert call(abi.start_server, handle, "{oops")["error"]["code"] == "invalid_json"
        assert call(abi.start_server, handle, '{"port": -1}')["error"]["code"] == "invalid_config"
        assert call(abi.start_server, handle, '{"queue_limit": "2"}')["error"]["code"] == "invalid_config"
        assert call(abi.server_status, handle)["server"]["status"] == "stopped"
        assert call(abi.server_status, 987654)["error"]["code"] == "unknown_handle"
        assert call(abi.server_status, "1")["error"]["code"] == "unknown_handle"
    finally:
        busy.close()
        call(abi.unload_model, handle)


def test_two_handles_two_servers(runtime: LibMlxRuntime, make_model) -> None:
    first = runtime.load_model(MlxModelConfig(str(make_model("qwen3")), model_id="one"))
    second = runtime.load_model(MlxModelConfig(str(make_model("llama")), model_id="two"))
    assert first != second
    a = runtime.start_server(first, MlxServerConfig(port=0))
    b = runtime.start_server(second, MlxServerConfig(port=0))
    assert a.port != b.port
    for handle, model_id in ((first, "one"), (second, "two")):
        client = runtime.openai_client(handle)
        assert [m.id for m in client.models.list().data] == [model_id]
        reply = client.chat.completions.create(
            model=model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=3
        )
        assert reply.usage.completion_tokens <= 3
    runtime.unload_model(first)
    assert runtime.server_status(second)["server"]["status"] == "running"
    assert runtime.handles() == [second]


def test_concurrent_lifecycle_calls_are_safe(runtime: LibMlxRuntime, make_model) -> None:
    handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3"))))
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(5):
                runtime.start_server(handle, MlxServerConfig(port=0))
                runtime.server_status(handle)
                runtime.stop_server(handle)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    assert runtime.server_status(handle)["server"]["status"] == "stopped"


def test_unload_gives_memory_back(make_model) -> None:
    import mlx.core as mx

    from lib_mlx.core.memory import release_memory

    model_dir = make_model("llama", hidden_size=1024, num_layers=6)
    size = sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))
    assert size >= 50 * 1024 * 1024
    rt = LibMlxRuntime()
    release_memory()
    before = mx.get_active_memory()
    handle = rt.load_model(MlxModelConfig(str(model_dir)))
    loaded = mx.get_active_memory()
    assert loaded - before >= 0.9 * size
    info = rt.start_server(handle, MlxServerConfig(port=0))
    rt.openai_client(handle).chat.completions.create(
        model=info.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    status = rt.server_status(handle)
    assert status["memory"]["active_bytes"] >= 0.9 * size
    rt.unload_model(handle)
    after = mx.get_active_memory()
    assert abs(after - before) <= 0.05 * max(before, 1) + 1024 * 1024, (before, loaded, after)
