"""The lib-mlx command: the demo runs offline to the end; serve prints its URL and stops on Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from lib_mlx.tiny_models import DEMO_ANSWER, DEMO_REASONING


def _env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    env["HF_HUB_OFFLINE"] = "1"
    return env


def test_demo_runs_offline_to_the_end(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "lib_mlx", "demo"],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "Server running on http://127.0.0.1:" in out
    assert f"[Thinking] {DEMO_REASONING}" in out
    assert f"[Answer] {DEMO_ANSWER}" in out
    assert "Unloaded handle 1." in out
    assert (tmp_path / "cache" / "lib_mlx").is_dir()  # the built-in model was built in the user cache


def test_serve_prints_url_and_stops_on_ctrl_c(tmp_path: Path, make_model) -> None:
    model_dir = make_model("qwen3")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lib_mlx", "serve", "--model", str(model_dir), "--port", "0"],
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: dict[str, str] = {}
        for line in proc.stdout:
            key, _, value = line.partition(": ")
            lines[key] = value.strip()
            if line.startswith("Press Ctrl-C"):
                break
        base = lines["Chat page"].split("/#token=")[0]
        key = lines["API key"]
        assert lines["Chat page"].endswith(f"#token={key}")
        models = httpx.get(f"{base}/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert models.status_code == 200 and models.json()["data"][0]["id"] == model_dir.name
        assert httpx.get(f"{base}/v1/models").status_code == 401
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


def test_invalid_values_are_one_line_not_a_traceback(tmp_path: Path, make_model) -> None:
    model_dir = make_model("qwen3")
    for args, option in ((["--queue-limit", "0"], "--queue-limit"), (["--port", "70000"], "--port"), (["--api-key", " padded"], "--api-key")):
        done = subprocess.run(
            [sys.executable, "-m", "lib_mlx", "serve", "--model", str(model_dir), *args],
            env=_env(tmp_path), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
        assert lines[0].startswith(f"lib-mlx: error (invalid_config): {option}:"), lines


def test_the_api_key_comes_from_a_file_or_the_environment(tmp_path: Path, make_model, monkeypatch) -> None:
    from lib_mlx.cli import API_KEY_ENV, _api_key, build_parser

    key_file = tmp_path / "key"
    key_file.write_text("from-the-file\n")
    parse = lambda *a: build_parser().parse_args(["serve", "--model", "m", *a])  # noqa: E731
    monkeypatch.setenv(API_KEY_ENV, "from-the-env")
    assert _api_key(parse()) == "from-the-env"
    assert _api_key(parse("--api-key-file", str(key_file))) == "from-the-file"
    assert _api_key(parse("--api-key", "given", "--api-key-file", str(key_file))) == "given"
    monkeypatch.delenv(API_KEY_ENV)
    assert _api_key(parse()) is None
    # End to end: the served token is the file's, and it never appears on the command line.
    proc = subprocess.Popen(
        [sys.executable, "-m", "lib_mlx", "serve", "--model", str(make_model("qwen3")), "--port", "0",
         "--api-key-file", str(key_file), "--no-page"],
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        lines: dict[str, str] = {}
        for line in proc.stdout:
            key, _, value = line.partition(": ")
            lines[key] = value.strip()
            if line.startswith("Press Ctrl-C"):
                break
        assert lines["API key"] == "from-the-file"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
