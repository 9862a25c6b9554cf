"""The memory guard: refuse a model that cannot fit, and a request whose KV cache cannot.

Figures (all documented in the README's "Memory" section):
- *usable memory*: ``memory_budget_bytes`` from the load config where given, else on Apple
  silicon Metal's recommended working set (``mx.device_info()``), else MLX's memory limit
  (``mx.get_memory_limit()``, which follows ``mx.set_memory_limit``), else the system's RAM.
- *available*: usable memory minus what MLX already holds in this process (other models).
- a model *needs* its weight bytes (the ``*.safetensors`` files) plus a margin of
  ``MARGIN_FRACTION`` of them, at least ``MARGIN_MIN_BYTES``: activations, the first KV cache,
  the runtime.
- a request's KV cache is ``kv_bytes_per_token`` x (prompt tokens + ``max_tokens``); the
  per-request budget is ``max_request_kv_bytes`` from the load config, else what is available
  after the load less the margin.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import ContextLengthExceededError, InsufficientMemoryError

MARGIN_FRACTION = 0.10
MARGIN_MIN_BYTES = 256 * 1024 * 1024


def fmt_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def weight_bytes_of_dir(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.safetensors"))


def margin(weights: int) -> int:
    return max(int(weights * MARGIN_FRACTION), MARGIN_MIN_BYTES)


def usable_memory(budget: int | None = None) -> tuple[int, str]:
    """The memory MLX may use here, and where the figure comes from."""
    if budget:
        return int(budget), "memory_budget_bytes"
    import mlx.core as mx

    try:
        info: dict[str, Any] = dict(mx.device_info())
    except Exception:  # noqa: BLE001 - older MLX
        info = {}
    recommended = info.get("max_recommended_working_set_size")
    if isinstance(recommended, int) and recommended > 0:
        return recommended, "Metal's recommended working set"
    try:
        limit = int(mx.get_memory_limit())
    except Exception:  # noqa: BLE001
        limit = 0
    if limit > 0:
        return limit, "MLX's memory limit"
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "system memory"
    except (ValueError, OSError, AttributeError):
        return 0, "unknown"


def in_use() -> int:
    import mlx.core as mx

    return int(mx.get_active_memory())


def check_model_fits(label: str, weights: int, budget: int | None = None) -> None:
    """Raise ``insufficient_memory`` naming both figures when ``weights`` (+ margin) exceed
    the memory available to MLX."""
    usable, source = usable_memory(budget)
    if usable <= 0:
        return
    used = in_use()
    available = max(usable - used, 0)
    need = weights + margin(weights)
    if need > available:
        held = f", {fmt_bytes(used)} of it already in use" if used else ""
        raise InsufficientMemoryError(
            f"model {label} needs about {fmt_bytes(need)} ({fmt_bytes(weights)} of weights + "
            f"{fmt_bytes(need - weights)} margin) but only {fmt_bytes(available)} is available "
            f"({source}: {fmt_bytes(usable)}{held})"
        )


def request_kv_budget(explicit: int | None, budget: int | None = None) -> int:
    """The per-request KV budget: ``explicit`` where given, else what is left after the load."""
    if explicit:
        return int(explicit)
    usable, _ = usable_memory(budget)
    return max(usable - in_use() - MARGIN_MIN_BYTES, 0)


def kv_bytes_per_token(config: dict[str, Any], dtype_bytes: int) -> int:
    """Keys and values of every attention layer for one token (an upper bound for models
    whose sliding-window layers keep fewer)."""
    cfg = {**config, **(config.get("text_config") or {})}
    layers = _int(cfg, "num_hidden_layers", "n_layer", "num_layers")
    heads = _int(cfg, "num_attention_heads", "n_head")
    kv_heads = _int(cfg, "num_key_value_heads") or heads
    head_dim = _int(cfg, "head_dim") or (_int(cfg, "hidden_size", "n_embd") // heads if heads else 0)
    return 2 * layers * kv_heads * head_dim * dtype_bytes


def activation_bytes(model: Any) -> int:
    """Bytes of one element of the model's activations (its first floating parameter's type)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    try:
        for _, value in tree_flatten(model.parameters()):
            if isinstance(value, mx.array) and mx.issubdtype(value.dtype, mx.floating):
                return value.dtype.size
    except Exception:  # noqa: BLE001
        pass
    return 2


def check_request_fits(per_token: int, budget: int, n_prompt: int, max_tokens: int | None) -> None:
    """400 ``context_length_exceeded`` when the request's KV cache would pass ``budget``."""
    if per_token <= 0 or budget <= 0:
        return
    tokens = n_prompt + (max_tokens or 1)
    need = tokens * per_token
    if need > budget:
        limit = budget // per_token
        raise ContextLengthExceededError(
            f"This request's KV cache would take about {fmt_bytes(need)} ({n_prompt} prompt + "
            f"{max_tokens or 1} new tokens at {per_token} bytes a token), over the per-request "
            f"budget of {fmt_bytes(budget)} ({limit} tokens); shorten the prompt or max_tokens.",
            param="max_tokens" if max_tokens and n_prompt < limit else "messages",
        )


def _int(cfg: dict[str, Any], *keys: str) -> int:
    for key in keys:
        value = cfg.get(key)
        if isinstance(value, int) and value > 0:
            return value
    return 0
