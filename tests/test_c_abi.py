"""The C ABI (src/lib_mlx.h, issue 5) driven from C hosts compiled during the run.

The library is built once with the documented builder, the hosts in ``tests/c`` with the
system compiler: ``host_e2e`` dlopen()s it like an FFI host and serves a tiny model to the real
``openai`` client; ``abi_checks`` links against it for the bad-input list, four concurrent
threads and a 10,000-call leak check. Every reply comes back to Python as one JSON line.
"""

from __future__ import annotations

import ctypes
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from lib_mlx import abi_build

C_DIR = Path(__file__).parent / "c"
SRC = Path(__file__).resolve().parents[1] / "src"
CC = os.environ.get("CC", "cc")
HOST_TIMEOUT = 90

pytestmark = pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})")

CHAIN = ["The", " lib", "_mlx", " C", " host", " works", "."]


# --- building -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def abi_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``lib-mlx abi build --out DIR``, through the command's own entry point."""
    out = tmp_path_factory.mktemp("abi")
    assert abi_build.main(["--out", str(out)]) == 0
    assert (out / abi_build.library_filename()).is_file()
    assert (out / "lib_mlx.h").read_text() == abi_build.header_path().read_text()
    return out


def compile_host(abi_dir: Path, name: str, *, link: bool) -> Path:
    exe = abi_dir / name
    cmd = [CC, "-std=c11", "-Wall", "-Wextra", "-Werror", "-pthread", f"-I{abi_dir}", str(C_DIR / f"{name}.c")]
    cmd += ["-o", str(exe)]
    if link:
        cmd += [f"-L{abi_dir}", "-llib_mlx", f"-Wl,-rpath,{abi_dir}"]
    if sys.platform.startswith("linux"):
        cmd.append("-ldl")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stderr}"
    return exe


@pytest.fixture(scope="module")
def abi_checks(abi_dir: Path) -> Path:
    return compile_host(abi_dir, "abi_checks", link=True)


@pytest.fixture(scope="module")
def model_dir(make_model) -> Path:
    from lib_mlx.tiny_models import TRIGGERS

    # greedy decoding after the (default, thinking-on) generation prompt emits CHAIN
    return make_model("qwen3", chains={TRIGGERS["qwen3"]["thinking"]: CHAIN})


def run_checks(exe: Path, mode: str, model_dir: Path) -> list[tuple[str, Any]]:
    """Runs ``abi_checks MODE MODEL_DIR``; returns its ``(label, reply)`` lines in order (the
    strict UTF-8 decoding of its output checks that every reply is valid UTF-8)."""
    proc = subprocess.run([str(exe), mode, str(model_dir)], capture_output=True, text=True, timeout=HOST_TIMEOUT)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lines = []
    for line in proc.stdout.splitlines():
        label, _, reply = line.partition(" ")
        lines.append((label, json.loads(reply)))
    return lines


def assert_error(reply: Any, code: str) -> None:
    assert isinstance(reply, dict) and set(reply) == {"ok", "error"}, reply
    assert reply["ok"] is False and set(reply["error"]) == {"code", "message"}, reply
    assert reply["error"]["code"] == code, reply
    assert isinstance(reply["error"]["message"], str) and reply["error"]["message"], reply


def assert_ok(reply: Any, **expected: Any) -> None:
    assert isinstance(reply, dict) and reply.get("ok") is True, reply
    for key, value in expected.items():
        assert reply.get(key) == value, (key, reply)


# --- the header and the exports ---------------------------------------------------------------


def header_functions(text: str) -> list[str]:
    return re.findall(r"^[a-z][\w ]*?\*?\s*(lib_mlx_\w+)\(", text, flags=re.MULTILINE)


def test_header_declares_the_design_notes_functions() -> None:
    text = (SRC / "lib_mlx.h").read_text()
    assert header_functions(text) == [
        "lib_mlx_load_model",
        "lib_mlx_start_server",
        "lib_mlx_stop_server",
        "lib_mlx_server_status",
        "lib_mlx_unload_model",
        "lib_mlx_free",
    ]
    # the packaged copy (what `lib-mlx abi build` ships from an installed wheel) is the same file
    assert (SRC / "lib_mlx" / "lib_mlx.h").read_text() == text


