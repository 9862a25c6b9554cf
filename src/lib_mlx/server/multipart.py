"""``multipart/form-data`` requests on ``/v1/chat/completions`` and ``/v1/responses``.

The convention: one part named ``request`` (or ``payload``) carries the JSON body exactly as it
would be sent alone; every other part is a file whose *part name* content parts refer to as
``attachment:<part-name>``::

    curl http://127.0.0.1:PORT/v1/chat/completions -H "Authorization: Bearer $KEY" \\
      -F 'request={"messages": [{"role": "user", "content": [
            {"type": "text", "text": "What is in this picture, and what do you hear?"},
            {"type": "image_url", "image_url": {"url": "attachment:photo"}},
            {"type": "input_audio", "input_audio": {"data": "attachment:clip"}}]}]};type=application/json' \\
      -F photo=@cat.png -F clip=@meow.wav

The body is parsed as it streams in (python-multipart's push parser): a part over the per-part
cap or a body over the total cap is refused with 413 as soon as it crosses the line, without
reading the rest. A missing or malformed ``request`` part is 400.
"""

from __future__ import annotations

import asyncio
import base64
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request

from ..errors import InvalidJsonError, InvalidRequestError, PayloadTooLargeError
from .media import ATTACHMENT_SCHEME

PAYLOAD_PARTS = ("request", "payload")
MAX_PARTS = 64


