"""The chat page in a real headless Chromium, against real servers running scripted models.

Each test records every request the browser makes and checks that all of them went to the
server's own origin and that none carried the token in its URL. A screenshot of a finished
exchange lands in ``test-artifacts/``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import page_support as ps
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig, ServerInfo

_missing = ps.have_browser()
pytestmark = pytest.mark.skipif(_missing is not None, reason=_missing or "")

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
TIMEOUT_MS = 30_000


@dataclass
class Server:
    runtime: LibMlxRuntime
    handle: int
    info: ServerInfo

    @property
    def origin(self) -> str:
        return self.info.base_url

    @property
    def page_url(self) -> str:
        return f"{self.info.base_url}/#token={self.info.api_key}"

    def in_flight(self) -> int:
        return self.runtime.server_status(self.handle)["in_flight"]


@dataclass
class Tab:
    """A browser page plus every request it made."""

    page: Any
    requests: list[Any] = field(default_factory=list)

    def chat_posts(self) -> list[Any]:
        return [r for r in self.requests if r.method == "POST" and r.url.endswith("/v1/chat/completions")]

    def assert_only(self, server: Server) -> None:
        """Every request went to ``server``'s origin, and none put the token in its URL."""
        assert self.requests, "no request was recorded"
        for request in self.requests:
            # blob: URLs of the page's own origin are local previews of attached files.
            url = request.url.removeprefix("blob:")
            assert url.startswith(server.origin + "/"), request.url
            assert server.info.api_key not in request.url, request.url


