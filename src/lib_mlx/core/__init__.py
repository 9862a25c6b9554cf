"""Everything that touches MLX. Knows nothing about HTTP."""

from __future__ import annotations

import asyncio

from ..config import MlxModelConfig
from .engine import Arrival, Engine, Generation, SamplingParams
from .loader import LoadedModel, load
from .memory_guard import check_request_fits
from .progress import LoadCancelled, LoadProgress
from .prompt import ChatPrompt, RenderedPrompt, render


class MlxCore:
    """One loaded model and the worker that generates with it."""

    def __init__(self, loaded: LoadedModel, queue_limit: int = 1) -> None:
        self.loaded = loaded
        self.engine = Engine(loaded, queue_limit=queue_limit)

    @classmethod
    def load(cls, config: MlxModelConfig, progress: LoadProgress | None = None) -> "MlxCore":
        progress = progress or LoadProgress()
        loaded = load(config, progress)
        progress.enter("warmup")
        return cls(loaded)

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def in_flight(self) -> int:
        return self.engine.in_flight

    @property
    def queue_limit(self) -> int:
        return self.engine.queue_limit

    @queue_limit.setter
    def queue_limit(self, value: int) -> None:
        self.engine.queue_limit = int(value)

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    def check_request(self, n_prompt: int, max_tokens: int | None) -> None:
        """400 ``context_length_exceeded`` before any work when the request's KV cache would
        pass the per-request budget (``core.memory_guard``)."""
        loaded = self.loaded
        if max_tokens is not None and loaded.declared_context_length:
            # max_tokens beyond the model's context is clamped to it (not refused)
            max_tokens = min(max_tokens, max(loaded.declared_context_length - n_prompt, 1))
        check_request_fits(loaded.kv_bytes_per_token, loaded.kv_budget_bytes, n_prompt, max_tokens)

    def render(self, prompt: ChatPrompt) -> RenderedPrompt:
        return render(self.loaded, prompt)

    def count_tokens(self, prompt: RenderedPrompt) -> int:
        """The prompt's length as the model reads it: media expanded to their soft tokens
        (the processor only; no tower runs)."""
        if not prompt.media or self.loaded.vlm is None:
            return len(prompt.tokens)
        return self.loaded.vlm.count_tokens(prompt.text, prompt.media)

    def announce(self) -> Arrival | None:
        """A request is on its way (see ``Engine.announce``); pass the result to ``submit``."""
        return self.engine.announce()

    def submit(
        self,
        prompt: RenderedPrompt,
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        arrival: Arrival | None = None,
    ) -> Generation:
        return self.engine.submit(prompt, params, loop=loop, arrival=arrival)

    def close(self) -> None:
        self.engine.close()
        self.loaded = None  # type: ignore[assignment]


__all__ = [
    "Arrival",
    "ChatPrompt",
    "Generation",
    "LoadCancelled",
    "LoadProgress",
    "MlxCore",
    "RenderedPrompt",
    "SamplingParams",
]
