"""Loading one model sharded over several processes with MLX's own distributed layer.

``mlx.launch`` (ring over TCP or Thunderbolt, MPI, or NCCL on CUDA) starts one process per
rank; each loads its shard with mlx-lm's ``sharded_load``: tensor parallelism through
``model.shard`` (every rank holds a slice of every layer) or pipeline stages through
``model.model.pipeline`` (every rank holds some of the layers). How the ranks then keep in step
while generating is ``core.lockstep``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ModelLoadError

ShardMode = Literal["tensor", "pipeline"]


@dataclass
class DistributedInfo:
    """What ``server_status`` says about a sharded model, and what the engine needs."""

    group: Any  # mx.distributed.Group
    mode: ShardMode
    rank: int
    size: int
    backend: str
    timeout_s: float = 60.0
    # Each rank's MLX memory after loading (and after each request), rank order.
    rank_memory: list[dict[str, int]] = field(default_factory=list)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "rank": self.rank,
            "ranks": self.size,
            "backend": self.backend,
            "timeout_s": self.timeout_s,
            "rank_memory": [dict(m, rank=i) for i, m in enumerate(self.rank_memory)],
        }


def init_group(backend: str = "any") -> Any:
    """The world group that ``mlx.launch`` set up; refuses a lone process (size 1), which would
    silently serve an unsharded model while the user believes it sharded."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        raise ModelLoadError("this MLX build has no distributed backend")
    group = mx.distributed.init(strict=False, backend=backend)
    if group.size() < 2:
        raise ModelLoadError(
            "distributed serving needs at least 2 ranks: start it under `mlx.launch` "
            "(or `lib-mlx launch -n 2 -- serve ...`)"
        )
    return group


def supported_modes(model: Any, config: dict[str, Any], ranks: int) -> dict[ShardMode, str | None]:
    """Each sharding mode and why this model cannot use it over ``ranks`` ranks (None: it can).
    mlx-lm splits attention heads and MLP rows for tensor parallelism, so both head counts must
    divide evenly; pipelining needs a layer per rank."""
    text = config.get("text_config") or config
    why: dict[ShardMode, str | None] = {}
    if not hasattr(model, "shard"):
        why["tensor"] = "mlx-lm has no tensor parallelism for this architecture"
    else:
        heads = [text.get(k) for k in ("num_attention_heads", "num_key_value_heads") if isinstance(text.get(k), int)]
        uneven = [h for h in heads if h % ranks]
        why["tensor"] = f"its head counts {heads} do not divide over {ranks} ranks" if uneven else None
    if not hasattr(getattr(model, "model", None), "pipeline"):
        why["pipeline"] = "mlx-lm has no pipeline stages for this architecture"
    else:
        layers = text.get("num_hidden_layers")
        short = isinstance(layers, int) and layers < ranks
        why["pipeline"] = f"its {layers} layers are fewer than {ranks} ranks" if short else None
    return why


def choose_mode(model: Any, config: dict[str, Any], ranks: int, requested: str) -> ShardMode:
    why = supported_modes(model, config, ranks)
    if requested in ("auto", "", None):
        for mode, reason in why.items():  # tensor first: every rank works on every token
            if reason is None:
                return mode
        reasons = "; ".join(f"{mode}: {reason}" for mode, reason in why.items())
        raise ModelLoadError(f"this model cannot be sharded over {ranks} ranks ({reasons})")
    reason = why.get(requested)  # type: ignore[call-overload]
    if reason is not None:
        raise ModelLoadError(f"this model cannot use {requested} sharding: {reason}")
    return requested  # type: ignore[return-value]


def load_sharded(
    path: Path, requested_mode: str, backend: str = "any", timeout_s: float = 60.0
) -> tuple[Any, Any, DistributedInfo]:
    """Load this rank's shard of the model at ``path``: (model, tokenizer, info)."""
    from mlx_lm.utils import load_model, sharded_load

    group = init_group(backend)
    lazy, config = load_model(path, lazy=True, strict=False)
    mode = choose_mode(lazy, config, group.size(), requested_mode)
    del lazy
    if mode == "tensor":
        model, tokenizer = sharded_load(str(path), None, group)
    else:
        model, tokenizer = sharded_load(str(path), group, None)
    info = DistributedInfo(group, mode, group.rank(), group.size(), backend, timeout_s)
    info.rank_memory = gather_memory(group)
    return model, tokenizer, info


def gather_memory(group: Any) -> list[dict[str, int]]:
    """Every rank's MLX active and peak bytes (a collective: all ranks call it together)."""
    import mlx.core as mx

    # int32 holds byte counts only up to 2 GiB: send MiB and the remainder apart.
    active, peak = int(mx.get_active_memory()), int(mx.get_peak_memory())
    mine = mx.array([active >> 20, active & 0xFFFFF, peak >> 20, peak & 0xFFFFF], dtype=mx.int32)
    every = mx.distributed.all_gather(mine[None], group=group, stream=mx.cpu)
    mx.eval(every)
    rows = every.tolist()
    return [{"active_bytes": (a << 20) + b, "peak_bytes": (c << 20) + d} for a, b, c, d in rows]


__all__ = ["DistributedInfo", "ShardMode", "choose_mode", "gather_memory", "load_sharded", "supported_modes"]
