"""Serving one model sharded over several processes with MLX's own distributed layer.

``mlx.launch`` (ring over TCP or Thunderbolt, MPI, or NCCL on CUDA) starts one process per
rank; each loads its shard with mlx-lm's ``sharded_load`` (tensor parallelism through
``model.shard``, or pipeline stages through ``model.model.pipeline``). Rank 0 alone serves HTTP
and owns the lifecycle; the other ranks follow it in lockstep, because every forward pass of a
sharded model is a collective that all ranks must enter with the same inputs in the same order.

The lockstep protocol rides on the same collectives (no transport of our own):

- ``Lockstep.share(payload)`` -- rank 0 hands every rank one request (its prompt tokens and
  sampling settings, as JSON bytes), or the word to stop; the others wait for it.
- ``Lockstep.agree(go_on)`` -- after each token rank 0 alone decides whether generation goes
  on (a stop string, a budget, a cancelled client, a full answer) and every rank learns it, so
  that all ranks run exactly the same forward passes.

Everything else -- the engine, its sampler, the prompt cache -- is the same code on every rank,
fed the same requests in the same order, so every rank makes the same decisions. Sampling is
seeded per request by rank 0 so that temperature > 0 draws the same tokens everywhere; logits
are bitwise equal on all ranks (all-reduce and all-gather give every rank the same result).

A rank that dies makes the next collective raise on the others ("connection to a peer was
lost"); a rank that hangs is caught by ``Watchdog``, which fails open requests after a bounded
time instead of letting rank 0 hang with them.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

log = logging.getLogger("lib_mlx.distributed")

ShardMode = Literal["tensor", "pipeline"]
# Rank 0's messages to the other ranks through ``Lockstep.share``.
_STOP = b""


@dataclass
class DistributedInfo:
    """What ``server_status`` says about a sharded model, and what the engine needs."""

    group: Any  # mx.distributed.Group
    mode: ShardMode
    rank: int
    size: int
    backend: str
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
            "rank_memory": [dict(m, rank=i) for i, m in enumerate(self.rank_memory)],
        }


def init_group(backend: str = "any") -> Any:
    """The world group that ``mlx.launch`` set up; refuses a lone process (size 1), which would
    silently serve an unsharded model while the user believes it sharded."""
    import mlx.core as mx

    from ..errors import ModelLoadError

    if not mx.distributed.is_available():
        raise ModelLoadError("this MLX build has no distributed backend")
    group = mx.distributed.init(strict=False, backend=backend)
    if group.size() < 2:
        raise ModelLoadError(
            "distributed serving needs at least 2 ranks: start it under `mlx.launch` "
            "(or `lib-mlx launch -n 2 -- serve ...`)"
        )
    return group


def supported_modes(model: Any) -> list[ShardMode]:
    """The sharding modes a (lazily loaded) mlx-lm model implements, preferred first."""
    modes: list[ShardMode] = []
    if hasattr(model, "shard"):
        modes.append("tensor")
    if hasattr(getattr(model, "model", None), "pipeline"):
        modes.append("pipeline")
    return modes


def choose_mode(model: Any, requested: str) -> ShardMode:
    from ..errors import ModelLoadError

    modes = supported_modes(model)
    if requested in ("auto", "", None):
        if not modes:
            raise ModelLoadError("this model's architecture supports neither tensor nor pipeline sharding in mlx-lm")
        return modes[0]
    if requested not in modes:
        have = ", ".join(modes) or "none"
        raise ModelLoadError(f"this model does not support {requested} sharding (supported: {have})")
    return requested  # type: ignore[return-value]


def load_sharded(path: Path, requested_mode: str, backend: str = "any") -> tuple[Any, Any, DistributedInfo]:
    """Load this rank's shard of the model at ``path``: (model, tokenizer, info)."""
    import mlx.core as mx
    from mlx_lm.utils import load_model, sharded_load

    group = init_group(backend)
    lazy, _ = load_model(path, lazy=True, strict=False)
    mode = choose_mode(lazy, requested_mode)
    del lazy
    if mode == "tensor":
        model, tokenizer = sharded_load(str(path), None, group)
    else:
        model, tokenizer = sharded_load(str(path), group, None)
    info = DistributedInfo(group=group, mode=mode, rank=group.rank(), size=group.size(), backend=backend)
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


class Lockstep:
    """Rank 0's word to the other ranks, through MLX collectives (see the module doc)."""

    def __init__(self, info: DistributedInfo) -> None:
        self.info = info

    def share(self, payload: bytes | None = None) -> bytes:
        """Rank 0 passes ``payload`` (``b""`` means stop); every rank returns rank 0's bytes."""
        import mlx.core as mx

        group, leader = self.info.group, self.info.is_leader
        data = (payload or b"") if leader else b""
        size = mx.distributed.all_sum(mx.array([len(data) if leader else 0], dtype=mx.int32), group=group, stream=mx.cpu)
        n = int(size.item())
        if n == 0:
            return _STOP
        buf = mx.array(list(data), dtype=mx.uint8) if leader else mx.zeros((n,), dtype=mx.uint8)
        # Summing uint8 with zeros from every other rank is exact: rank 0's bytes arrive as sent.
        got = mx.distributed.all_sum(buf, group=group, stream=mx.cpu)
        mx.eval(got)
        return bytes(got.tolist()) if not leader else data

    def agree(self, go_on: bool) -> bool:
        """After a token: rank 0's decision whether generation goes on, known to every rank."""
        import mlx.core as mx

        flag = mx.array([1 if (go_on and self.info.is_leader) else 0], dtype=mx.int32)
        return bool(mx.distributed.all_sum(flag, group=self.info.group, stream=mx.cpu).item())


def encode_request(message: dict[str, Any]) -> bytes:
    return json.dumps(message, separators=(",", ":")).encode()


def decode_request(payload: bytes) -> dict[str, Any]:
    return json.loads(payload.decode())


class Watchdog:
    """Fails the open requests of rank 0 when a collective does not come back in time.

    A rank that dies makes collectives raise at once; a rank that is stopped (or a network that
    silently drops) would block rank 0 inside MLX forever. The engine calls ``enter()`` before a
    collective-bearing step and ``leave()`` after it; a monitor thread calls ``on_stall`` once
    when a step has been open for longer than ``timeout_s``. Rank 0 is then marked failed: its
    engine thread may stay blocked inside MLX, but every request gets an error and the server
    answers 503 instead of hanging.
    """

    def __init__(self, timeout_s: float, on_stall: Callable[[float], None]) -> None:
        self.timeout_s = timeout_s
        self._on_stall = on_stall
        self._since: float | None = None
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self.stalled = False
        self._thread = threading.Thread(target=self._run, name="lib_mlx-distributed-watchdog", daemon=True)
        self._thread.start()

    def enter(self) -> None:
        with self._lock:
            self._since = time.monotonic()

    def leave(self) -> None:
        with self._lock:
            self._since = None

    def close(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while not self._stopped.wait(min(1.0, self.timeout_s / 4)):
            with self._lock:
                since = self._since
            if since is not None and not self.stalled and time.monotonic() - since > self.timeout_s:
                self.stalled = True
                try:
                    self._on_stall(time.monotonic() - since)
                except Exception:  # pragma: no cover - a failing callback must not kill the monitor
                    log.exception("distributed watchdog callback failed")
