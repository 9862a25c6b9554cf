"""How the ranks of a sharded model (``core.sharding``) keep in step while generating.

Rank 0 alone serves HTTP and owns the lifecycle; the other ranks follow it in lockstep, because
every forward pass of a sharded model is a collective that all ranks must enter with the same
inputs in the same order.

The lockstep protocol rides on the same collectives (no transport of our own):

- ``Lockstep.begin(job)`` / ``Lockstep.follow()`` -- rank 0 hands every rank one request (its
  prompt tokens and sampling settings, as JSON bytes), or the word to stop; the others wait.
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

import contextlib
import dataclasses
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import InvalidRequestError, RankFailedError
from .prompt import RenderedPrompt
from .request import Generation, Job, SamplingParams
from .sharding import DistributedInfo, gather_memory

log = logging.getLogger("lib_mlx.distributed")

# Rank 0's word to stop, through ``Lockstep._share``.
_STOP = b""


class Lockstep:
    """Rank 0's word to the other ranks, through MLX collectives (see the module doc). Worker
    thread only: collectives run on the thread that owns the model.

    Rank 0 (the leader) calls ``begin(job)`` before running a request, ``agree(go_on)`` after
    each token and ``end()`` after the request; the other ranks (followers) call ``follow()``
    to get the next request (None: stop), then the same ``agree``/``end``. A collective that
    fails or stalls marks the whole group failed (``failure``): every later request is refused
    with ``RankFailedError`` instead of reaching a broken collective.
    """

    def __init__(self, info: DistributedInfo, timeout_s: float = 60.0) -> None:
        self.info = info
        self.failure: RankFailedError | None = None
        self.in_request = False  # the ranks are inside one request's steps
        self._on_stall: Callable[[RankFailedError], None] | None = None
        self.watchdog = Watchdog(timeout_s, self._stalled) if info.is_leader else None

    # both sides ------------------------------------------------------------------------
    def agree(self, go_on: bool) -> bool:
        """After a token: rank 0's decision whether generation goes on, known to every rank."""
        import mlx.core as mx

        flag = mx.array([1 if (go_on and self.info.is_leader) else 0], dtype=mx.int32)
        with self._collective():
            decided = bool(mx.distributed.all_sum(flag, group=self.info.group, stream=mx.cpu).item())
        if self.watchdog is not None:
            self.watchdog.touch()
        return decided

    def end(self) -> None:
        """After a request: refresh every rank's memory figures (for ``server_status``)."""
        if self.failure is not None or not self.in_request:
            if self.watchdog is not None:
                self.watchdog.leave()
            return
        self.in_request = False
        if self.watchdog is not None:
            self.watchdog.touch()  # a rank that stops now would block this collective too
        with self._collective():
            self.info.rank_memory = gather_memory(self.info.group)
        if self.watchdog is not None:
            self.watchdog.leave()

    # rank 0 ----------------------------------------------------------------------------
    def begin(self, job: Job) -> None:
        """Hand ``job`` to every other rank. A request without a seed gets one here, so that
        every rank draws the same tokens."""
        if self.failure is not None:
            raise self.failure
        if not self.info.is_leader:
            return
        if job.params.seed is None:
            job.params = dataclasses.replace(job.params, seed=secrets.randbits(31))
        payload = encode_job(job)
        if self.watchdog is not None:
            self.watchdog.enter()
        with self._collective():
            self._share(payload)
        self.in_request = True

    def on_stall(self, callback: Callable[[RankFailedError], None]) -> None:
        """``callback(error)`` runs (on the watchdog's thread) when a step stalls."""
        self._on_stall = callback

    def close(self) -> None:
        """Tell the other ranks to stop (rank 0, on the worker thread, when the model unloads)."""
        if self.watchdog is not None:
            self.watchdog.close()
        if self.failure is None and self.info.is_leader:
            try:
                self._share(_STOP)
            except Exception:  # noqa: BLE001 - a rank already gone needs no goodbye
                log.debug("could not tell the other ranks to stop", exc_info=True)

    # the other ranks -------------------------------------------------------------------
    def follow(self) -> Job | None:
        """Wait for rank 0's next request; None when rank 0 stops."""
        with self._collective():
            payload = self._share(None)
        if payload == _STOP:
            return None
        self.in_request = True
        return decode_job(payload)

    # internals -------------------------------------------------------------------------
    def _share(self, payload: bytes | None) -> bytes:
        import mlx.core as mx

        group, leader = self.info.group, self.info.is_leader
        data = (payload or b"") if leader else b""
        size = mx.distributed.all_sum(mx.array([len(data)], dtype=mx.int32), group=group, stream=mx.cpu)
        n = int(size.item())
        if n == 0:
            return _STOP
        buf = mx.array(list(data), dtype=mx.uint8) if leader else mx.zeros((n,), dtype=mx.uint8)
        # Summing with zeros from every other rank is exact: rank 0's bytes arrive as sent.
        got = mx.distributed.all_sum(buf, group=group, stream=mx.cpu)
        mx.eval(got)
        return data if leader else bytes(got.tolist())

    @contextlib.contextmanager
    def _collective(self) -> Iterator[None]:
        try:
            yield
        except RuntimeError as exc:
            # The ring backend says "connection to a peer was lost".
            raise self._fail(f"a rank of the distributed group failed: {exc}") from None

    def request_failed(self, exc: BaseException) -> BaseException:
        """A request raised ``exc``: once the ranks were inside its steps, they may have fallen
        out of step (a peer lost shows here too, raised inside a sharded forward pass), so the
        group fails and the request reports that. Before, only the request fails, with ``exc``."""
        if not self.in_request and self.failure is None:
            return exc
        return self._fail(f"a distributed step failed, so the ranks may be out of step: {type(exc).__name__}: {exc}")

    def _fail(self, message: str) -> RankFailedError:
        if self.failure is None:
            self.failure = RankFailedError(message)
            log.error("%s", message)
        return self.failure

    def _stalled(self, seconds: float) -> None:
        timeout = self.watchdog.timeout_s if self.watchdog is not None else 0.0
        error = self._fail(
            f"the other ranks did not finish a step within {timeout:g} s (waited {seconds:.1f} s): "
            "a rank stopped answering"
        )
        if self._on_stall is not None:
            self._on_stall(error)


