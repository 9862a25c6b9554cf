"""Everything that touches MLX. Knows nothing about HTTP.

The runtime and the server use core through ``MlxCore`` (the contract: ``InferenceCore``) and
the plain values it takes and gives: ``ChatPrompt`` / ``RenderedPrompt``, ``SamplingParams``,
the ``Generation`` handle and the events in ``core.events``.

The names below are imported on first use: importing a light module of core (``core.failures``
for the C ABI's error bodies, ``core.events``) does not load MLX, mlx-lm and transformers
(seconds).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .facade import Capabilities, InferenceCore, MlxCore
    from .prompt import ChatPrompt, RenderedPrompt
    from .progress import LoadCancelled, LoadProgress
    from .request import Arrival, Generation, SamplingParams
    from .stats import EngineStats

_EXPORTS = {
    "Arrival": ".request",
    "Capabilities": ".facade",
    "ChatPrompt": ".prompt",
    "EngineStats": ".stats",
    "Generation": ".request",
    "InferenceCore": ".facade",
    "LoadCancelled": ".progress",
    "LoadProgress": ".progress",
    "MlxCore": ".facade",
    "RenderedPrompt": ".prompt",
    "SamplingParams": ".request",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "Arrival",
    "Capabilities",
    "ChatPrompt",
    "EngineStats",
    "Generation",
    "InferenceCore",
    "LoadCancelled",
    "LoadProgress",
    "MlxCore",
    "RenderedPrompt",
    "SamplingParams",
]
