"""Images and audio over the real server: data URLs and multipart/form-data uploads on Chat
Completions and Responses, streamed and not, through the ``openai`` client (raw requests for
multipart), ``httpx`` and ``curl -F``; lazy towers in ``server_status``; bad media -> OpenAI
error bodies. The model is a tiny Gemma 4 with vision and audio towers whose weights script the
answer, so the text is exact and the prompt's media tokens are checked against the usage."""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip("mlx_vlm")

from lib_mlx import MlxModelConfig  # noqa: E402
from lib_mlx.tiny_models import multimodal as mm  # noqa: E402

ANSWER, REASONING = "It is red.", "I see a square"
PNG = mm.png_bytes(64, 48)  # -> 12 soft tokens
WAV = mm.wav_bytes(mm.tone(1.0, 22050), 22050)  # -> 25 soft tokens
IMAGE_TOKENS, AUDIO_TOKENS = 12, 25


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mm.build_gemma4_multimodal(tmp_path_factory.mktemp("mm") / "gemma4-mm", answer=ANSWER, reasoning=REASONING)


@pytest.fixture
def served(serve, model_dir: Path):
    with serve(model_dir, queue_limit=2, max_media_part_bytes=64 * 1024) as s:
        yield s


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def user(*parts: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "text", "text": "What is in here?"}, *parts]}]


IMAGE_PART = {"type": "image_url", "image_url": {"url": data_url(PNG, "image/png")}}
AUDIO_PART = {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "wav"}}
IMAGE_REF = {"type": "image_url", "image_url": {"url": "attachment:photo"}}
AUDIO_REF = {"type": "input_audio", "input_audio": {"data": "attachment:clip"}}
FILES = [("photo", ("photo.png", PNG, "image/png")), ("clip", ("clip.wav", WAV, "audio/wav"))]


def text_prompt_tokens(model_dir: Path, messages: list[dict[str, Any]], thinking: bool = True) -> int:
    """Tokens of the rendered prompt with one placeholder per medium (before expansion)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    kinds = {"image_url": "image", "input_image": "image", "input_audio": "audio"}
    plain = [
        {**m, "content": [p if p["type"] == "text" else {"type": kinds[p["type"]]} for p in m["content"]]}
        for m in messages
    ]
    text = tokenizer.apply_chat_template(plain, add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
    return len(tokenizer.encode(text, add_special_tokens=False))


def expanded(model_dir: Path, messages: list[dict[str, Any]], images: int = 0, audios: int = 0) -> int:
    """Each placeholder becomes begin + N soft tokens + end."""
    return text_prompt_tokens(model_dir, messages) + images * (IMAGE_TOKENS + 1) + audios * (AUDIO_TOKENS + 1)


def raw_post(client, path: str, payload: dict[str, Any], files, *, cast_to, stream_cls=None):
    """The openai client's raw request: a multipart body with the JSON in the ``request`` part."""
    return client.post(
        path,
        cast_to=cast_to,
        body={"request": json.dumps(payload)},
        files=files,
        options={"headers": {"Content-Type": "multipart/form-data"}},
        stream=stream_cls is not None,
        stream_cls=stream_cls,
    )


def towers(served) -> dict[str, bool]:
    return {k: t["resident"] for k, t in served.status()["multimodal"]["towers"].items()}


# --- Chat Completions ------------------------------------------------------------------------


def test_chat_image_by_data_url(served, model_dir: Path) -> None:
    messages = user(IMAGE_PART)
    done = served.client().chat.completions.create(model=served.info.model_id, messages=messages)
    message = done.choices[0].message
    assert message.content == ANSWER and message.model_extra["reasoning_content"] == REASONING
    assert done.choices[0].finish_reason == "stop"
    assert done.usage.prompt_tokens == expanded(model_dir, messages, images=1)


def test_chat_image_and_audio_by_multipart_streamed(served, model_dir: Path) -> None:
    from openai import Stream
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    messages = user(IMAGE_REF, AUDIO_REF)
    payload = {"model": served.info.model_id, "messages": messages, "stream": True, "stream_options": {"include_usage": True}}
    chunks = list(raw_post(served.client(), "/chat/completions", payload, FILES, cast_to=ChatCompletion, stream_cls=Stream[ChatCompletionChunk]))
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
    assert (content, reasoning) == (ANSWER, REASONING)
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    assert chunks[-1].usage.prompt_tokens == expanded(model_dir, messages, images=1, audios=1)