@pytest.fixture(scope="module")
def servers(make_model, tmp_path_factory) -> Iterator[dict[str, Server]]:
    models = ps.build_page_models(make_model, tmp_path_factory.mktemp("page-models"))
    runtime = LibMlxRuntime()
    out: dict[str, Server] = {}
    try:
        for name, path in models.items():
            handle = runtime.load_model(MlxModelConfig(str(path)))
            out[name] = Server(runtime, handle, runtime.start_server(handle, MlxServerConfig()))
        yield out
    finally:
        runtime.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        context = ps.launch_chromium(playwright, tmp_path_factory.mktemp("chromium-profile"))
        context.set_default_timeout(TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def tab(browser) -> Iterator[Tab]:
    page = browser.new_page()
    tab = Tab(page)
    page.on("request", lambda request: tab.requests.append(request))
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    # The page must never trip its own Content-Security-Policy.
    page.on("console", lambda msg: errors.append(msg.text) if "Content Security Policy" in msg.text else None)
    try:
        yield tab
    finally:
        page.close()
    assert not errors, f"JavaScript errors or CSP violations on the page: {errors}"


def open_page(tab: Tab, server: Server, url: str | None = None) -> Any:
    page = tab.page
    page.goto(url or server.page_url)
    page.wait_for_function("() => ['ready', 'unauthorized', 'no key'].includes(document.body.dataset.status)")
    return page


def send(page: Any, text: str) -> None:
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")


def last_turn(page: Any) -> Any:
    return page.locator(".turn.assistant").last


def wait_turns(page: Any, count: int = 1, state: str = "done") -> Any:
    """Wait until ``count`` assistant turns have ended; the last must have ended in ``state``."""
    page.wait_for_function(
        "(n) => document.querySelectorAll('.turn.assistant.done, .turn.assistant.stopped, .turn.assistant.error').length >= n",
        arg=count,
    )
    turn = last_turn(page)
    errors = turn.locator(".turn-error")
    assert turn.get_attribute("data-state") == state, errors.inner_text() if errors.is_visible() else ""
    return turn


# Records each text the reasoning and answer blocks show, in order (each update replaces the
# block's text node, so the added node's data is a snapshot of that moment).
RECORD_UPDATES = """
() => {
  window.__updates = [];
  new MutationObserver((records) => {
    for (const r of records) {
      const box = r.target.nodeType === 1 ? r.target : r.target.parentElement;
      if (!box || !box.matches('.reasoning-text, .answer')) continue;
      for (const node of r.addedNodes) {
        if (node.nodeType === 3) window.__updates.push([box.className, node.data]);
      }
    }
  }).observe(document.getElementById('messages'), {subtree: true, childList: true});
}
"""


def test_reasoning_and_answer_stream_into_their_own_blocks(servers, tab):
    server = servers["chat"]
    page = open_page(tab, server)
    assert page.evaluate("() => document.body.dataset.status") == "ready"
    assert "token" not in page.url  # the fragment is dropped from the address bar at once
    assert page.is_hidden("#attach")  # a text-only model: no attach button
    assert page.inner_text("#model") == server.info.model_id

    page.evaluate(RECORD_UPDATES)
    send(page, "What is the capital of France?")
    turn = wait_turns(page)

    assert turn.locator(".reasoning-text").inner_text() == ps.REASONING
    assert turn.locator(".answer").inner_text() == ps.ANSWER
    assert turn.locator("details.reasoning").get_attribute("open") is not None
    assert turn.locator(".turn-error").is_hidden()

    # Streamed: the reasoning grew over several updates, all before the answer's first one,
    # and the answer grew after it; each block only ever showed prefixes of its final text.
    updates = page.evaluate("() => window.__updates")
    kinds = [kind for kind, _ in updates]
    reasoning = [text for kind, text in updates if kind == "reasoning-text"]
    answer = [text for kind, text in updates if kind == "answer"]
    assert len(reasoning) >= 2 and len(answer) >= 2, updates
    assert kinds.index("answer") > max(i for i, k in enumerate(kinds) if k == "reasoning-text")
    assert all(ps.REASONING.startswith(t) for t in reasoning) and reasoning[-1] == ps.REASONING
    assert all(ps.ANSWER.startswith(t) for t in answer) and answer[-1] == ps.ANSWER

    # Metrics from the stream: time to first token, tokens/s, the usage's token counts.
    stats = turn.locator(".stats-text").inner_text()
    assert "TTFT" in stats and "tok/s" in stats, stats
    assert int(turn.get_attribute("data-tokens")) == len(ps.CHAT_CHAINS["\n"])
    assert float(turn.get_attribute("data-ttft-ms")) > 0
    assert float(turn.get_attribute("data-tokens-per-second")) > 0

    (post,) = tab.chat_posts()
    body = ps.post_json(post)
    assert body["stream"] is True and body["thinking"] is True
    assert body["messages"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert post.headers["authorization"] == f"Bearer {server.info.api_key}"
    tab.assert_only(server)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_page.png"))


def test_thinking_switch_off_sends_thinking_false(servers, tab):
    server = servers["chat"]
    page = open_page(tab, server)
    page.click("#thinking-control .track")
    assert not page.is_checked("#thinking")
    send(page, "Capital of France?")
    turn = wait_turns(page)
    assert turn.locator(".answer").inner_text() == ps.ANSWER
    assert turn.locator("details.reasoning").is_hidden()
    assert ps.post_json(tab.chat_posts()[-1])["thinking"] is False
    tab.assert_only(server)


def test_tool_call_renders_as_a_card_and_its_result_continues_the_chat(servers, tab):
    server = servers["tool"]
    page = open_page(tab, server)
    page.click("#settings-toggle")
    page.fill("#tools", json.dumps([ps.WEATHER_TOOL]))
    page.click("#settings-toggle")  # the panel closes; its values stay
    send(page, "What is the weather in Paris?")
    page.wait_for_selector(".tool-card .tool-result-form:not([hidden])")

    turn = page.locator(".turn.assistant").first  # (locators are lazy: .last would move on)
    assert turn.get_attribute("data-state") == "done"
    assert turn.get_attribute("data-finish-reason") == "tool_calls"
    assert turn.locator(".reasoning-text").inner_text() == ps.TOOL_REASONING
    card = turn.locator(".tool-card")
    assert card.count() == 1
    assert card.locator(".tool-name").inner_text() == ps.TOOL_NAME
    call_id = card.locator(".tool-id").inner_text()
    assert call_id
    args_text = card.locator(".tool-args").inner_text()
    assert json.loads(args_text) == ps.TOOL_ARGUMENTS
    assert args_text == json.dumps(ps.TOOL_ARGUMENTS, indent=2)  # pretty-printed

    result = '{"temperature": 21, "unit": "celsius"}'
    card.locator(".tool-result").fill(result)
    card.locator(".tool-send").click()
    wait_turns(page, 2)
    assert card.locator(".tool-result-text").inner_text() == result

    first, second = (ps.post_json(p) for p in tab.chat_posts())
    assert first["tools"] == [ps.WEATHER_TOOL]
    assistant, tool = second["messages"][-2:]
    assert assistant["role"] == "assistant"
    (call,) = assistant["tool_calls"]
    assert call["id"] == call_id and call["type"] == "function"
    assert call["function"]["name"] == ps.TOOL_NAME
    assert json.loads(call["function"]["arguments"]) == ps.TOOL_ARGUMENTS
    assert tool == {"role": "tool", "tool_call_id": call_id, "content": result}
    # The model (scripted to call the tool again) streamed a second turn with its own card.
    assert last_turn(page).locator(".tool-card .tool-name").inner_text() == ps.TOOL_NAME
    tab.assert_only(server)

    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_page_tool_call.png"))


def test_stop_aborts_the_stream_and_the_server_cancels(servers, tab):
    server = servers["endless"]
    page = open_page(tab, server)
    send(page, "Tell me a story that never ends")
    turn = last_turn(page)
    page.wait_for_function(
        "() => { const a = document.querySelector('.turn.assistant .answer'); return a && a.textContent.length > 40; }"
    )
    assert server.in_flight() == 1
    assert page.is_visible("#stop") and page.is_hidden("#send")
    page.click("#stop")
    wait_turns(page, 1, "stopped")

    deadline = time.monotonic() + 15
    while server.in_flight() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.in_flight() == 0

    text = turn.locator(".answer").inner_text()
    assert text.startswith("On and on and on")
    time.sleep(0.3)
    assert turn.locator(".answer").inner_text() == text  # nothing arrives after the stop
    assert "stopped" in turn.locator(".stats-text").inner_text()
    assert page.is_visible("#send") and page.is_hidden("#stop")
    tab.assert_only(server)


def test_wrong_or_missing_token_shows_a_clear_error(servers, tab):
    server = servers["chat"]
    page = open_page(tab, server, f"{server.origin}/#token=not-the-key")
    banner = page.locator("#banner")
    assert banner.is_visible()
    text = banner.inner_text()
    assert "401" in text and "API key" in text, text
    assert page.evaluate("() => document.body.dataset.status") == "unauthorized"

    # Sending anyway shows the same error on the turn, not a silent failure.
    send(page, "hello?")
    wait_turns(page, 1, "error")
    error = last_turn(page).locator(".turn-error").inner_text()
    assert "401" in error and "API key" in error, error

    # Pasting the right key fixes it, without reloading.
    page.fill("#token-input", server.info.api_key)
    page.press("#token-input", "Enter")
    page.wait_for_function("() => document.body.dataset.status === 'ready'")
    assert banner.is_hidden()
    send(page, "What is the capital of France?")
    wait_turns(page, 2)
    assert last_turn(page).locator(".answer").inner_text() == ps.ANSWER

    # No token at all: the page says it needs one before anything is sent.
    page = open_page(tab, server, f"{server.origin}/")
    assert "needs its API key" in page.locator("#banner").inner_text()
    tab.assert_only(server)


MEDIA_REASONING = "Square picture with sine tone"  # no token of it may recur in the answer
MEDIA_ANSWER = "I see red and hear a beep."


@pytest.fixture(scope="module")
def media_server(tmp_path_factory) -> Iterator[Server]:
    pytest.importorskip("mlx_vlm", reason="multimodal input needs mlx-vlm")
    pytest.importorskip("lib_mlx.server.multipart", reason="multipart uploads are not in this tree yet")
    from lib_mlx.tiny_models.multimodal import build_gemma4_multimodal

    path = build_gemma4_multimodal(tmp_path_factory.mktemp("mm") / "gemma4-mm", answer=MEDIA_ANSWER, reasoning=MEDIA_REASONING)
    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(path)))
        yield Server(runtime, handle, runtime.start_server(handle, MlxServerConfig()))
    finally:
        runtime.close()


