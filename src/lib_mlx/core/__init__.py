"""Everything that touches MLX. Knows nothing about HTTP."""

from __future__ import annotations

import asyncio

from ..config import MlxModelConfig
from .engine import Arrival, Engine, Generation, SamplingParams
from .engine_options import EngineOptions, build_options
from .loader import LoadedModel, load
from .prompt import ChatPrompt, RenderedPrompt, render


class MlxCore:
    """One loaded model and the worker that generates with it."""

    def __init__(self, loaded: LoadedModel, queue_limit: int = 1, options: EngineOptions | None = None) -> None:
        self.loaded = loaded
        self.engine = Engine(loaded, queue_limit=queue_limit, options=options)

    @classmethod
    def load(cls, config: MlxModelConfig) -> "MlxCore":
        loaded = load(config)
        return cls(loaded, options=build_options(config, loaded))

    def kv_status(self) -> dict:
        """KV-cache bytes in use: running requests' caches and the prompt cache's (in memory
        and on disk), with what KV quantization and speculation do (plain values)."""
        engine = self.engine
        options = engine.options.status()
        disk = options["disk_cache"]
        return {
            "live_bytes": engine.kv_live_bytes,
            "prompt_cache_bytes": engine.prompt_cache.nbytes,
            "prompt_cache_entries": len(engine.prompt_cache),
            "disk_cache_bytes": disk["bytes"] if disk else 0,
            **options,
        }

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

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


__all__ = ["Arrival", "ChatPrompt", "Generation", "MlxCore", "RenderedPrompt", "SamplingParams"]
