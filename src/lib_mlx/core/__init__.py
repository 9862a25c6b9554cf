"""Everything that touches MLX. Knows nothing about HTTP."""

from __future__ import annotations

import asyncio

from ..config import MlxModelConfig
from .engine import Arrival, Engine, Generation, SamplingParams
from .loader import LoadedModel, load
from .processors import check_request
from .prompt import ChatPrompt, RenderedPrompt, render


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

    def check(self, prompt: RenderedPrompt, params: SamplingParams) -> None:
        """Refuse (``InvalidRequestError`` naming the field) what the request's logits processors
        cannot apply: a schema the grammar engine cannot enforce, a ``logit_bias`` id outside
        the vocabulary. Compiles the grammar into the model's cache; may take a while for the
        first grammar of a large vocabulary, so call it off the event loop."""
        check_request(self.loaded, prompt, params)

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
