"""Every example in examples/ runs here, against tiny scripted models, so none can rot."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import page_support as ps

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
TIMEOUT = 180


def run(cmd: list[str], **kwargs) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kwargs)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="module")
def chat_model(make_model) -> Path:
    return make_model("qwen3", chains=ps.CHAT_CHAINS)


def test_every_example_is_tested():
    names = sorted(p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*") if p.is_file() and p.suffix in (".py", ".c", ".sh"))
    assert names == ["c_host/chat_host.c", "curl.sh", "python_lifecycle.py"]


def test_python_lifecycle_example(tmp_path):
    """With no argument it builds and uses the built-in demo model (in a fresh cache here)."""
    from lib_mlx.tiny_models import DEMO_ANSWER, DEMO_REASONING

    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    out = run([sys.executable, str(EXAMPLES / "python_lifecycle.py")], env=env)
    lines = out.splitlines()
    assert lines[0] == "Loaded handle 1"
    assert lines[1].startswith("Server running on http://127.0.0.1:")
    assert "Model status: ready, server status: running" in lines
    assert f"Answer: {DEMO_ANSWER}" in lines
    thinking = [line for line in lines if line.startswith("[Thinking] ")]
    content = [line for line in lines if line.startswith("[Content] ")]
    assert len(thinking) > 1 and len(content) > 1  # streamed in pieces
    assert max(lines.index(t) for t in thinking) < min(lines.index(c) for c in content)
    assert f"Reasoning: {DEMO_REASONING!r}" in lines
    assert f"Content: {DEMO_ANSWER!r}" in lines
    assert lines[-2:] == ["Server status: stopped", "Unloaded handle 1"]


@pytest.mark.skipif(not (shutil.which("cc") and shutil.which("make")), reason="needs a C compiler and make")
def test_c_host_example(chat_model, tmp_path):
    abi_build = pytest.importorskip("lib_mlx.abi_build", reason="the C ABI builder is not in this tree yet")

    abi = tmp_path / "abi"
    assert abi_build.main(["--out", str(abi)]) == 0
    host = tmp_path / "chat_host"
    run(["make", "-s", "-C", str(EXAMPLES / "c_host"), f"ABI_DIR={abi}", f"OUT={host}", "CFLAGS=-std=c11 -Wall -Wextra -Werror -O2"])
    out = run([str(host), str(chat_model), "What is the capital of France?"])
    lines = out.splitlines()
    assert lines[0].startswith('load_model -> {"ok": true, "handle": 1')
    assert lines[1].startswith('start_server -> {"ok": true') and '"api_key": "***' in lines[1]
    assert lines[2].startswith('server_status -> {"ok": true')
    assert [line for line in lines if line.startswith("[Thinking] ")][0] == "[Thinking] The user"
    assert f"reasoning: {ps.REASONING}" in lines
    assert f"content: {ps.ANSWER}" in lines
    assert lines[-2].startswith('stop_server -> {"ok": true, "handle": 1, "status": "stopped"')
    assert lines[-1] == 'unload_model -> {"ok": true, "handle": 1, "status": "unloaded"}'


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_example(serve, chat_model):
    with serve(chat_model) as s:
        env = {**os.environ, "BASE_URL": s.info.base_url, "API_KEY": s.info.api_key}
        out = run(["bash", str(EXAMPLES / "curl.sh")], env=env)
        assert s.status()["in_flight"] == 0
    assert '"status":"ok"' in out
    assert f'"id":"{s.info.model_id}"' in out
    assert f'"content":"{ps.ANSWER}","reasoning_content":"{ps.REASONING}"' in out  # plain JSON
    assert '"delta":{"reasoning_content":"The user"' in out and "data: [DONE]" in out  # streamed
    assert '"object":"response"' in out and ps.ANSWER in out.split("== POST /v1/responses")[1]


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_curl_example_multipart(serve, tmp_path):
    pytest.importorskip("mlx_vlm", reason="multimodal input needs mlx-vlm")
    pytest.importorskip("lib_mlx.server.multipart", reason="multipart uploads are not in this tree yet")
    from lib_mlx.tiny_models.multimodal import build_gemma4_multimodal, png_bytes, tone, wav_bytes

    answer = "A red square and a beep."
    model = build_gemma4_multimodal(tmp_path / "gemma4-mm", answer=answer)
    image, audio = tmp_path / "red.png", tmp_path / "beep.wav"
    image.write_bytes(png_bytes())
    audio.write_bytes(wav_bytes(tone(0.5)))
    with serve(model) as s:
        env = {**os.environ, "BASE_URL": s.info.base_url, "API_KEY": s.info.api_key, "IMAGE": str(image), "AUDIO": str(audio)}
        out = run(["bash", str(EXAMPLES / "curl.sh")], env=env)
    multipart = out.split("== POST /v1/chat/completions (multipart/form-data")[1]
    assert f'"content":"{answer}"' in multipart
