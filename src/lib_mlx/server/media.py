"""Media in requests -> decoded values for core. No MLX here.

Chat content parts ``image_url`` (``{"url": ...}``) and ``input_audio`` (``{"data", "format"}``),
and the Responses parts ``input_image``/``input_audio`` once converted to those, become
``{"type": "image", "image": PIL.Image}`` and ``{"type": "audio", "audio": AudioClip}``: the
items chat templates render as media placeholders and core encodes.

Where media come from:
- ``data:<mime>;base64,<data>`` URLs (images), base64 ``input_audio.data``;
- ``attachment:<part-name>``: a file part of a ``multipart/form-data`` request (see
  ``server.multipart``), for ``image_url.url``, ``input_image.image_url``, ``audio_url.url``
  and ``input_audio.data`` alike. ``server.multipart.inline_attachments`` turns these
  references into data URLs as soon as the request is read, so that a stored Responses
  conversation stays self-contained;
- ``http(s)://`` URLs only when the server config sets ``allow_remote_media``.

Errors are ``InvalidRequestError`` (400) naming the part's ``param`` and
``PayloadTooLargeError`` (413).
"""

from __future__ import annotations

import base64
import binascii
import io
import urllib.request
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core import InferenceCore
from ..core.vlm.inputs import AudioClip
from ..errors import InvalidRequestError, PayloadTooLargeError

ATTACHMENT_SCHEME = "attachment:"
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
_AUDIO_ALIASES = {"wave": "wav", "x-wav": "wav", "mpeg": "mp3", "x-flac": "flac", "vorbis": "ogg", "oga": "ogg"}
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")


@dataclass(frozen=True)
class MediaLimits:
    """Caps on media in one request."""

    max_part_bytes: int = 20 * 1024 * 1024  # one decoded image/audio payload (or file part)
    max_total_bytes: int = 32 * 1024 * 1024  # all of a request's media together
    max_image_pixels: int = 40_000_000
    max_audio_seconds: float = 600.0
    remote_timeout: float = 10.0
    # All of a request's decoded media (RGB pixels x 3 + audio samples x 4 bytes): a small,
    # well-compressed file repeated many times must not decode into gigabytes.
    max_decoded_bytes: int = 512 * 1024 * 1024


class _Budget:
    """One request's media budget: every item (every reference to the same data too) counts."""

    def __init__(self, limits: MediaLimits) -> None:
        self.limits = limits
        self.used = 0
        self.decoded = 0

    def take_decoded(self, size: int, param: str) -> None:
        self.decoded += size
        if self.decoded > self.limits.max_decoded_bytes:
            raise PayloadTooLargeError(
                f"{param}: the request's decoded media exceed the {self.limits.max_decoded_bytes}-byte limit in total",
                param=param,
            )

    def take(self, data: bytes, param: str) -> bytes:
        if len(data) > self.limits.max_part_bytes:
            raise PayloadTooLargeError(
                f"{param}: media of {len(data)} bytes exceeds the {self.limits.max_part_bytes}-byte limit per item",
                param=param,
            )
        self.used += len(data)
        if self.used > self.limits.max_total_bytes:
            raise PayloadTooLargeError(
                f"the request's media exceed the {self.limits.max_total_bytes}-byte limit in total", param=param
            )
        return data


# --- sources -----------------------------------------------------------------------------------


def parse_data_url(url: str, *, param: str) -> tuple[str, bytes]:
    """``data:[<mime>][;base64],<data>`` -> (mime, bytes)."""
    if not url.startswith("data:") or "," not in url:
        raise InvalidRequestError(f"{param}: not a data URL", param=param, code="invalid_data_url")
    header, _, payload = url[5:].partition(",")
    fields = header.split(";")
    mime = fields[0].strip().lower() or "text/plain"
    if "base64" not in (f.strip().lower() for f in fields[1:]):
        raise InvalidRequestError(f"{param}: only base64 data URLs are supported", param=param, code="invalid_data_url")
    return mime, decode_base64(payload, param=param)


def decode_base64(text: str, *, param: str) -> bytes:
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequestError(f"{param}: invalid base64 data", param=param, code="invalid_base64") from None


