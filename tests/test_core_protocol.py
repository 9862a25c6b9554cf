"""The server needs nothing of core but the ``InferenceCore`` protocol (issue 14): the real HTTP
app, on a real socket, driven by the real ``openai`` client, in front of a small in-memory core
that plays a script of events. (A scripted core is for protocol-level tests like these; every
feature also has a test through real MLX generation.)"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from lib_mlx.config import MlxServerConfig
from lib_mlx.core import Capabilities, ChatPrompt, EngineStats, Generation, InferenceCore, RenderedPrompt, SamplingParams
from lib_mlx.core.events import Done, Event, ReasoningDelta, TextDelta, Usage
from lib_mlx.errors import QueueFullError
from lib_mlx.server import ServerHandle


class ScriptedCore:
    """An ``InferenceCore`` without a model: a prompt's tokens are its words; every request
    answers with ``script`` (from a thread, as the real worker does) and then ``Done``."""

    model_id = "scripted"
    context_length = 64
    capabilities = Capabilities(media=frozenset(), thinking=True, thinking_default=False)

    def __init__(self, script: list[Event]) -> None:
        self.script = script
        self.queue_limit = 2
        self.submitted: list[tuple[RenderedPrompt, SamplingParams]] = []
        self.hold = threading.Event()  # cleared: answers wait (to fill the queue)
        self.hold.set()
        self._active: set[Generation] = set()
        self._lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return len(self._active)

    def render(self, prompt: ChatPrompt) -> RenderedPrompt:
        words = " ".join(str(m.get("content")) for m in prompt.messages).split()
        return RenderedPrompt(tokens=list(range(len(words))), text=" ".join(words), thinking=bool(prompt.thinking))

    def check(self, prompt: RenderedPrompt, params: SamplingParams) -> None:
        pass  # no grammar engine here: nothing to refuse

    def count_tokens(self, prompt: RenderedPrompt) -> int:
        return len(prompt.tokens)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(range(len(text.split())))

    def detokenize(self, tokens: list[int]) -> str:
        return " ".join(f"w{t}" for t in tokens)

    def announce(self) -> None:
        return None

    def submit(self, prompt: RenderedPrompt, params: SamplingParams, *, loop: Any = None, arrival: Any = None) -> Generation:
        generation = Generation(loop)
        with self._lock:
            if len(self._active) >= self.queue_limit:
                raise QueueFullError()
            self._active.add(generation)
        self.submitted.append((prompt, params))
        threading.Thread(target=self._play, args=(generation, len(prompt.tokens)), daemon=True).start()
        return generation

    def _play(self, generation: Generation, n_prompt: int) -> None:
        self.hold.wait(30)
        for event in self.script:
            generation.deliver([event])
        with self._lock:
            self._active.discard(generation)
        generation.deliver([Done("stop", Usage(n_prompt, len(self.script)))])

    def cancel_all(self) -> None:
        for generation in list(self._active):
            generation.cancel()

    def status(self) -> dict[str, Any]:
        return {"model": {"status": "ready", "model_id": self.model_id}, "multimodal": None}

    def stats(self) -> EngineStats:
        return EngineStats(requests=len(self.submitted), queue_limit=self.queue_limit, in_flight=self.in_flight)


SCRIPT: list[Event] = [ReasoningDelta("Hmm."), TextDelta("Hello"), TextDelta(", world")]


@pytest.fixture
def scripted() -> Iterator[tuple[ScriptedCore, ServerHandle]]:
    core = ScriptedCore(SCRIPT)
    server = ServerHandle(core, MlxServerConfig(auth="none"))
    yield core, server
    core.hold.set()
    server.stop()


def client(server: ServerHandle) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.info.base_url}/v1", api_key="none", max_retries=0, timeout=30, _strict_response_validation=True)


def test_the_scripted_core_satisfies_the_protocol() -> None:
    assert isinstance(ScriptedCore(SCRIPT), InferenceCore)


def test_chat_and_responses_run_on_the_protocol_alone(scripted) -> None:
    core, server = scripted
    c = client(server)
    reply = c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "say hi"}], max_tokens=5)
    assert reply.choices[0].message.content == "Hello, world"
    assert reply.choices[0].message.model_extra["reasoning_content"] == "Hmm."
    assert reply.usage.prompt_tokens == 2 and reply.usage.completion_tokens == 3
    prompt, params = core.submitted[-1]
    assert params.max_tokens == 5 and prompt.thinking is False  # the core's thinking default

    chunks = list(c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "hi"}], stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == "Hello, world"

    response = c.responses.create(model="scripted", input="say hi again")
    assert response.output_text == "Hello, world" and response.status == "completed"


def test_server_rules_come_from_the_protocol(scripted) -> None:
    core, server = scripted
    base = server.info.base_url
    assert httpx.get(f"{base}/health").json() == {"status": "ok", "model": "scripted", "in_flight": 0}
    page = httpx.get(f"{base}/page/config.json").json()
    assert page["thinking"] == {"supported": True, "default": False} and page["media"] == []
    c = client(server)
    with pytest.raises(openai.BadRequestError) as err:  # context_length from the protocol
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "word " * 80}])
    assert err.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as err:  # capabilities.media is empty
        c.chat.completions.create(
            model="scripted",
            messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}],
        )
    assert err.value.code == "unsupported_media"

    core.hold.clear()  # two answers wait: the queue (queue_limit 2) is full
    held = [threading.Thread(target=c.chat.completions.create, kwargs={"model": "scripted", "messages": [{"role": "user", "content": "x"}]}) for _ in range(2)]
    for t in held:
        t.start()
    deadline = time.monotonic() + 30
    while core.in_flight < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert httpx.get(f"{base}/health").json()["in_flight"] == 2
    with pytest.raises(openai.RateLimitError):
        c.chat.completions.create(model="scripted", messages=[{"role": "user", "content": "one more"}])
    core.hold.set()
    for t in held:
        t.join(30)
    assert core.in_flight == 0