def encode_job(job: Job) -> bytes:
    """What the other ranks need of a request: its prompt tokens and sampling settings."""
    params = job.params
    if params.logits_processors:
        raise InvalidRequestError("custom logits processors cannot run on a distributed model")
    if getattr(job.prompt, "media", None):
        raise InvalidRequestError("a distributed model takes text only", param="messages")
    fields = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name != "logits_processors"}
    try:
        return json.dumps({"tokens": list(job.prompt.tokens), "params": fields}, separators=(",", ":")).encode()
    except TypeError as exc:
        raise InvalidRequestError(f"this request's settings cannot run on a distributed model ({exc})") from None


def decode_job(payload: bytes) -> Job:
    message = json.loads(payload.decode())
    params = dict(message["params"])
    params["stop"] = tuple(params.get("stop") or ())
    prompt = RenderedPrompt(tokens=list(message["tokens"]), text="", thinking=False, parse_tools=False)
    return Job(prompt, SamplingParams(**params), DiscardedGeneration())


class DiscardedGeneration(Generation):
    """A follower's copy of a request: it runs the same steps as rank 0, and nobody reads its
    events."""

    def __init__(self) -> None:
        super().__init__(None)

    def deliver(self, events: list[Any]) -> None:
        return None


class Watchdog:
    """Notices when the ranks stop making progress on rank 0's current request.

    A rank that dies makes collectives raise at once; a rank that is stopped (or a network that
    silently drops) would block rank 0 inside MLX for ever. Rank 0 calls ``enter()`` when a
    request starts, ``touch()`` after every token and ``leave()`` when it ends; a monitor thread
    calls ``on_stall(seconds)`` once when nothing moved for ``timeout_s``. Rank 0's worker may
    then stay blocked inside MLX, but its requests get an error and later ones are refused.
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

    touch = enter

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
                except Exception:  # noqa: BLE001 - a failing callback must not kill the monitor
                    log.exception("distributed watchdog callback failed")


__all__ = ["DiscardedGeneration", "Lockstep", "Watchdog", "decode_job", "encode_job"]