def _fetch(url: str, *, param: str, limits: MediaLimits) -> bytes:
    """GET a remote medium (only where the server allows it), refusing more than a part's cap."""
    request = urllib.request.Request(url, headers={"User-Agent": "lib_mlx"})
    try:
        with urllib.request.urlopen(request, timeout=limits.remote_timeout) as response:  # noqa: S310
            data = response.read(limits.max_part_bytes + 1)
    except Exception as exc:  # noqa: BLE001 - any network failure is the request's problem
        raise InvalidRequestError(f"{param}: could not fetch {url}: {exc}", param=param, code="media_fetch_failed") from None
    if len(data) > limits.max_part_bytes:
        raise PayloadTooLargeError(f"{param}: {url} is larger than {limits.max_part_bytes} bytes", param=param)
    return data


def load_source(url: str, *, param: str, allow_remote: bool, limits: MediaLimits) -> tuple[bytes, str | None]:
    """A media URL -> (bytes, mime type if known)."""
    if url.startswith("data:"):
        mime, data = parse_data_url(url, param=param)
        return data, mime
    if url.startswith(ATTACHMENT_SCHEME):
        raise InvalidRequestError(
            f"{param}: {url!r} refers to a file part, but this is not a multipart/form-data request",
            param=param,
            code="missing_attachment",
        )
    if url.startswith(("http://", "https://")):
        if not allow_remote:
            raise InvalidRequestError(
                f"{param}: remote media URLs are disabled on this server (send a data URL or a multipart attachment)",
                param=param,
                code="remote_media_disabled",
            )
        return _fetch(url, param=param, limits=limits), None
    raise InvalidRequestError(
        f"{param}: unsupported media URL (use data:, attachment:<part-name> or http(s)://)",
        param=param,
        code="invalid_media_url",
    )


# --- decoding ----------------------------------------------------------------------------------


def decode_image(
    data: bytes, *, param: str, limits: MediaLimits = MediaLimits(), budget: _Budget | None = None
) -> Any:
    """Image bytes -> a fully loaded RGB ``PIL.Image``; truncated or unknown data is a 400."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise InvalidRequestError(f"{param}: the data is not a recognised image", param=param, code="invalid_image") from None
    except (OSError, ValueError) as exc:
        raise InvalidRequestError(f"{param}: could not read the image: {exc}", param=param, code="invalid_image") from None
    if image.format not in IMAGE_FORMATS:
        raise InvalidRequestError(
            f"{param}: unsupported image format {image.format} (use {', '.join(IMAGE_FORMATS)})",
            param=param,
            code="invalid_image",
        )
    width, height = image.size
    if width * height > limits.max_image_pixels:
        raise PayloadTooLargeError(
            f"{param}: a {width}x{height} image exceeds the {limits.max_image_pixels}-pixel limit", param=param
        )
    if budget is not None:
        budget.take_decoded(width * height * 3, param)  # before decoding a pixel
    try:
        image.load()  # decodes everything: a truncated file fails here
    except (OSError, ValueError, SyntaxError) as exc:
        raise InvalidRequestError(
            f"{param}: the image data is truncated or corrupt ({exc})", param=param, code="invalid_image"
        ) from None
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            rgba = image.convert("RGBA")  # transparent pixels over white, not black
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(rgba, mask=rgba.getchannel("A"))
            image = background
        else:
            image = image.convert("RGB")
    return image


def sniff_audio_format(data: bytes) -> str | None:
    """wav/mp3/flac/ogg from the leading bytes; None when unknown."""
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "wav"
    if data[:4] == b"fLaC":
        return "flac"
    if data[:4] == b"OggS":
        return "ogg"
    if data[:3] == b"ID3" or (len(data) > 1 and data[0] == 0xFF and (data[1] & 0xE0) == 0xE0):
        return "mp3"
    return None


def normalize_audio_format(fmt: str | None, *, param: str) -> str | None:
    if fmt is None or fmt == "":
        return None
    name = fmt.lower().strip().removeprefix("audio/")
    name = _AUDIO_ALIASES.get(name, name)
    if name not in AUDIO_FORMATS:
        raise InvalidRequestError(
            f"{param}: unsupported audio format {fmt!r} (supported: {', '.join(AUDIO_FORMATS)})",
            param=param,
            code="invalid_audio_format",
        )
    return name


def decode_audio(
    data: bytes, *, fmt: str | None = None, param: str, limits: MediaLimits = MediaLimits()
) -> AudioClip:
    """wav/mp3/flac/ogg bytes -> mono float32 samples at the file's own rate (core resamples to
    the model's). ``fmt`` is the declared format; data of another format is a 400."""
    declared = normalize_audio_format(fmt, param=param)
    actual = sniff_audio_format(data)
    if actual is None and declared is None:
        raise InvalidRequestError(
            f"{param}: the data is not a recognised audio file (supported: {', '.join(AUDIO_FORMATS)})",
            param=param,
            code="invalid_audio",
        )
    if declared is not None and actual is not None and declared != actual:
        raise InvalidRequestError(
            f"{param}: the audio was declared as {declared} but the data is {actual}",
            param=param,
            code="invalid_audio_format",
        )
    kind = actual or declared
    assert kind is not None
    try:
        samples, rate = _decode(data, kind)
    except InvalidRequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - decoder errors come in many types
        raise InvalidRequestError(
            f"{param}: could not decode the {kind} audio ({type(exc).__name__}: {exc})", param=param, code="invalid_audio"
        ) from None
    if samples.size == 0:
        raise InvalidRequestError(f"{param}: the {kind} audio has no samples", param=param, code="invalid_audio")
    clip = AudioClip(samples, rate)
    if clip.seconds > limits.max_audio_seconds:
        raise PayloadTooLargeError(
            f"{param}: {clip.seconds:.0f} s of audio exceeds the {limits.max_audio_seconds:.0f}-second limit", param=param
        )
    return clip


