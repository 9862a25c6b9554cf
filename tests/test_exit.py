"""Issue 20.1: a host that exits while a generation streams, without stopping or unloading,
exits cleanly (no SIGABRT/SIGSEGV in MLX's teardown).

Python hosts rely on the runtime's ``atexit`` hook, C hosts on the library's exit hook; both
stop every server and engine and join their threads before MLX goes away. Each run is a fresh
process (about 3 s); CI runs ``LIB_MLX_EXIT_RUNS`` (default 3) of each kind, the issue's 50x
check is the same test with ``LIB_MLX_EXIT_RUNS=50``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lib_mlx import abi_build

SRC = Path(__file__).resolve().parents[1] / "src"
C_DIR = Path(__file__).parent / "c"
CC = os.environ.get("CC", "cc")
RUNS = int(os.environ.get("LIB_MLX_EXIT_RUNS", "3"))
PARALLEL = 2

PYTHON_HOST = r"""
import json, socket, sys
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig

rt = LibMlxRuntime()
handle = rt.load_model(MlxModelConfig(sys.argv[1]))
info = rt.start_server(handle, MlxServerConfig())
body = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000,
                   "ignore_eos": True, "stream": True}).encode()
sock = socket.create_connection(("127.0.0.1", info.port))
sock.sendall(
    f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{info.port}\r\n"
    f"Authorization: Bearer {info.api_key}\r\nContent-Type: application/json\r\n"
    f"Content-Length: {len(body)}\r\n\r\n".encode() + body
)
got = b""
while got.count(b"data:") < 3:
    chunk = sock.recv(65536)
    assert chunk, "the stream ended early"
    got += chunk
print("streaming", flush=True)
sys.exit(0)  # no stop_server, no unload_model
"""


@pytest.fixture(scope="module")
def model_dir(make_model) -> Path:
    return make_model("qwen3")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    return env


def _run_many(cmd: list[str]) -> list[subprocess.CompletedProcess[str]]:
    def one(_: int) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=_env())

    with ThreadPoolExecutor(PARALLEL) as pool:
        return list(pool.map(one, range(RUNS)))


def _describe(proc: subprocess.CompletedProcess[str]) -> str:
    code = proc.returncode
    name = signal.Signals(-code).name if code < 0 else f"exit {code}"
    return f"{name}: {proc.stdout[-300:]!r} {proc.stderr[-600:]!r}"


def test_python_host_exits_mid_stream_without_crashing(model_dir: Path, tmp_path: Path) -> None:
    script = tmp_path / "exit_host.py"
    script.write_text(PYTHON_HOST)
    runs = _run_many([sys.executable, str(script), str(model_dir)])
    failed = [_describe(p) for p in runs if p.returncode != 0 or "streaming" not in p.stdout]
    assert not failed, f"{len(failed)} of {RUNS} Python hosts crashed or failed:\n" + "\n".join(failed)


@pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})")
def test_c_host_exits_mid_stream_without_crashing(model_dir: Path, tmp_path: Path) -> None:
    assert abi_build.main(["--out", str(tmp_path)]) == 0
    exe = tmp_path / "exit_host"
    cmd = [CC, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{tmp_path}", str(C_DIR / "exit_host.c")]
    cmd += ["-o", str(exe), f"-L{tmp_path}", "-llib_mlx", f"-Wl,-rpath,{tmp_path}"]
    if sys.platform.startswith("linux"):
        cmd.append("-ldl")
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert build.returncode == 0, build.stderr
    runs = _run_many([str(exe), str(model_dir)])
    failed = [_describe(p) for p in runs if p.returncode != 0 or "streaming" not in p.stdout]
    assert not failed, f"{len(failed)} of {RUNS} C hosts crashed or failed:\n" + "\n".join(failed)
    # The library's hook ran before the host's own atexit handler (registered earlier): the
    # listener was already closed, i.e. the server and engine were stopped before MLX's teardown.
    assert all("after_exit listener_closed" in p.stdout for p in runs), [p.stdout for p in runs]
