"""Media decoding in the server layer (no MLX, no model): data URLs, images, audio formats,
attachment references and the multipart parser's caps."""

from __future__ import annotations

import asyncio
import base64
import json

import numpy as np
import pytest

from lib_mlx.core.vlm import AudioClip
from lib_mlx.errors import InvalidRequestError, PayloadTooLargeError
from lib_mlx.server.media import (
    MediaLimits,
    decode_audio,
    decode_image,
    decode_messages,
    parse_data_url,
    sniff_audio_format,
)
from lib_mlx.server.multipart import Attachment, inline_attachments
from lib_mlx.tiny_models.multimodal import flac_bytes, mp3_silence_bytes, png_bytes, tone, wav_bytes


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


# --- data URLs and images --------------------------------------------------------------------


def test_data_url_round_trip() -> None:
    assert parse_data_url(data_url(b"\x00\x01abc", "image/png"), param="p") == ("image/png", b"\x00\x01abc")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("http://example.com/x.png", "invalid_data_url"),
        ("data:image/png,rawtext", "invalid_data_url"),
        ("data:image/png;base64,@@@not-base64@@@", "invalid_base64"),
    ],
)
def test_bad_data_urls(url: str, code: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        parse_data_url(url, param="messages[0].content[1].image_url")
    assert err.value.code == code and err.value.param == "messages[0].content[1].image_url"


def test_decode_image_gives_rgb() -> None:
    image = decode_image(png_bytes(40, 30), param="p")
    assert image.size == (40, 30) and image.mode == "RGB"


def test_transparent_pixels_become_white() -> None:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(buf, format="PNG")
    assert decode_image(buf.getvalue(), param="p").getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (png_bytes(64, 64)[:60], "truncated"),
        (b"definitely not an image", "not a recognised image"),
    ],
)
def test_bad_images_are_400(data: bytes, needle: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        decode_image(data, param="p")
    assert err.value.status == 400 and err.value.code == "invalid_image" and needle in err.value.message


def test_image_pixel_cap_is_413() -> None:
    with pytest.raises(PayloadTooLargeError):
        decode_image(png_bytes(100, 100), param="p", limits=MediaLimits(max_image_pixels=9_999))


# --- audio -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "data", "rate", "peak"),
    [
        ("wav", wav_bytes(tone(0.25, 22050), 22050), 22050, 0.5),
        ("flac", flac_bytes(tone(0.25, 16000), 16000), 16000, 0.5),
        ("mp3", mp3_silence_bytes(10), 44100, 0.0),
    ],
)
def test_audio_formats_decode_to_mono_float32(fmt: str, data: bytes, rate: int, peak: float) -> None:
    assert sniff_audio_format(data) == fmt
    clip = decode_audio(data, fmt=fmt, param="p")
    assert clip.sample_rate == rate and clip.samples.dtype == np.float32 and clip.samples.ndim == 1
    assert abs(float(np.abs(clip.samples).max()) - peak) < 1e-3


def test_stereo_is_mixed_down() -> None:
    left_right = np.stack([np.full(800, 0.5), np.full(800, -0.1)], axis=1)
    clip = decode_audio(wav_bytes(left_right, 8000, channels=2), param="p")
    assert clip.samples.shape == (800,) and np.allclose(clip.samples, 0.2, atol=1e-3)


def test_format_is_sniffed_when_not_declared() -> None:
    assert decode_audio(flac_bytes(tone(0.1)), param="p").sample_rate == 16000


@pytest.mark.parametrize(
    ("data", "fmt", "code"),
    [
        (wav_bytes(tone(0.1)), "aac", "invalid_audio_format"),  # unsupported format
        (wav_bytes(tone(0.1)), "mp3", "invalid_audio_format"),  # declared one thing, is another
        (png_bytes(), "wav", "invalid_audio"),  # not audio at all
        (b"\x00" * 64, None, "invalid_audio"),  # unknown, undeclared
    ],
)
def test_wrong_audio_is_400(data: bytes, fmt: str | None, code: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        decode_audio(data, fmt=fmt, param="messages[0].content[0].input_audio")
    assert err.value.status == 400 and err.value.code == code
    assert err.value.param == "messages[0].content[0].input_audio"


# --- messages and attachments ----------------------------------------------------------------


def test_decode_messages_turns_parts_into_core_media() -> None:
    wav = base64.b64encode(wav_bytes(tone(0.1))).decode()
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "look and listen"},
                {"type": "image_url", "image_url": {"url": data_url(png_bytes(), "image/png")}},
                {"type": "input_audio", "input_audio": {"data": wav, "format": "wav"}},
            ],
        },
    ]
    out = decode_messages(messages)
    parts = out[1]["content"]
    assert [p["type"] for p in parts] == ["text", "image", "audio"]
    assert parts[1]["image"].mode == "RGB" and isinstance(parts[2]["audio"], AudioClip)
    assert out[0] == messages[0] and messages[1]["content"][1]["type"] == "image_url"  # a copy