def _decode(data: bytes, kind: str) -> tuple[np.ndarray, int]:
    try:
        import miniaudio
    except ImportError:  # pragma: no cover - miniaudio arrives with mlx-vlm (mlx-audio)
        if kind == "wav":
            return _decode_wav_stdlib(data)
        raise InvalidRequestError(f"decoding {kind} audio needs the miniaudio package", code="invalid_audio") from None
    read = {
        "wav": miniaudio.wav_read_f32,
        "mp3": miniaudio.mp3_read_f32,
        "flac": miniaudio.flac_read_f32,
        "ogg": miniaudio.vorbis_read,
    }[kind]
    decoded = read(data)
    samples = np.asarray(decoded.samples, dtype=np.float32)
    if decoded.sample_format != miniaudio.SampleFormat.FLOAT32:  # vorbis_read gives int16
        samples = samples / 32768.0
    if decoded.nchannels > 1:
        samples = samples.reshape(-1, decoded.nchannels).mean(axis=1)
    return samples.astype(np.float32, copy=False), int(decoded.sample_rate)


def _decode_wav_stdlib(data: bytes) -> tuple[np.ndarray, int]:
    import wave

    with wave.open(io.BytesIO(data)) as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        samples = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    elif width == 4:
        samples = np.frombuffer(raw, "<i4").astype(np.float32) / 2147483648.0
    else:
        raise ValueError(f"{8 * width}-bit PCM")
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return samples, rate


# --- messages ----------------------------------------------------------------------------------



def _image_url_of(part: dict[str, Any]) -> str | None:
    value = part.get("image_url")
    if isinstance(value, dict):
        value = value.get("url")
    return value if isinstance(value, str) else None


def decode_messages(
    messages: list[dict[str, Any]],
    *,
    allow_remote: bool = False,
    limits: MediaLimits = MediaLimits(),
    param_prefix: str = "messages",
) -> list[dict[str, Any]]:
    """Copies of ``messages`` whose media parts are decoded into core's media items.

    Blocking (decoding, remote fetches): call it off the event loop."""
    budget = _Budget(limits)
    out = []
    for i, message in enumerate(messages):
        content = message.get("content")
        if not isinstance(content, list):
            out.append(message)
            continue
        parts = []
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            param = f"{param_prefix}[{i}].content[{j}]"
            if kind in ("image_url", "input_image"):
                url = _image_url_of(part)
                if not url:
                    raise InvalidRequestError(f"{param}.image_url: an image URL is required", param=f"{param}.image_url")
                data, _ = load_source(url, param=f"{param}.image_url", allow_remote=allow_remote, limits=limits)
                budget.take(data, f"{param}.image_url")
                image = decode_image(data, param=f"{param}.image_url", limits=limits, budget=budget)
                parts.append({"type": "image", "image": image})
            elif kind in ("input_audio", "audio_url"):
                parts.append({"type": "audio", "audio": _audio_part(part, param, allow_remote, limits, budget)})
            else:
                parts.append(part)
        if message.get("role") not in ("user",) and any(p.get("type") in ("image", "audio") for p in parts):
            raise InvalidRequestError(
                f"{param_prefix}[{i}]: media are only accepted in user messages", param=f"{param_prefix}[{i}].content"
            )
        out.append({**message, "content": parts})
    return out


