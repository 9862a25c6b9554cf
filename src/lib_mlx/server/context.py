"""What every route needs: the model's core, this server's settings, and the generations it
has in flight (so that stopping the server ends them)."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pydantic
from starlette.requests import Request

from ..config import MlxServerConfig
from ..core import Generation, MlxCore, RenderedPrompt, SamplingParams
from ..errors import (
    ContextLengthExceededError,
    InvalidJsonError,
    InvalidRequestError,
    ModelNotFoundError,
    PayloadTooLargeError,
)
from .errors import from_validation_error

_M = TypeVar("_M", bound=pydantic.BaseModel)


@dataclass
class ServerContext:
    core: MlxCore
    settings: MlxServerConfig
    model_id: str
    api_key: str | None
    generations: set[Generation] = field(default_factory=set)
    ready: bool = True

    # request helpers --------------------------------------------------------------------
    async def read_body(self, request: Request) -> bytes:
        """The body, refusing more than ``max_body_bytes`` (413) without reading it all."""
        limit = self.settings.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise PayloadTooLargeError(f"request body is larger than the {limit}-byte limit")
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise PayloadTooLargeError(f"request body is larger than the {limit}-byte limit")
            chunks.append(chunk)
        return b"".join(chunks)

    async def read_json(self, request: Request) -> dict[str, Any]:
        body = await self.read_body(request)
        try:
            data = json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidJsonError("request body is not valid UTF-8") from None
        except ValueError as exc:
            raise InvalidJsonError(f"request body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise InvalidRequestError("request body must be a JSON object")
        return data

    @staticmethod
    def parse(model: type[_M], data: dict[str, Any]) -> _M:
        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            raise from_validation_error(exc) from None

    def check_model(self, requested: str | None) -> None:
        if requested and requested not in (self.model_id, self.core.model_id):
            raise ModelNotFoundError(f"The model '{requested}' does not exist; this server serves '{self.model_id}'.", param="model")

    def check_context(self, rendered: RenderedPrompt) -> None:
        n, limit = len(rendered.tokens), self.core.context_length
        if n >= limit:
            raise ContextLengthExceededError(
                f"This model's maximum context length is {limit} tokens, but the prompt has {n} tokens.",
                param="messages",
            )

    async def render(self, prompt: Any) -> RenderedPrompt:
        return await asyncio.to_thread(self.core.render, prompt)

    def submit(self, rendered: RenderedPrompt, params: SamplingParams) -> Generation:
        generation = self.core.submit(rendered, params, loop=asyncio.get_running_loop())
        self.generations.add(generation)
        return generation

    def release(self, generation: Generation) -> None:
        generation.cancel()  # no-op when finished; stops the worker when the client left early
        self.generations.discard(generation)

    def cancel_all(self) -> None:
        for generation in list(self.generations):
            generation.cancel()