@dataclass(frozen=True)
class Attachment:
    """A file part of a multipart request."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass
class MultipartBody:
    payload: dict[str, Any]
    attachments: dict[str, Attachment] = field(default_factory=dict)


def is_multipart(request: Request) -> bool:
    return request.headers.get("content-type", "").lower().startswith("multipart/form-data")


@dataclass
class _Part:
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    data: bytearray = field(default_factory=bytearray)
    name: str | None = None
    filename: str | None = None
    content_type: str | None = None


class _Collector:
    """python-multipart callbacks that keep each part in memory, within the caps."""

    def __init__(self, max_part_bytes: int) -> None:
        self.max_part_bytes = max_part_bytes
        self.parts: list[_Part] = []
        self._part = _Part()
        self._field = b""
        self._value = b""

    def on_part_begin(self) -> None:
        if len(self.parts) >= MAX_PARTS:
            raise InvalidRequestError(f"a multipart request may have at most {MAX_PARTS} parts", code="too_many_parts")
        self._part = _Part()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._field += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._value += data[start:end]

    def on_header_end(self) -> None:
        self._part.headers.append((self._field.lower(), self._value))
        self._field = self._value = b""

    def on_headers_finished(self) -> None:
        from python_multipart.multipart import parse_options_header

        part = self._part
        for name, value in part.headers:
            if name == b"content-disposition":
                _, options = parse_options_header(value)
                if b"name" in options:
                    part.name = options[b"name"].decode("utf-8", "replace")
                if b"filename" in options:
                    part.filename = options[b"filename"].decode("utf-8", "replace")
            elif name == b"content-type":
                part.content_type = value.decode("latin-1").split(";")[0].strip().lower() or None
        if not part.name:
            raise InvalidRequestError("every multipart part needs a name (Content-Disposition: form-data; name=...)")

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        part = self._part
        if len(part.data) + (end - start) > self.max_part_bytes:
            raise PayloadTooLargeError(
                f"multipart part {part.name!r} is larger than the {self.max_part_bytes}-byte limit per part",
                param=part.name,
            )
        part.data += data[start:end]

    def on_part_end(self) -> None:
        self.parts.append(self._part)

    def callbacks(self) -> dict[str, Any]:
        return {
            name: getattr(self, name)
            for name in (
                "on_part_begin",
                "on_header_field",
                "on_header_value",
                "on_header_end",
                "on_headers_finished",
                "on_part_data",
                "on_part_end",
            )
        }


async def read_multipart(request: Request, *, max_part_bytes: int, max_total_bytes: int) -> MultipartBody:
    """Parse the request as it streams in: the JSON ``request`` part plus file parts."""
    from python_multipart.exceptions import FormParserError
    from python_multipart.multipart import MultipartParser, parse_options_header

    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_total_bytes:
        raise PayloadTooLargeError(f"request body is larger than the {max_total_bytes}-byte limit")
    _, options = parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get(b"boundary")
    if not boundary:
        raise InvalidRequestError("multipart/form-data request without a boundary", code="invalid_multipart")
    collector = _Collector(max_part_bytes)
    size = 0
    try:
        parser = MultipartParser(boundary, collector.callbacks())  # refuses a boundary over 256 bytes
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_total_bytes:
                raise PayloadTooLargeError(f"request body is larger than the {max_total_bytes}-byte limit")
            await asyncio.to_thread(parser.write, chunk)  # python-multipart is pure Python: off the loop
        parser.finalize()
    except FormParserError as exc:
        raise InvalidRequestError(f"malformed multipart body: {exc}", code="invalid_multipart") from None
    return await asyncio.to_thread(_assemble, collector.parts)


def _assemble(parts: list[_Part]) -> MultipartBody:
    payload_part = next((p for p in parts if p.name in PAYLOAD_PARTS), None)
    if payload_part is None:
        raise InvalidRequestError(
            "a multipart request needs a part named 'request' carrying the JSON body",
            param="request",
            code="missing_request_part",
        )
    try:
        payload = json.loads(bytes(payload_part.data).decode("utf-8"))
    except UnicodeDecodeError:
        raise InvalidJsonError("the 'request' part is not valid UTF-8", param="request") from None
    except ValueError as exc:
        raise InvalidJsonError(f"the 'request' part is not valid JSON: {exc}", param="request") from None
    except RecursionError:
        raise InvalidJsonError("the 'request' part is nested too deeply", param="request") from None
    if not isinstance(payload, dict):
        raise InvalidRequestError("the 'request' part must be a JSON object", param="request")
    from .context import reject_lone_surrogates

    reject_lone_surrogates(payload)
    attachments: dict[str, Attachment] = {}
    for part in parts:
        if part is payload_part:
            continue
        assert part.name is not None
        if part.name in attachments or part.name in PAYLOAD_PARTS:
            raise InvalidRequestError(f"duplicate multipart part name {part.name!r}", param=part.name)
        attachments[part.name] = Attachment(part.name, bytes(part.data), part.filename, part.content_type)
    return MultipartBody(payload, attachments)


# Where each media part type keeps its URL: (key, nested key or None).
_URL_FIELDS: dict[str, tuple[str, str | None]] = {
    "image_url": ("image_url", "url"),
    "input_image": ("image_url", None),
    "audio_url": ("audio_url", "url"),
    "input_audio": ("input_audio", "data"),
}


def inline_attachments(payload: Any, attachments: dict[str, Attachment], *, max_total_bytes: int | None = None) -> Any:
    """Replace ``attachment:<part-name>`` references in media parts of a request body with data
    URLs of those parts (in place; returns ``payload``). A reference to a missing part is a 400
    naming where it was.

    One part may be referenced many times: every reference counts its part's size against
    ``max_total_bytes`` (413) before anything is copied, and each part is encoded once, every
    reference sharing that one string (no copy per reference). Blocking (base64 of up to the
    body cap): call it off the event loop."""
    references: list[tuple[dict[str, Any], str, str, Attachment]] = []
    total = 0

    def resolve(holder: dict[str, Any], field_name: str, ref: str, param: str) -> None:
        nonlocal total
        name = ref[len(ATTACHMENT_SCHEME) :]
        part = attachments.get(name)
        if part is None:
            known = ", ".join(sorted(attachments)) or "none"
            raise InvalidRequestError(
                f"{param}: no file part named {name!r} in this request (file parts: {known})",
                param=param,
                code="missing_attachment",
            )
        total += len(part.data)
        if max_total_bytes is not None and total > max_total_bytes:
            raise PayloadTooLargeError(
                f"{param}: the request's media references add up to more than the {max_total_bytes}-byte "
                "limit (every reference to a file part counts its full size)",
                param=param,
            )
        references.append((holder, field_name, param, part))

    def walk(node: Any, param: str) -> None:
        if isinstance(node, list):
            for k, item in enumerate(node):
                walk(item, f"{param}[{k}]")
        elif isinstance(node, dict):
            where = _URL_FIELDS.get(node.get("type")) if isinstance(node.get("type"), str) else None
            if where is not None:
                key, inner = where
                holder, field_name = (node.get(key), inner) if inner else (node, key)
                if isinstance(holder, dict) and isinstance(holder.get(field_name), str):
                    value = holder[field_name]
                    if value.startswith(ATTACHMENT_SCHEME):
                        path = f"{param}.{key}" + (f".{inner}" if inner else "")
                        resolve(holder, field_name, value, path.lstrip("."))
            for key, value in node.items():
                if isinstance(value, (list, dict)):
                    walk(value, f"{param}.{key}" if param else key)

    walk(payload, "")
    encoded: dict[str, str] = {}
    for holder, field_name, _, part in references:
        url = encoded.get(part.name)
        if url is None:
            mime = part.content_type or "application/octet-stream"
            url = encoded[part.name] = f"data:{mime};base64,{base64.b64encode(part.data).decode('ascii')}"
        holder[field_name] = url
    return payload


async def read_payload(ctx: Any, request: Request) -> dict[str, Any]:
    """The JSON body of a chat or responses request, sent as JSON or as multipart/form-data.
    With multipart, ``attachment:<part-name>`` references in media parts become data URLs."""
    from .media import media_limits

    if not is_multipart(request):
        return await ctx.read_json(request)
    limits = media_limits(ctx.settings)
    body = await read_multipart(request, max_part_bytes=limits.max_part_bytes, max_total_bytes=limits.max_total_bytes)
    if not body.attachments:
        return body.payload
    return await asyncio.to_thread(
        inline_attachments, body.payload, body.attachments, max_total_bytes=limits.max_total_bytes
    )


__all__ = ["PAYLOAD_PARTS", "Attachment", "MultipartBody", "inline_attachments", "is_multipart", "read_multipart", "read_payload"]
