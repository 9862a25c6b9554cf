"""Hub ids through the real ``huggingface_hub`` client against a local stand-in of the hub's
HTTP API (issue 19): byte progress, resume after an interrupted or cancelled download, the cache
first (no request at all), fast failure offline, and the memory guard before a download."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from hub_standin import REPO, WEIGHTS, HubStandIn, hub  # noqa: F401 - the fixture
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig, abi
from lib_mlx.errors import InsufficientMemoryError, ModelNotFoundError



def poll(runtime: LibMlxRuntime, handle: int, until: set[str], timeout: float = 60) -> list[dict]:
    """``server_status`` every few ms until the model's status is in ``until``; every model
    object seen."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = runtime.server_status(handle)["model"]
        seen.append(model)
        if model["status"] in until:
            return seen
        time.sleep(0.005)
    raise AssertionError(f"still {seen[-1]} after {timeout}s")


def assert_monotonic(progress: list[dict]) -> None:
    phases = ["resolve", "download", "load", "warmup"]
    for a, b in zip(progress, progress[1:]):
        assert phases.index(b["phase"]) >= phases.index(a["phase"]), (a, b)
        for key in ("bytes_done", "bytes_total", "files_done", "files_total"):
            assert b[key] >= a[key], (key, a, b)
        assert b["bytes_done"] <= b["bytes_total"] and b["files_done"] <= b["files_total"], b


def blob_sha(hub: HubStandIn, name: str) -> str:
    return hashlib.sha256(hub.repos[REPO].files[name]).hexdigest()


def test_download_with_byte_progress_then_the_cache_with_no_request(hub: HubStandIn, runtime: LibMlxRuntime) -> None:
    hub.throttle_s = 0.01
    files = hub.repos[REPO].files
    total = sum(len(d) for d in files.values())
    handle = runtime.load_model(MlxModelConfig(model_id=REPO, wait=False))
    seen = poll(runtime, handle, {"ready", "failed"})
    assert seen[-1]["status"] == "ready", seen[-1]
    progress = [m["progress"] for m in seen]
    assert_monotonic(progress)
    downloading = [p for p in progress if p["phase"] == "download"]
    assert len({p["bytes_done"] for p in downloading}) >= 5  # the bar moved through the download
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] == total
    assert progress[-1]["files_done"] == progress[-1]["files_total"] == len(files)
    assert seen[-1]["model_id"] == REPO and "snapshots" in seen[-1]["model_path"]
    assert hub.gets(WEIGHTS) == [None]  # once, whole

    info = runtime.start_server(handle, MlxServerConfig(port=0))
    reply = runtime.openai_client(handle).chat.completions.create(
        model=info.model_id, messages=[{"role": "user", "content": "hi"}], max_tokens=2
    )
    assert reply.usage.completion_tokens <= 2
    runtime.unload_model(handle)

    before = len(hub.requests)
    again = runtime.load_model(MlxModelConfig(model_id=REPO))
    assert runtime.server_status(again)["model"]["status"] == "ready"
    assert hub.requests[before:] == []  # the cache alone: not one HTTP request


def test_an_interrupted_download_resumes_with_a_range_request(hub: HubStandIn, runtime: LibMlxRuntime) -> None:
    size = len(hub.repos[REPO].files[WEIGHTS])
    hub.cut_after[WEIGHTS] = 4 * 65536  # the connection drops after four 64 KiB chunks
    handle = runtime.load_model(MlxModelConfig(model_id=REPO))
    status = runtime.server_status(handle)["model"]
    assert status["status"] == "ready"
    assert hub.gets(WEIGHTS) == [None, "bytes=262144-"]  # the client went on where it stopped
    assert status["progress"]["bytes_done"] == status["progress"]["bytes_total"]
    blob = Path(status["model_path"], WEIGHTS).resolve()
    assert blob.stat().st_size == size and hashlib.sha256(blob.read_bytes()).hexdigest() == blob_sha(hub, WEIGHTS)