def _audio_part(
    part: dict[str, Any],
    param: str,
    allow_remote: bool,
    limits: MediaLimits,
    budget: _Budget,
) -> AudioClip:
    if part.get("type") == "audio_url":
        value = part.get("audio_url")
        url = value.get("url") if isinstance(value, dict) else value
        where, fmt = f"{param}.audio_url", None
        if not isinstance(url, str) or not url:
            raise InvalidRequestError(f"{where}: an audio URL is required", param=where)
        data, mime = load_source(url, param=where, allow_remote=allow_remote, limits=limits)
    else:
        spec = part.get("input_audio")
        where = f"{param}.input_audio"
        if not isinstance(spec, dict) or not isinstance(spec.get("data"), str) or not spec["data"]:
            raise InvalidRequestError(f"{where}.data: base64 audio data is required", param=f"{where}.data")
        fmt = spec.get("format")
        raw = spec["data"]
        if raw.startswith(("data:", ATTACHMENT_SCHEME)):
            data, mime = load_source(raw, param=f"{where}.data", allow_remote=False, limits=limits)
        else:
            data, mime = decode_base64(raw, param=f"{where}.data"), None
    if fmt is None and mime and mime.startswith("audio/"):
        try:
            fmt = normalize_audio_format(mime, param=where)
        except InvalidRequestError:
            fmt = None  # an unusual mime type: let the bytes speak
    budget.take(data, where)
    clip = decode_audio(data, fmt=fmt if isinstance(fmt, str) else None, param=where, limits=limits)
    budget.take_decoded(int(clip.samples.size) * 4, where)
    return clip


# --- the request path (used by the chat and responses routes) --------------------------------


def media_limits(settings: Any) -> MediaLimits:
    total = int(getattr(settings, "max_body_bytes", MediaLimits.max_total_bytes))
    part = int(getattr(settings, "max_media_part_bytes", MediaLimits.max_part_bytes))
    return MediaLimits(max_part_bytes=min(part, total), max_total_bytes=total)


def accepted_media(core: InferenceCore) -> frozenset[str]:
    return core.capabilities.media


def _media_kinds(messages: list[dict[str, Any]]) -> set[str]:
    kinds = set()
    for message in messages:
        if isinstance(message.get("content"), list):
            for part in message["content"]:
                kind = part.get("type") if isinstance(part, dict) else None
                if kind in ("image_url", "input_image"):
                    kinds.add("image")
                elif kind in ("input_audio", "audio_url"):
                    kinds.add("audio")
    return kinds


async def decode_prompt_media(ctx: Any, prompt: Any, *, param_prefix: str = "messages") -> None:
    """Decode the media parts of ``prompt.messages`` (a ``core.ChatPrompt``) in place, off the
    event loop; media the model cannot take are a 400 before anything is decoded."""
    import asyncio

    kinds = _media_kinds(prompt.messages)
    if not kinds:
        return
    missing = kinds - accepted_media(ctx.core)
    if missing:
        accepted = ", ".join(sorted(accepted_media(ctx.core))) or "text only"
        raise InvalidRequestError(
            f"this model does not accept {' or '.join(sorted(missing))} input (it accepts: {accepted})",
            param=param_prefix,
            code="unsupported_media",
        )
    prompt.messages = await asyncio.to_thread(
        decode_messages,
        prompt.messages,
        allow_remote=bool(getattr(ctx.settings, "allow_remote_media", False)),
        limits=media_limits(ctx.settings),
        param_prefix=param_prefix,
    )


__all__ = [
    "ATTACHMENT_SCHEME",
    "AUDIO_FORMATS",
    "MediaLimits",
    "decode_audio",
    "decode_base64",
    "decode_image",
    "decode_messages",
    "accepted_media",
    "decode_prompt_media",
    "media_limits",
    "load_source",
    "parse_data_url",
    "sniff_audio_format",
]