def test_header_compiles_as_c_and_cpp(abi_dir: Path, tmp_path: Path) -> None:
    probe = tmp_path / "probe.c"
    probe.write_text('#include "lib_mlx.h"\nint main(void) { lib_mlx_free((void *)0); return 0; }\n')
    compilers = [(CC, "c")] + ([("c++", "c++")] if shutil.which("c++") else [])
    for compiler, lang in compilers:
        cmd = [compiler, "-x", lang, "-Wall", "-Wextra", "-Werror", f"-I{abi_dir}", "-fsyntax-only", str(probe)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr


def test_build_without_a_compiler_says_what_it_needs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    assert abi_build.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "failed" in err and "C compiler" in err and "libpython" in err


def test_library_exports_the_header(abi_dir: Path) -> None:
    lib = ctypes.CDLL(str(abi_dir / abi_build.library_filename()))  # loading starts nothing
    for name in header_functions((abi_dir / "lib_mlx.h").read_text()):
        assert hasattr(lib, name), name
    lib.lib_mlx_free(None)  # pure C: no interpreter needed


def test_python_host_uses_its_own_interpreter(abi_dir: Path) -> None:
    """A process that already runs Python (ctypes) gets replies from that interpreter."""
    script = f"""
import ctypes, json, sys
lib = ctypes.CDLL({str(abi_dir / abi_build.library_filename())!r})
lib.lib_mlx_server_status.restype = ctypes.c_void_p
lib.lib_mlx_server_status.argtypes = [ctypes.c_int64]
ptr = lib.lib_mlx_server_status(7)
print(json.dumps(json.loads(ctypes.string_at(ptr).decode())))
lib.lib_mlx_free(ctypes.c_void_p(ptr))
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=HOST_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    assert_error(json.loads(proc.stdout), "unknown_handle")


# --- the end-to-end host ----------------------------------------------------------------------


class Lines:
    """Reads a pipe on a thread, so that every wait has a deadline; keeps what it read."""

    def __init__(self, pipe, deadline: float) -> None:
        self.seen: list[str] = []
        self._deadline = deadline
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe) -> None:
        for line in pipe:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def next(self) -> str | None:
        try:
            line = self._queue.get(timeout=max(0.0, self._deadline - time.monotonic()))
        except queue.Empty:
            raise AssertionError("the host printed nothing more before the deadline") from None
        if line is not None:
            self.seen.append(line)
        return line

    def value(self, prefix: str) -> str:
        while (line := self.next()) is not None:
            if line.startswith(prefix):
                return line[len(prefix) :]
        raise AssertionError(f"the host ended before printing {prefix!r}")

    def rest(self) -> list[str]:
        lines = []
        while (line := self.next()) is not None:
            lines.append(line)
        return lines


def test_c_host_serves_a_streamed_chat_completion(abi_dir: Path, model_dir: Path, tmp_path: Path) -> None:
    import openai

    host = compile_host(abi_dir, "host_e2e", link=False)
    stderr_path = tmp_path / "host.stderr"
    deadline = time.monotonic() + HOST_TIMEOUT
    with stderr_path.open("w") as stderr:
        proc = subprocess.Popen(
            [str(host), str(abi_dir / abi_build.library_filename()), str(model_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
        lines = Lines(proc.stdout, deadline)
        try:
            base_url = lines.value("base_url=")
            api_key = lines.value("api_key=")
            assert re.fullmatch(r"http://127\.0\.0\.1:\d+", base_url), base_url

            client = openai.OpenAI(
                base_url=f"{base_url}/v1",
                api_key=api_key or "none",
                max_retries=0,
                timeout=30,
                _strict_response_validation=True,
            )
            assert [m.id for m in client.models.list().data] == ["tiny-qwen3"]
            stream = client.chat.completions.create(
                model="tiny-qwen3",
                messages=[{"role": "user", "content": "Say something."}],
                stream=True,
                max_tokens=32,
                temperature=0.0,
                stream_options={"include_usage": True},
            )
            chunks = list(stream)

            proc.stdin.write("stop\n")
            proc.stdin.flush()
            rest = lines.rest()
            proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except Exception as exc:
            proc.kill()
            proc.wait()
            stderr.flush()
            out, err = "\n".join(lines.seen), stderr_path.read_text()[-6000:]
            pytest.fail(f"{type(exc).__name__}: {exc}\n--- host stdout\n{out}\n--- host stderr\n{err}")
    assert proc.returncode == 0, "\n".join(lines.seen) + "\n" + stderr_path.read_text()[-6000:]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert text == "".join(CHAIN)
    assert finish == ["stop"]
    assert usage is not None and usage.completion_tokens == len(CHAIN)

    assert rest[-1] == "done", rest
    replies = {label: json.loads(body) for label, body in (line.split(" ", 2)[1:] for line in rest[:-1])}
    assert_ok(replies["stop_server"], status="stopped", was_running=True)
    assert replies["server_status"]["server"]["status"] == "stopped"
    assert_ok(replies["unload_model"], status="unloaded")
    assert_error(replies["server_status_after_unload"], "unknown_handle")


# --- bad input -----------------------------------------------------------------------------------

# label in abi_checks.c -> an error code (ok:false), a dict (ok:true with these items) or None
# (no reply: the call returns nothing).
BAD_INPUT: list[tuple[str, str | dict[str, Any] | None]] = [
    ("load_null", "invalid_config"),
    ("load_empty", "invalid_config"),
    ("load_bad_utf8", "invalid_json"),
    ("load_truncated_utf8", "invalid_json"),
    ("load_not_json", "invalid_json"),
    ("load_array", "invalid_config"),
    ("load_string", "invalid_config"),
    ("load_empty_object", "invalid_config"),
    ("load_path_wrong_type", "invalid_config"),
    ("load_flag_wrong_type", "invalid_config"),
    ("load_missing_dir", "model_not_found"),
    ("load_lone_surrogate", "invalid_json"),  # named by field; the reply is still valid UTF-8
    ("load_model", {"status": "ready"}),
    ("start_bad_utf8", "invalid_json"),
    ("start_not_json", "invalid_json"),
    ("start_array", "invalid_config"),
    ("start_port_wrong_type", "invalid_config"),
    ("start_port_out_of_range", "invalid_config"),
    ("start_queue_limit_zero", "invalid_config"),
    ("start_port_in_use", "port_in_use"),
    ("start_unknown_handle", "unknown_handle"),
    ("start_negative_handle", "unknown_handle"),
    ("stop_unknown_handle", "unknown_handle"),
    ("status_unknown_handle", "unknown_handle"),
    ("unload_unknown_handle", "unknown_handle"),
    ("stop_never_started", {"status": "stopped", "was_running": False}),
    ("start_null_config", {}),  # NULL config = defaults
    ("start_again", {}),  # already running: the same server
    ("stop_running", {"status": "stopped", "was_running": True}),
    ("stop_stopped", {"status": "stopped", "was_running": False}),
    ("unload", {"status": "unloaded"}),
    ("status_unloaded", "unknown_handle"),
    ("start_unloaded", "unknown_handle"),
    ("stop_unloaded", "unknown_handle"),
    ("unload_unloaded", "unknown_handle"),
    ("free_null", None),
]


@pytest.fixture(scope="module")
def bad_input_replies(abi_checks: Path, model_dir: Path) -> dict[str, Any]:
    lines = run_checks(abi_checks, "bad_input", model_dir)
    assert [label for label, _ in lines] == [label for label, _ in BAD_INPUT]
    return dict(lines)


@pytest.mark.parametrize(("label", "expected"), BAD_INPUT, ids=[label for label, _ in BAD_INPUT])
def test_bad_input_from_c(bad_input_replies: dict[str, Any], label: str, expected: Any) -> None:
    reply = bad_input_replies[label]
    if expected is None:
        assert reply is None
    elif isinstance(expected, str):
        assert_error(reply, expected)
    else:
        assert_ok(reply, **expected)


def test_null_start_config_means_defaults(bad_input_replies: dict[str, Any]) -> None:
    server = bad_input_replies["start_null_config"]["server"]
    assert server["host"] == "127.0.0.1" and server["port"] > 0 and server["status"] == "running"
    assert bad_input_replies["start_again"]["server"] == server


# --- threads and memory ------------------------------------------------------------------------


def test_four_threads_on_two_handles(abi_checks: Path, model_dir: Path) -> None:
    lines = run_checks(abi_checks, "threads", model_dir)
    first = [reply for label, reply in lines if label.startswith("first.")]
    assert len(first) == 4  # the process's first calls, racing: the interpreter starts once
    for reply in first:
        assert_error(reply, "unknown_handle")
    handles = [reply["handle"] for label, reply in lines if label == "load_model"]
    assert len(handles) == 2 and handles[0] != handles[1]
    calls = [(label, reply) for label, reply in lines if label.startswith("t")]
    assert len(calls) == 4 * 12
    for label, reply in calls:
        _, op, which = label.split(".")
        assert_ok(reply, handle=handles[int(which[1:])])
        if op == "status":
            assert reply["server"]["status"] in {"running", "stopped"}, reply
        elif op == "start":
            assert reply["server"]["status"] == "running" and reply["server"]["port"] > 0, reply
        else:
            assert reply["status"] == "stopped" and isinstance(reply["was_running"], bool), reply
    assert {label for label, _ in calls if ".start." in label}  # the mix really started servers
    unloads = [reply for label, reply in lines if label.startswith("unload_")]
    assert len(unloads) == 2
    for reply in unloads:
        assert_ok(reply, status="unloaded")


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads /proc/self/statm")
def test_status_loop_does_not_leak(abi_checks: Path, model_dir: Path) -> None:
    lines = dict(run_checks(abi_checks, "rss", model_dir))
    rss = lines["rss"]
    assert rss["failures"] == 0
    growth = rss["after"] - rss["before"]
    assert growth < 4 * 1024 * 1024, f"RSS grew by {growth / 1e6:.1f} MB over 10,000 calls"
    assert_ok(lines["unload"], status="unloaded")


# --- loading in the background ----------------------------------------------------------------


def test_c_host_loads_in_the_background_and_polls_to_ready(abi_checks: Path, make_model) -> None:
    """Issue 19: ``"wait": false`` returns at once with ``"status": "loading"``; polling
    ``lib_mlx_server_status`` shows the progress, monotonic, until ``ready``."""
    big = make_model("llama", hidden_size=1024, num_layers=6)  # ~60 MB: a load worth polling
    lines = run_checks(abi_checks, "background", big)
    labels = [label for label, _ in lines]
    assert labels[0] == "load_model" and labels[-2:] == ["start_server", "unload"], labels
    assert_ok(lines[0][1], status="loading")
    polls = [reply for label, reply in lines if label == "status"]
    assert len(polls) >= 2 and polls[0]["model"]["status"] == "loading", polls[:2]
    assert polls[-1]["model"]["status"] == "ready", polls[-1]
    phases = ["resolve", "download", "load", "warmup"]
    progress = [reply["model"]["progress"] for reply in polls]
    for a, b in zip(progress, progress[1:]):
        assert phases.index(b["phase"]) >= phases.index(a["phase"]) and b["bytes_done"] >= a["bytes_done"], (a, b)
    assert progress[-1]["bytes_done"] == progress[-1]["bytes_total"] > 50_000_000
    assert lines[-2][1]["server"]["status"] == "running"
    assert_ok(lines[-1][1], status="unloaded")