def test_chat_multipart_not_streamed_without_thinking(served) -> None:
    from openai.types.chat import ChatCompletion

    payload = {"model": served.info.model_id, "messages": user(AUDIO_REF), "thinking": False}
    done = raw_post(served.client(), "/chat/completions", payload, FILES, cast_to=ChatCompletion)
    assert done.choices[0].message.content == ANSWER
    assert "reasoning_content" not in (done.choices[0].message.model_extra or {})


def test_curl_form_upload(served, tmp_path: Path) -> None:
    """The README's ``curl -F`` example, as written there."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    (tmp_path / "photo.png").write_bytes(PNG)
    (tmp_path / "clip.wav").write_bytes(WAV)
    request = json.dumps({"messages": user(IMAGE_REF, AUDIO_REF)})
    out = subprocess.run(
        [
            "curl", "-sS", f"{served.info.base_url}/v1/chat/completions",
            *(["-H", f"Authorization: Bearer {served.info.api_key}"] if served.info.api_key else []),
            "-F", f"request={request};type=application/json",
            "-F", f"photo=@{tmp_path / 'photo.png'}",
            "-F", f"clip=@{tmp_path / 'clip.wav'}",
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    assert json.loads(out.stdout)["choices"][0]["message"]["content"] == ANSWER


# --- Responses -------------------------------------------------------------------------------


def test_responses_image_by_data_url(served) -> None:
    response = served.client().responses.create(
        model=served.info.model_id,
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is in here?"},
                    {"type": "input_image", "image_url": data_url(PNG, "image/png"), "detail": "auto"},
                ],
            }
        ],
    )
    assert response.status == "completed" and response.output_text == ANSWER
    assert [item.type for item in response.output] == ["reasoning", "message"]


@pytest.mark.parametrize("stream", [True, False])
def test_responses_image_and_audio_by_multipart(served, model_dir: Path, stream: bool) -> None:
    from openai import Stream
    from openai.types.responses import Response, ResponseStreamEvent

    content = [
        {"type": "input_text", "text": "What is in here?"},
        {"type": "input_image", "image_url": "attachment:photo"},
        {"type": "input_audio", "input_audio": {"data": "attachment:clip", "format": "wav"}},
    ]
    payload = {"model": served.info.model_id, "input": [{"role": "user", "content": content}], "stream": stream}
    client = served.client()
    if stream:
        events = list(raw_post(client, "/responses", payload, FILES, cast_to=Response, stream_cls=Stream[ResponseStreamEvent]))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert deltas == ANSWER
        response = events[-1].response
    else:
        response = raw_post(client, "/responses", payload, FILES, cast_to=Response)
    assert response.output_text == ANSWER
    messages = user(IMAGE_PART, AUDIO_PART)
    assert response.usage.input_tokens == expanded(model_dir, messages, images=1, audios=1)

    # The stored conversation carries its media inline: continuing it needs no re-upload.
    follow = client.responses.create(model=served.info.model_id, previous_response_id=response.id, input="And now?")
    assert follow.output_text == ANSWER


# --- lazy towers -----------------------------------------------------------------------------


def test_towers_load_on_the_first_media_request(served) -> None:
    assert towers(served) == {"vision": False, "audio": False}
    client = served.client()
    client.chat.completions.create(model=served.info.model_id, messages=[{"role": "user", "content": "Hi"}])
    assert towers(served) == {"vision": False, "audio": False}  # text alone loads nothing
    client.chat.completions.create(model=served.info.model_id, messages=user(IMAGE_PART))
    assert towers(served) == {"vision": True, "audio": False}
    client.chat.completions.create(model=served.info.model_id, messages=user(AUDIO_PART))
    assert towers(served) == {"vision": True, "audio": True}
    status = served.status()["multimodal"]["towers"]
    assert all(t["bytes"] == t["weights_bytes"] > 0 for t in status.values())


def test_lazy_load_takes_less_memory(runtime, model_dir: Path) -> None:
    import gc

    import mlx.core as mx

    def active_after_load(lazy: bool) -> tuple[int, dict[str, Any]]:
        gc.collect()
        mx.clear_cache()
        before = mx.get_active_memory()
        handle = runtime.load_model(MlxModelConfig(str(model_dir), lazy_encoders=lazy))
        status = runtime.server_status(handle)
        used = status["memory"]["active_bytes"] - before
        runtime.unload_model(handle)
        return used, status["multimodal"]

    eager, eager_status = active_after_load(False)
    lazy, lazy_status = active_after_load(True)
    tower_bytes = sum(t["weights_bytes"] for t in eager_status["towers"].values())
    assert lazy < eager
    assert eager - lazy == pytest.approx(tower_bytes, rel=0.05)
    assert not any(t["resident"] for t in lazy_status["towers"].values())


# --- bad media -------------------------------------------------------------------------------


def _error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "invalid_request_error" and error["message"]
    return error


def test_bad_media_answer_openai_errors_and_the_server_goes_on(served) -> None:
    url = f"{served.info.base_url}/v1/chat/completions"
    headers = served.headers
    truncated = {"type": "image_url", "image_url": {"url": data_url(PNG[: len(PNG) // 2], "image/png")}}
    error = _error(httpx.post(url, headers=headers, json={"messages": user(truncated)}), 400, "invalid_image")
    assert error["param"] == "messages[0].content[1].image_url"

    wrong = {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "mp3"}}
    _error(httpx.post(url, headers=headers, json={"messages": user(wrong)}), 400, "invalid_audio_format")
    not_audio = {"type": "input_audio", "input_audio": {"data": base64.b64encode(PNG).decode(), "format": "wav"}}
    _error(httpx.post(url, headers=headers, json={"messages": user(not_audio)}), 400, "invalid_audio")
    unsupported = {"type": "input_audio", "input_audio": {"data": base64.b64encode(WAV).decode(), "format": "aac"}}
    _error(httpx.post(url, headers=headers, json={"messages": user(unsupported)}), 400, "invalid_audio_format")

    request = {"request": (None, json.dumps({"messages": user(IMAGE_REF)}), "application/json")}
    big = mm.wav_bytes(mm.tone(3.0), 16000)  # ~96 KB > the 64 KB part cap
    _error(httpx.post(url, headers=headers, files={**request, "photo": ("p.png", big, "image/png")}), 413, "payload_too_large")
    error = _error(httpx.post(url, headers=headers, files={**request, "other": ("p.png", PNG, "image/png")}), 400, "missing_attachment")
    assert "photo" in error["message"] and error["param"] == "messages[0].content[1].image_url.url"
    _error(httpx.post(url, headers=headers, files={"photo": ("p.png", PNG, "image/png")}), 400, "missing_request_part")
    _error(httpx.post(url, headers=headers, json={"messages": user(IMAGE_REF)}), 400, "missing_attachment")
    remote = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    _error(httpx.post(url, headers=headers, json={"messages": user(remote)}), 400, "remote_media_disabled")

    done = served.client().chat.completions.create(model=served.info.model_id, messages=user(IMAGE_PART))
    assert done.choices[0].message.content == ANSWER


def test_text_only_model_refuses_media(serve, make_model) -> None:
    with serve(make_model("gemma4_text")) as s:
        response = httpx.post(f"{s.info.base_url}/v1/chat/completions", headers=s.headers, json={"messages": user(IMAGE_PART)})
        error = _error(response, 400, "unsupported_media")
        assert "image" in error["message"]
        assert s.status()["multimodal"] is None


def test_eager_towers_serve_media_from_the_worker_thread(runtime, model_dir: Path) -> None:
    """With lazy_encoders off every tower array is evaluated at load (on the loading thread, whose
    MLX stream the worker cannot use for unevaluated arrays)."""
    from lib_mlx import MlxServerConfig

    handle = runtime.load_model(MlxModelConfig(str(model_dir), lazy_encoders=False))
    info = runtime.start_server(handle, MlxServerConfig())
    assert all(t["resident"] for t in runtime.server_status(handle)["multimodal"]["towers"].values())
    response = httpx.post(
        f"{info.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {info.api_key}"} if info.api_key else {},
        json={"messages": user(IMAGE_PART, AUDIO_PART), "thinking": False},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == ANSWER


def test_unload_gives_the_towers_memory_back(runtime, model_dir: Path) -> None:
    import gc

    import mlx.core as mx

    from lib_mlx import MlxServerConfig

    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    handle = runtime.load_model(MlxModelConfig(str(model_dir)))
    info = runtime.start_server(handle, MlxServerConfig())
    response = httpx.post(
        f"{info.base_url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {info.api_key}"} if info.api_key else {},
        json={"messages": user(IMAGE_PART, AUDIO_PART)},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    loaded = runtime.server_status(handle)["memory"]["active_bytes"] - before
    tower_bytes = sum(t["bytes"] for t in runtime.server_status(handle)["multimodal"]["towers"].values())
    assert loaded >= tower_bytes > 0
    runtime.unload_model(handle)
    gc.collect()
    assert mx.get_active_memory() - before <= 0.05 * loaded
