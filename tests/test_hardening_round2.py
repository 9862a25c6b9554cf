"""Hardening, round two (issue 20): one request can never take the machine, keep-alive costs
nothing, and the footguns found by probing are refused with a clear error.

Each test names the issue's point it covers and fails without that point's fix.
"""

from __future__ import annotations

import base64
import json
import socket
import time

import httpx
import pytest

from hardening_support import USER, Served, assert_openai_error, chat_body
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig
from lib_mlx.errors import PayloadTooLargeError
from lib_mlx.server.media import MediaLimits, decode_messages
from lib_mlx.server.multipart import Attachment, inline_attachments
from lib_mlx.tiny_models.multimodal import png_bytes

CONTEXT = 256


@pytest.fixture(scope="module")
def loaded(make_model):
    runtime = LibMlxRuntime()
    handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3", max_position_embeddings=CONTEXT))))
    yield runtime, handle
    runtime.close()


@pytest.fixture
def serve(loaded):
    """``serve(**MlxServerConfig fields) -> Served`` on the module's loaded model."""
    runtime, handle = loaded

    def start(**settings) -> Served:
        runtime.stop_server(handle)
        return Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(**settings)))

    yield start
    runtime.stop_server(handle)


# --- 2. multipart attachment amplification ---------------------------------------------------


def _references(n: int, name: str = "photo") -> dict:
    return {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": f"attachment:{name}"}} for _ in range(n)]}]}


def test_every_reference_counts_against_the_cap_before_anything_is_copied() -> None:
    attachments = {"photo": Attachment("photo", b"x" * 10_000, "p.png", "image/png")}
    with pytest.raises(PayloadTooLargeError) as err:
        inline_attachments(_references(11), attachments, max_total_bytes=100_000)
    assert err.value.param == "messages[0].content[10].image_url.url"
    # Under the cap, every reference shares one encoded string: no copy per reference.
    payload = inline_attachments(_references(10), attachments, max_total_bytes=100_000)
    urls = [part["image_url"]["url"] for part in payload["messages"][0]["content"]]
    assert urls[0].startswith("data:image/png;base64,")
    assert all(url is urls[0] for url in urls)


def test_decoded_pixels_of_repeated_images_are_bounded() -> None:
    """A small, well-compressed image referenced many times must not decode into gigabytes:
    every decoded copy counts against ``max_decoded_bytes``."""
    png = png_bytes()
    url = f"data:image/png;base64,{base64.b64encode(png).decode()}"
    part = {"type": "image_url", "image_url": {"url": url}}
    from PIL import Image
    import io

    w, h = Image.open(io.BytesIO(png)).size
    limits = MediaLimits(max_decoded_bytes=w * h * 3 * 3)
    decode_messages([{"role": "user", "content": [part] * 3}], limits=limits)
    with pytest.raises(PayloadTooLargeError) as err:
        decode_messages([{"role": "user", "content": [part] * 4}], limits=limits)
    assert err.value.param == "messages[0].content[3].image_url"


def test_multipart_part_referenced_many_times_is_413_over_http(serve) -> None:
    s = serve(max_body_bytes=256 * 1024, max_media_part_bytes=200 * 1024)
    request = json.dumps(_references(40))
    files = {"request": (None, request, "application/json"), "photo": ("p.png", b"\x89PNG" + b"\0" * 60_000, "image/png")}
    started = time.perf_counter()
    r = httpx.post(s.base_url + "/v1/chat/completions", headers=s.headers, files=files, timeout=30)
    assert_openai_error(r, 413, "payload_too_large", "messages[0].content[4].image_url.url")
    assert time.perf_counter() - started < 5
    assert httpx.get(s.base_url + "/health").status_code == 200
