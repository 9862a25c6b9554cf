"""A model sharded over two ranks on loopback (``lib-mlx launch`` -> ``mlx.launch``, ring
backend): rank 0 serves, rank 1 follows it step for step. The greedy answer through the server
equals a single process's, streamed and not, in tensor and pipeline mode; a rank that dies or
stops answering ends open requests with an error in bounded time, never a hang of rank 0."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from lib_mlx.tiny_models import TRIGGERS
from lib_mlx.tiny_models.variants import as_qwen2

ANSWER = ["<think>", "\nHmm", ".\n", "</think>", "\n\n", "Hi", " there", "!"]
MESSAGES = [{"role": "user", "content": "hello"}]


def _free_ports(n: int) -> int:
    """A port p with p .. p+n-1 free (the ring backend listens on consecutive ports)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        try:
            for port in range(base, base + n):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError("no free consecutive ports")


@dataclass
class Launched:
    process: subprocess.Popen[str]
    base_url: str
    log: Path

    def follower_pid(self) -> int:
        match = re.search(r"Rank 1 \(pid (\d+)\)", self.log.read_text())
        assert match, self.log.read_text()
        return int(match.group(1))

    def post(self, body: dict, timeout: float = 60) -> httpx.Response:
        return httpx.post(f"{self.base_url}/v1/chat/completions", json=body, timeout=timeout)

    def status(self) -> dict:
        return httpx.get(f"{self.base_url}/health", timeout=10).json()


@contextmanager
def launched(model: Path, mode: str, tmp_path: Path, *extra: str) -> Iterator[Launched]:
    port, ring = _free_ports(1), _free_ports(2)
    log = tmp_path / f"launch-{mode}.log"
    command = [
        sys.executable, "-m", "lib_mlx", "launch", "-n", "2", "--starting-port", str(ring), "--",
        "serve", "--model", str(model), "--distributed", mode, "--port", str(port), "--no-auth",
        "--queue-limit", "2", *extra,
    ]  # fmt: skip
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with log.open("w") as out:
        # stdin a pipe that never speaks: mlx.launch polls its stdin, and /dev/null would spin it.
        process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base_url}/health", timeout=1).status_code == 200 and "following rank 0" in log.read_text():
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            pytest.fail(f"the distributed server did not come up:\n{log.read_text()}")
        yield Launched(process, base_url, log)
    finally:
        with_group = os.getpgid(process.pid) if process.poll() is None else None
        if with_group is not None:
            os.killpg(with_group, signal.SIGINT)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(with_group, signal.SIGKILL)
                process.wait(10)


@pytest.fixture(scope="module")
def scripted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from lib_mlx.tiny_models import build_model

    root = tmp_path_factory.mktemp("distributed")
    qwen3 = Path(build_model("qwen3", root / "qwen3", chains={TRIGGERS["qwen3"]["thinking"]: ANSWER}))
    return {"tensor": qwen3, "pipeline": as_qwen2(qwen3, root / "qwen2")}


def _single_process_answer(model: Path) -> tuple[str, str]:
    from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig

    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(model)))
        info = runtime.start_server(handle, MlxServerConfig(auth="none"))
        body = httpx.post(
            f"{info.base_url}/v1/chat/completions", json={"messages": MESSAGES, "temperature": 0}, timeout=60
        ).json()
    finally:
        runtime.close()
    message = body["choices"][0]["message"]
    return message["content"], message["reasoning_content"]


def _streamed(launched_server: Launched, body: dict) -> tuple[str, str, str | None]:
    content, reasoning, finish = "", "", None
    with httpx.stream("POST", f"{launched_server.base_url}/v1/chat/completions", json={**body, "stream": True}, timeout=60) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            for choice in chunk.get("choices", []):
                delta = choice["delta"]
                content += delta.get("content") or ""
                reasoning += delta.get("reasoning_content") or ""
                finish = choice.get("finish_reason") or finish
    return content, reasoning, finish


@pytest.mark.parametrize("mode", ["tensor", "pipeline"])
def test_sharded_server_answers_like_one_process(mode: str, scripted: dict[str, Path], tmp_path: Path) -> None:
    model = scripted[mode]
    expected = _single_process_answer(model)
    assert expected == ("Hi there!", "Hmm.")
    with launched(model, mode, tmp_path) as server:
        body = server.post({"messages": MESSAGES, "temperature": 0}).json()
        message = body["choices"][0]["message"]
        assert (message["content"], message["reasoning_content"]) == expected
        # Streamed, with a sampled request (seeded by rank 0 for every rank) in between, and a
        # second identical request that reuses the prompt cache on both ranks.
        sampled = server.post({"messages": MESSAGES, "temperature": 0.8, "max_tokens": 6})
        assert sampled.status_code == 200
        assert _streamed(server, {"messages": MESSAGES, "temperature": 0}) == (*expected, "stop")
        again = server.post({"messages": MESSAGES, "temperature": 0}).json()
        assert again["choices"][0]["message"]["content"] == expected[0]
        assert again["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
        # A budget that ends the answer early: rank 0 alone decides, rank 1 follows.
        short = server.post({"messages": MESSAGES, "temperature": 0, "max_tokens": 3}).json()
        assert short["choices"][0]["finish_reason"] == "length"
        assert server.post({"messages": MESSAGES, "temperature": 0}).json()["choices"][0]["message"]["content"] == expected[0]


def test_a_killed_rank_ends_the_open_stream_in_bounded_time(scripted: dict[str, Path], tmp_path: Path) -> None:
    """A killed rank ends rank 0's open stream with an error, never a hang: rank 0's next
    collective fails, or -- where the ring backend leaves it waiting -- the watchdog fails it
    ("rank_failed" error frame); or mlx.launch, which stops every rank when one exits, stops
    rank 0 first (a "cancelled" frame, or the connection closes)."""
    with launched(scripted["tensor"], "tensor", tmp_path, "--distributed-timeout", "5") as server:
        body = {"messages": MESSAGES, "temperature": 0, "max_tokens": 2000, "ignore_eos": True, "stream": True}
        errors: list[str] = []
        killed_at = None
        try:
            with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=30) as reply:
                assert reply.status_code == 200
                for line in reply.iter_lines():
                    if killed_at is None and line.startswith("data: {"):
                        os.kill(server.follower_pid(), signal.SIGKILL)
                        killed_at = time.monotonic()
                    if line.startswith("data: {") and '"error"' in line:
                        errors.append(json.loads(line[6:])["error"]["code"])
        except httpx.RemoteProtocolError:
            errors.append("connection closed")
        assert killed_at is not None and time.monotonic() - killed_at < 20
        assert errors and errors[-1] in ("rank_failed", "cancelled", "connection closed"), errors


def test_a_stopped_rank_fails_the_open_request_after_the_timeout(scripted: dict[str, Path], tmp_path: Path) -> None:
    with launched(scripted["tensor"], "tensor", tmp_path, "--distributed-timeout", "3") as server:
        assert server.post({"messages": MESSAGES, "temperature": 0}).status_code == 200
        pid = server.follower_pid()
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            reply = server.post({"messages": MESSAGES, "temperature": 0}, timeout=30)
            waited = time.monotonic() - started
            assert reply.status_code == 503, reply.text
            assert reply.json()["error"]["code"] == "rank_failed"
            assert 2.5 < waited < 12
            refused = server.post({"messages": MESSAGES}, timeout=10)
            assert refused.status_code == 503
        finally:
            os.kill(pid, signal.SIGKILL)
