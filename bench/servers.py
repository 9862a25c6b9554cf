"""The servers under test, each a process of its own, started on a free port."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    base_url: str
    model: str  # the "model" field requests carry
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


def _wait_ready(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; log:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server not ready after {timeout:.0f}s; log:\n{log.read_text()[-3000:]}")


def spawn(name: str, argv: list[str], env: dict[str, str], work: Path, ready_path: str, port: int, model: str) -> Server:
    log = work / f"{name}.log"
    handle = log.open("wb")
    process = subprocess.Popen(argv, stdout=handle, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    server = Server(name, base, model, process, log)
    try:
        _wait_ready(base + ready_path, process, log)
    except BaseException:
        server.stop()
        raise
    return server


def start_ours(model_dir: Path, work: Path, *, queue_limit: int = 1, prompt_cache: bool = True, name: str = "ours") -> Server:
    """``lib-mlx serve`` (the product's own command line) on the model directory."""
    port = free_port()
    env = dict(os.environ)
    if not prompt_cache:
        env["LIB_MLX_PROMPT_CACHE_BYTES"] = "0"
    argv = [sys.executable, "-m", "lib_mlx", "serve", "--model", str(model_dir), "--port", str(port),
            "--queue-limit", str(queue_limit), "--no-auth", "--no-page"]  # fmt: skip
    return spawn(name, argv, env, work, "/health", port, model_dir.name)


def start_mlx_lm(model_dir: Path, work: Path, *, name: str = "mlx_lm") -> Server:
    """``python -m mlx_lm.server`` as shipped, on the same directory."""
    port = free_port()
    hub = work / "hf-cache"
    hub.mkdir(exist_ok=True)
    env = dict(os.environ, HF_HUB_CACHE=str(hub), HF_HUB_OFFLINE="1")
    argv = [sys.executable, "-m", "mlx_lm.server", "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)]
    return spawn(name, argv, env, work, "/v1/models", port, "default_model")


@contextlib.contextmanager
def running(*servers: Server) -> Iterator[tuple[Server, ...]]:
    try:
        yield servers
    finally:
        for server in servers:
            server.stop()
