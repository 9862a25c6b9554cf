"""The one door into core: what the runtime and the server may call.

``InferenceCore`` is the contract, a ``typing.Protocol``: the HTTP layer is typed against it
(``server.context.ServerContext.core``), so it can be driven by a small in-memory core in tests
and the engine can change behind it. ``MlxCore`` is the real one: a loaded model and the engine
that generates with it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from ._limits import import_mlx_lm

import_mlx_lm()  # before anything below imports mlx-lm: keeps the host's RLIMIT_NOFILE

from ..config import DEFAULT_PROMPT_CACHE_BYTES, MlxModelConfig  # noqa: E402
from ..errors import InvalidRequestError, LibMlxError  # noqa: E402
from .engine import Engine  # noqa: E402
from .engine_options import EngineOptions, build_options  # noqa: E402
from .loader import LoadedModel, load  # noqa: E402
from .memory_guard import check_request_fits  # noqa: E402
from .progress import LoadProgress  # noqa: E402
from .prompt import ChatPrompt, RenderedPrompt, render  # noqa: E402
from .request import Arrival, Generation, SamplingParams  # noqa: E402
from .stats import EngineStats  # noqa: E402


@dataclass(frozen=True)
class Capabilities:
    """What the loaded model can take and do, for the server to honour or refuse by name."""

    media: frozenset[str] = frozenset()  # a subset of {"image", "audio"}
    thinking: bool = False  # the model has reasoning markers (its family's parser knows them)
    thinking_default: bool = True  # whether a request that says nothing thinks


@runtime_checkable
class InferenceCore(Protocol):
    """What the server and the runtime need of a loaded model."""

    @property
    def model_id(self) -> str: ...

    @property
    def context_length(self) -> int: ...

    @property
    def capabilities(self) -> Capabilities: ...

    @property
    def in_flight(self) -> int:
        """Requests running plus waiting."""
        ...

    @property
    def queue_limit(self) -> int:
        """The most requests in flight; more are refused (``QueueFullError``)."""
        ...

    @queue_limit.setter
    def queue_limit(self, value: int) -> None: ...

    def render(self, prompt: ChatPrompt) -> RenderedPrompt:
        """Messages -> tokens through the model's chat template (thread-safe; may be slow)."""
        ...

    def check(self, prompt: RenderedPrompt, params: SamplingParams) -> None:
        """Refuse (``InvalidRequestError`` naming the field) what the request's logits
        processors cannot apply -- a schema the grammar engine cannot enforce, a ``logit_bias``
        id outside the vocabulary -- before it is queued. Compiles its grammar (cached); the
        first grammar of a large vocabulary takes a while: call it off the event loop."""
        ...

    def count_tokens(self, prompt: RenderedPrompt) -> int:
        """The prompt's length as the model reads it (media expanded to their soft tokens)."""
        ...

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        """Plain text -> token ids (``add_special_tokens``: a BOS where the tokenizer adds one)."""
        ...

    def detokenize(self, tokens: list[int]) -> str:
        """Token ids -> text, special tokens included. Raises ``InvalidRequestError`` naming
        the first id outside the vocabulary."""
        ...

    def announce(self) -> Arrival | None:
        """A request is on its way (its prompt renders); pass the result to ``submit``."""
        ...

    def submit(
        self,
        prompt: RenderedPrompt,
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        arrival: Arrival | None = None,
    ) -> Generation:
        """Queue a generation; its events arrive through the returned handle (on ``loop`` when
        given, else for synchronous iteration). Raises ``QueueFullError`` / ``CancelledError``,
        and ``ContextLengthExceededError`` for a request whose KV cache would not fit (before
        any work)."""
        ...

    def cancel_all(self) -> None: ...

    def status(self) -> dict[str, Any]:
        """The model's part of ``server_status``: ``{"model": {...}, "multimodal": ...}``."""
        ...

    def stats(self) -> EngineStats: ...


