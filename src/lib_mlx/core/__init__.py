"""Everything that touches MLX. Knows nothing about HTTP."""

from __future__ import annotations

import asyncio

from ._limits import import_mlx_lm

import_mlx_lm()  # first, before anything below imports mlx-lm: keeps the host's RLIMIT_NOFILE

from ..config import MlxModelConfig  # noqa: E402
from .engine import Arrival, Engine, Generation, SamplingParams  # noqa: E402
from .loader import LoadedModel, load  # noqa: E402
from .prompt import ChatPrompt, RenderedPrompt, render  # noqa: E402


class MlxCore:
    """One loaded model and the worker that generates with it."""

    def __init__(self, loaded: LoadedModel, queue_limit: int = 1) -> None:
        self.loaded = loaded
        self.engine = Engine(loaded, queue_limit=queue_limit)

    @classmethod
    def load(cls, config: MlxModelConfig) -> "MlxCore":
        return cls(load(config))

    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    def render(self, prompt: ChatPrompt) -> RenderedPrompt:
        return render(self.loaded, prompt)

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