def test_unload_cancels_a_download_and_the_next_load_resumes_it(hub: HubStandIn, runtime: LibMlxRuntime) -> None:
    from huggingface_hub import constants

    size = len(hub.repos[REPO].files[WEIGHTS])
    hub.throttle_s = 0.05
    handle = runtime.load_model(MlxModelConfig(model_id=REPO, wait=False))
    deadline = time.monotonic() + 30
    while runtime.server_status(handle)["model"]["progress"]["bytes_done"] < 250_000:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    started = time.monotonic()
    runtime.unload_model(handle)
    assert time.monotonic() - started < 2.0  # stopped at the next chunk, not at the end
    partials = list(Path(constants.HF_HUB_CACHE).rglob("*.incomplete"))
    assert len(partials) == 1 and 0 < partials[0].stat().st_size < size, partials
    kept = partials[0].stat().st_size

    hub.throttle_s = 0.0
    again = runtime.load_model(MlxModelConfig(model_id=REPO))
    status = runtime.server_status(again)["model"]
    assert status["status"] == "ready"
    assert hub.gets(WEIGHTS) == [None, f"bytes={kept}-"]
    blob = Path(status["model_path"], WEIGHTS).resolve()
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob_sha(hub, WEIGHTS)
    assert not list(Path(constants.HF_HUB_CACHE).rglob("*.incomplete"))


def test_unknown_repo_and_revision_are_model_not_found(hub: HubStandIn, runtime: LibMlxRuntime) -> None:
    with pytest.raises(ModelNotFoundError, match="nobody/nothing"):
        runtime.load_model(MlxModelConfig(model_id="nobody/nothing"))
    with pytest.raises(ModelNotFoundError, match="no revision 'v9'") as info:
        runtime.load_model(MlxModelConfig(model_id=REPO, revision="v9"))
    assert info.value.param == "revision"


@pytest.mark.parametrize("how", ["HF_HUB_OFFLINE", "hub unreachable"])
def test_offline_without_a_cache_fails_fast_with_model_not_found(
    hub: HubStandIn, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    from huggingface_hub import constants

    if how == "HF_HUB_OFFLINE":
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    else:
        hub.stop()  # nothing listens there any more
    started = time.monotonic()
    reply = json.loads(abi.load_model(json.dumps({"model_id": REPO})))
    elapsed = time.monotonic() - started
    assert reply["ok"] is False and reply["error"]["code"] == "model_not_found", reply
    assert REPO in reply["error"]["message"] and "not in the local Hugging Face cache" in reply["error"]["message"]
    assert elapsed < 5.0, elapsed


def test_a_model_declared_too_big_is_refused_before_its_download(hub: HubStandIn, runtime: LibMlxRuntime) -> None:
    hub.declared_sizes[WEIGHTS] = 10**13  # 10 TB of weights, as the listing says
    with pytest.raises(InsufficientMemoryError) as info:
        runtime.load_model(MlxModelConfig(model_id=REPO))
    message = info.value.message
    assert info.value.code == "insufficient_memory"
    assert "10000.00 GB of weights" in message and "is available" in message, message
    assert ("GET", f"/api/models/{REPO}", None) in hub.requests  # the listing, and then
    assert not [path for _, path, _ in hub.requests if "/resolve/" in path]  # not one file


def test_cli_serve_shows_a_download_progress_bar(hub: HubStandIn, tmp_path: Path) -> None:
    """``lib-mlx serve --model ORG/NAME`` with ``HF_ENDPOINT`` set, as a user runs it."""
    from huggingface_hub import constants

    env = {
        **os.environ,
        "HF_ENDPOINT": constants.ENDPOINT,
        "HF_HUB_CACHE": str(tmp_path / "cli-cache"),
        "HF_HUB_OFFLINE": "0",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1] / "src"), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "lib_mlx", "serve", "--model", REPO, "--port", "0", "--no-auth"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = ""
        deadline = time.monotonic() + 90
        while "Serving" not in line:
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else "timeout"
            line = proc.stdout.readline()
        base_url = line.split(" at ")[1].strip().removesuffix("/v1")
        assert httpx.get(f"{base_url}/health").json()["model_status"] == "ready"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert "Downloading" in err and "100%" in err, err[-2000:]
    assert hub.gets(WEIGHTS) == [None]