class MlxCore:
    """One loaded model and the worker that generates with it (the real ``InferenceCore``)."""

    def __init__(
        self,
        loaded: LoadedModel,
        queue_limit: int = 1,
        *,
        prompt_cache_bytes: int = DEFAULT_PROMPT_CACHE_BYTES,
        options: EngineOptions | None = None,
    ) -> None:
        self.loaded = loaded
        # KV quantization, the disk prompt cache and speculation the load config asked for.
        self.options = options if options is not None else EngineOptions()
        self._engine = Engine(loaded, queue_limit=queue_limit, prompt_cache_bytes=prompt_cache_bytes, options=self.options)

    @classmethod
    def load(cls, config: MlxModelConfig, queue_limit: int = 1, progress: LoadProgress | None = None) -> "MlxCore":
        """Load ``config``'s model, reporting to ``progress`` (its ``cancel()`` stops the load
        between steps and during a download: ``LoadCancelled``)."""
        progress = progress or LoadProgress()
        loaded = load(config, progress)
        progress.enter("warmup")
        return cls(loaded, queue_limit, prompt_cache_bytes=config.prompt_cache_bytes, options=build_options(config, loaded))

    def kv_status(self) -> dict[str, Any]:
        """KV-cache bytes in use: running requests' caches and the prompt cache's (in memory
        and on disk), with what KV quantization, the disk cache and speculation do."""
        engine = self._engine
        options = self.options.status()
        disk = options["disk_cache"]
        return {
            "live_bytes": engine.kv_live_bytes,
            "prompt_cache_bytes": engine.prompt_cache.nbytes,
            "prompt_cache_entries": len(engine.prompt_cache),
            "disk_cache_bytes": disk["bytes"] if disk else 0,
            **options,
        }

    # what the model is -----------------------------------------------------------------
    @property
    def model_id(self) -> str:
        return self.loaded.model_id

    @property
    def context_length(self) -> int:
        return self.loaded.context_length

    @property
    def capabilities(self) -> Capabilities:
        loaded = self.loaded
        return Capabilities(
            media=loaded.capabilities,
            thinking=bool(loaded.parser_spec.think_start),
            thinking_default=loaded.thinking_enabled,
        )

    def status(self) -> dict[str, Any]:
        loaded = self.loaded
        failure = self._engine.failure
        model: dict[str, Any] = {
            "status": "ready" if failure is None else "failed",
            "model_id": loaded.model_id,
            "model_path": str(loaded.model_path),
            "model_type": loaded.model_type,
            "context_length": loaded.context_length,
            "thinking_enabled": loaded.thinking_enabled,
            "family": loaded.parser_spec.family,  # detected, or the load config's
        }
        if failure is not None:
            model["error"] = failure.to_abi()["error"]
        if loaded.distributed is not None:
            # Sharded over several processes: the mode, the ranks and each rank's memory.
            model["distributed"] = loaded.distributed.to_dict()
        return {
            "model": model,
            # Vision/audio towers: which are resident and the bytes they take (null for a
            # text-only model).
            "multimodal": loaded.vlm.status() if loaded.vlm is not None else None,
            # KV-cache bytes: running requests and the prompt cache (memory, disk) apart.
            "kv_cache": self.kv_status(),
        }

    # the queue -------------------------------------------------------------------------
    @property
    def in_flight(self) -> int:
        return self._engine.in_flight

    @property
    def queue_limit(self) -> int:
        return self._engine.queue_limit

    @queue_limit.setter
    def queue_limit(self, value: int) -> None:
        self._engine.queue_limit = int(value)

    def stats(self) -> EngineStats:
        return self._engine.stats()

    # a model sharded over several processes --------------------------------------------
    @property
    def rank(self) -> int:
        """This process's rank in a distributed group (0 alone serves); 0 when not sharded."""
        info = self.loaded.distributed
        return info.rank if info is not None else 0

    def follow(self) -> LibMlxError | None:
        """A rank other than 0: run rank 0's requests until it stops; why the group failed,
        if it did."""
        while not self._engine.follower_done(timeout=1.0):
            pass
        return self._engine.failure

    def clear_prompt_cache(self) -> None:
        """Drop every kept KV cache (the next request of a conversation prefills it all).
        Call with nothing in flight: the store belongs to the worker."""
        self._engine.prompt_cache.clear()

    # requests --------------------------------------------------------------------------
    def render(self, prompt: ChatPrompt) -> RenderedPrompt:
        return render(self.loaded, prompt)

    def check_fits(self, n_prompt: int, max_tokens: int | None) -> None:
        """400 ``context_length_exceeded`` before any work when the request's KV cache would
        pass the per-request budget (``core.memory_guard``); ``submit`` checks it."""
        loaded = self.loaded
        if max_tokens is not None and loaded.declared_context_length:
            # max_tokens beyond the model's context is clamped to it (not refused)
            max_tokens = min(max_tokens, max(loaded.declared_context_length - n_prompt, 1))
        check_request_fits(loaded.kv_bytes_per_token, loaded.kv_budget_bytes, n_prompt, max_tokens)

    def count_tokens(self, prompt: RenderedPrompt) -> int:
        """The prompt's length as the model reads it: media expanded to their soft tokens
        (the processor only; no tower runs)."""
        if not prompt.media or self.loaded.vlm is None:
            return len(prompt.tokens)
        return self.loaded.vlm.count_tokens(prompt.text, prompt.media)

    def check(self, prompt: RenderedPrompt, params: SamplingParams) -> None:
        from .processors import check_request

        check_request(self.loaded, prompt, params)

    def tokenize(self, text: str, *, add_special_tokens: bool = True) -> list[int]:
        return list(self.loaded.tokenizer.encode(text, add_special_tokens=add_special_tokens))

    def detokenize(self, tokens: list[int]) -> str:
        tokenizer = self.loaded.tokenizer
        size = len(getattr(tokenizer, "_tokenizer", tokenizer))
        bad = next((i for i, t in enumerate(tokens) if not 0 <= t < size), None)
        if bad is not None:
            raise InvalidRequestError(
                f"token id {tokens[bad]} is outside the vocabulary (0..{size - 1})", param=f"tokens[{bad}]"
            )
        return tokenizer.decode(tokens, skip_special_tokens=False)

    def announce(self) -> Arrival | None:
        """A request is on its way (see ``Engine.announce``); pass the result to ``submit``."""
        return self._engine.announce()

    def submit(
        self,
        prompt: RenderedPrompt,
        params: SamplingParams,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        arrival: Arrival | None = None,
    ) -> Generation:
        self.check_fits(len(prompt.tokens), params.max_tokens)
        return self._engine.submit(prompt, params, loop=loop, arrival=arrival)

    def cancel_all(self) -> None:
        self._engine.cancel_all()

    def close(self) -> None:
        self._engine.close()
        self.loaded = None  # type: ignore[assignment]


__all__ = ["Capabilities", "InferenceCore", "MlxCore"]
