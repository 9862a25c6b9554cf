"""Timing hooks for ``bench.first_token``: wrap the stages of a chat request in the server
process and append ``{"stage", "t"}`` lines (``time.perf_counter``, the system-wide monotonic
clock on Linux and macOS) to the file named by ``LIB_MLX_STAGE_TRACE``. Benchmark-only: the
product has no tracing switch of its own. Only public functions and methods are wrapped (a
request run alone: ``core.single.run``; the prompt cache's ``fetch``; ``RequestStream.add``;
``Generation.deliver``)."""

from __future__ import annotations

import functools
import inspect
import json
import os
import threading
import time
from typing import Any

_lock = threading.Lock()
_seen: set[tuple[int, str]] = set()


def stamp(stage: str, key: int = 0, once: bool = True) -> None:
    t = time.perf_counter()
    if once:
        with _lock:
            if (key, stage) in _seen:
                return
            _seen.add((key, stage))
    path = os.environ.get("LIB_MLX_STAGE_TRACE")
    if path:
        with _lock, open(path, "a") as f:
            f.write(json.dumps({"stage": stage, "t": t}) + "\n")


def _wrap(owner: Any, name: str, before: str | None = None, after: str | None = None, key: Any = None) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        k = key(*args) if key else 0
        if before:
            stamp(before, k)
        result = original(*args, **kwargs)
        if after:
            stamp(after, k)
        return result

    if isinstance(inspect.getattr_static(owner, name), staticmethod):
        wrapper = staticmethod(wrapper)  # type: ignore[assignment]
    setattr(owner, name, wrapper)


def _wrap_async(owner: Any, name: str, before: str | None = None, after: str | None = None) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            stamp(before)
        result = await original(*args, **kwargs)
        if after:
            stamp(after)
        return result

    setattr(owner, name, wrapper)


def install() -> None:
    """Patch before ``lib_mlx.server.app`` binds the route (it imports the handler by name)."""
    from lib_mlx.core import decode, prompt_cache, request, single
    from lib_mlx.server import context
    from lib_mlx.server.chat import encoder, serving

    def reset() -> None:
        with _lock:
            _seen.clear()

    original_handler = serving.create_chat_completion

    async def handler(request: Any) -> Any:
        reset()
        stamp("1 handler entered")
        return await original_handler(request)

    serving.create_chat_completion = handler
    from lib_mlx.server import app

    app.create_chat_completion = handler  # build_app binds the route by this name
    _wrap(context.ServerContext, "parse", after="2 body parsed")
    _wrap_async(context.ServerContext, "render", after="3 rendered (thread hop back)")
    _wrap(context.ServerContext, "submit", after="4 submitted")
    _wrap(single, "run", before="5 engine picked up the job")
    _wrap(prompt_cache.PromptCache, "fetch", after="6 prompt cache looked up")
    _wrap(decode.RequestStream, "add", before="7 first token sampled")
    _wrap(request.Generation, "deliver", after="8 first events handed to the loop")
    _wrap(encoder.ChatChunkEncoder, "encode", before="9 first event reached the encoder")