def test_media_outside_user_messages_is_400() -> None:
    part = {"type": "image_url", "image_url": {"url": data_url(png_bytes(), "image/png")}}
    with pytest.raises(InvalidRequestError):
        decode_messages([{"role": "system", "content": [part]}])


def test_remote_urls_need_the_server_setting() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}
    with pytest.raises(InvalidRequestError) as err:
        decode_messages([{"role": "user", "content": [part]}])
    assert err.value.code == "remote_media_disabled"


def test_total_media_budget_is_413() -> None:
    part = {"type": "image_url", "image_url": {"url": data_url(png_bytes(), "image/png")}}
    size = len(png_bytes())
    with pytest.raises(PayloadTooLargeError):
        decode_messages([{"role": "user", "content": [part, part]}], limits=MediaLimits(max_total_bytes=size + 1))


def test_inline_attachments_resolves_references_and_names_missing_ones() -> None:
    payload = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "attachment:photo stays text"},
                    {"type": "image_url", "image_url": {"url": "attachment:photo"}},
                    {"type": "input_audio", "input_audio": {"data": "attachment:clip"}},
                ],
            }
        ]
    }
    attachments = {
        "photo": Attachment("photo", b"PNGDATA", "p.png", "image/png"),
        "clip": Attachment("clip", b"WAVDATA", None, None),
    }
    inline_attachments(payload, attachments)
    content = payload["messages"][0]["content"]
    assert content[0]["text"] == "attachment:photo stays text"
    assert content[1]["image_url"]["url"] == data_url(b"PNGDATA", "image/png")
    assert content[2]["input_audio"]["data"] == data_url(b"WAVDATA", "application/octet-stream")

    responses_payload = {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "attachment:nope"}]}]}
    with pytest.raises(InvalidRequestError) as err:
        inline_attachments(responses_payload, attachments)
    assert err.value.code == "missing_attachment" and err.value.param == "input[0].content[0].image_url"


# --- the multipart parser --------------------------------------------------------------------


def _multipart(parts: list[tuple[str, bytes, str | None, str | None]], boundary: str = "XyZ") -> bytes:
    out = b""
    for name, data, filename, ctype in parts:
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if ctype:
            out += f"Content-Type: {ctype}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def _request(body: bytes, chunk: int = 1000):
    from starlette.requests import Request

    chunks = [body[i : i + chunk] for i in range(0, len(body), chunk)] or [b""]

    async def receive():
        data = chunks.pop(0)
        return {"type": "http.request", "body": data, "more_body": bool(chunks)}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/chat/completions",
        "headers": [(b"content-type", b"multipart/form-data; boundary=XyZ"), (b"content-length", str(len(body)).encode())],
    }
    return Request(scope, receive)


def _read(body: bytes, **caps: int):
    from lib_mlx.server.multipart import read_multipart

    caps.setdefault("max_part_bytes", 1 << 20)
    caps.setdefault("max_total_bytes", 1 << 22)
    return asyncio.run(read_multipart(_request(body), **caps))


def test_multipart_request_part_and_files() -> None:
    body = _multipart(
        [
            ("request", json.dumps({"model": "m", "messages": []}).encode(), None, "application/json"),
            ("photo", png_bytes(), "cat.png", "image/png"),
            ("clip", b"RIFF....WAVE", "a.wav", None),
        ]
    )
    parsed = _read(body)
    assert parsed.payload == {"model": "m", "messages": []}
    assert parsed.attachments["photo"].data == png_bytes() and parsed.attachments["photo"].content_type == "image/png"
    assert parsed.attachments["clip"].filename == "a.wav"


@pytest.mark.parametrize(
    ("parts", "error", "code"),
    [
        ([("photo", b"x", "p.png", None)], InvalidRequestError, "missing_request_part"),
        ([("request", b"{not json", None, None)], InvalidRequestError, "invalid_json"),
        ([("request", b"{}", None, None), ("a", b"1", "a", None), ("a", b"2", "a", None)], InvalidRequestError, None),
        ([("request", b"{}", None, None), ("big", b"x" * 5000, "b", None)], PayloadTooLargeError, "payload_too_large"),
    ],
)
def test_multipart_errors(parts, error, code) -> None:
    with pytest.raises(error) as err:
        _read(_multipart(parts), max_part_bytes=4096)
    if code:
        assert err.value.code == code


def test_multipart_total_cap_stops_reading_early() -> None:
    body = _multipart([("request", b"{}", None, None), ("a", b"x" * 3000, "a", None), ("b", b"y" * 3000, "b", None)])
    with pytest.raises(PayloadTooLargeError):
        _read(body, max_part_bytes=4096, max_total_bytes=len(body) - 1)