def test_attached_image_and_audio_go_up_as_multipart(media_server, tab, tmp_path):
    from lib_mlx.tiny_models.multimodal import png_bytes, tone, wav_bytes

    server = media_server
    page = open_page(tab, server)
    assert page.is_visible("#attach")  # the model sees and hears
    image, audio = tmp_path / "red.png", tmp_path / "beep.wav"
    image.write_bytes(png_bytes())
    audio.write_bytes(wav_bytes(tone(0.5)))
    page.set_input_files("#file", [str(image), str(audio)])
    assert page.locator("#attachments .chip").count() == 2

    send(page, "What do you see and hear?")
    turn = wait_turns(page)
    assert turn.locator(".answer").inner_text() == MEDIA_ANSWER
    assert page.locator(".turn.user img.file").count() == 1
    assert page.locator(".turn.user audio.file").count() == 1
    assert page.locator("#attachments .chip").count() == 0

    (post,) = tab.chat_posts()
    # Chromium does not hand a body with files to Playwright; the server says what arrived.
    assert post.headers["content-type"].startswith("multipart/form-data; boundary=")
    multimodal = server.runtime.server_status(server.handle)["multimodal"]
    assert multimodal["media_requests"] == 1, multimodal
    # Lazy towers load for the media a request carries: both did, so both files went up.
    assert multimodal["towers"]["vision"]["resident"] and multimodal["towers"]["audio"]["resident"], multimodal
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat_page_media.png"))
    tab.assert_only(server)
