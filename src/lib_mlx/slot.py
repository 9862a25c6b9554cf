"""One handle's model through its life, and the core door the server talks to.

States (``status``)::

    loading --> ready <--> sleeping        (idle unload frees the weights; a request reloads)
       |          |
       v          v (reload failed)
     failed     failed

A ``ModelSlot`` is an ``InferenceCore`` (``core.facade``): the server calls ``render``/``submit``
on it and it hands them to the current ``MlxCore``, loading the model again first when it sleeps
(the wait shows as time to the first token). ``state`` is the model's status above. A background load runs on its own thread and reports to a
``LoadProgress`` that ``snapshot()`` reads from any thread; ``close`` cancels it.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import MlxModelConfig
from .errors import CancelledError, LibMlxError, ModelLoadError, NotReadyError

if TYPE_CHECKING:
    from .core import MlxCore

log = logging.getLogger("lib_mlx.runtime")

# How long ``close`` waits for a cancelled load to stop (a load inside ``mlx_lm.load`` cannot
# be interrupted; it finishes and is thrown away).
_CANCEL_JOIN_S = 120.0


@dataclass(frozen=True)
class ModelFacts:
    """What is known of a model once loaded, kept while it sleeps."""

    model_id: str
    model_path: str
    model_type: str
    context_length: int
    thinking_enabled: bool
    capabilities: Any  # core.Capabilities
    weight_bytes: int


class ModelSlot:
    def __init__(self, config: MlxModelConfig) -> None:
        self.config = config
        self.model_id = config.model_id or Path(config.model_path or "model").expanduser().name
        self._cond = threading.Condition()
        self._status = "loading"
        self._core: MlxCore | None = None
        self._error: LibMlxError | None = None
        self._progress: Any = None
        self._thread: threading.Thread | None = None
        self._facts: ModelFacts | None = None
        self._queue_limit = 1
        self._last_stats: Any = None  # the engine's counters when it last went away
        self._rendering = 0
        self._last_active = time.monotonic()
        self._closed = False
        self.loads = 0  # completed loads (1 + reloads after sleeping)
        self.sleeps = 0

    # loading ----------------------------------------------------------------------------
    def load_now(self) -> None:
        """Load on this thread (``wait: true``); raises the load's error."""
        from .core import LoadProgress

        progress = LoadProgress()
        with self._cond:
            self._progress = progress
        self._load(self.config, progress)
        with self._cond:
            if self._status == "failed" and self._error is not None:
                raise self._error

    def load_in_background(self) -> None:
        from .core import LoadProgress

        with self._cond:
            self._start_locked(self.config, LoadProgress())

    def _start_locked(self, config: MlxModelConfig, progress: Any) -> None:
        self._status = "loading"
        self._error = None
        self._progress = progress
        self._thread = threading.Thread(
            target=self._load, args=(config, progress), name=f"lib_mlx-load-{self.model_id}", daemon=True
        )
        self._thread.start()

    def _load(self, config: MlxModelConfig, progress: Any) -> None:
        from .core import LoadCancelled, MlxCore

        core: MlxCore | None = None
        error: LibMlxError | None = None
        try:
            core = MlxCore.load(config, self._queue_limit, progress)
        except LoadCancelled:
            pass
        except LibMlxError as exc:
            error = exc
        except Exception as exc:  # noqa: BLE001 - reported through status
            log.exception("loading %s failed", self.model_id)
            error = ModelLoadError(f"could not load {self.model_id}: {type(exc).__name__}: {exc}")
        with self._cond:
            if self._closed or core is None and error is None:
                discard, core = core, None
            else:
                discard = None
                if core is not None:
                    core.queue_limit = self._queue_limit  # changed while it loaded
                    self._core = core
                    self._facts = _facts(core)
                    self._status = "ready"
                    self._last_active = time.monotonic()
                    self.loads += 1
                else:
                    self._status, self._error = "failed", error
            self._cond.notify_all()
        if discard is not None:
            discard.close()

    def wait_ready(self, timeout: float | None = None) -> "MlxCore":
        """The ready core; a sleeping model is loaded again first. Raises the load's error
        (``failed``), ``model_not_ready`` after ``timeout``, ``cancelled`` once unloaded."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while True:
                if self._closed:
                    raise CancelledError("the model was unloaded")
                if self._status == "ready" and self._core is not None:
                    return self._core
                if self._status == "failed":
                    assert self._error is not None
                    raise self._error
                if self._status == "sleeping":
                    self._reload_locked()
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise NotReadyError(f"the model {self.model_id} is still loading")
                self._cond.wait(left)

    def _reload_locked(self) -> None:
        from .core import LoadProgress

        assert self._facts is not None
        # From the directory the first load resolved: no hub lookup again.
        config = dataclasses.replace(self.config, model_path=self._facts.model_path, model_id=self._facts.model_id)
        self._start_locked(config, LoadProgress())

    # idle unload ------------------------------------------------------------------------
    def touch(self) -> None:
        """Count now as activity (the idle clock starts again)."""
        with self._cond:
            self._last_active = time.monotonic()

    def sleep_if_idle(self, idle_s: float) -> bool:
        """Free the weights and caches when nothing has run for ``idle_s`` seconds."""
        from .core.memory import release_memory

        with self._cond:
            core = self._core
            if self._status != "ready" or core is None or self._closed:
                return False
            now = time.monotonic()
            if self._rendering or core.in_flight:
                self._last_active = now
                return False
            if now - self._last_active < idle_s:
                return False
            self._core = None  # requests now wait in ``wait_ready`` until it is "sleeping"
            self._last_stats = core.stats()
        log.info("%s idle for %.1fs: unloading its weights", self.model_id, idle_s)
        core.close()
        del core
        release_memory()
        with self._cond:
            # "sleeping" once the memory is back (a status poll never sees it still held)
            if not self._closed:
                self._status = "sleeping"
            self.sleeps += 1
            self._cond.notify_all()
        return True

    # the core door (``InferenceCore``: what the server and the runtime call) -------------
    @property
    def state(self) -> str:
        """loading | ready | failed | sleeping | unloaded"""
        return self._status

    @property
    def core(self) -> "MlxCore | None":
        return self._core

    @property
    def error(self) -> LibMlxError | None:
        return self._error

    @property
    def capabilities(self) -> Any:
        core = self._core
        if core is not None:
            return core.capabilities
        if self._facts is not None:
            return self._facts.capabilities
        from .core import Capabilities

        return Capabilities()  # not loaded yet: nothing known

    @property
    def context_length(self) -> int:
        core = self._core
        if core is not None:
            return core.context_length
        return self._facts.context_length if self._facts else 0

    @property
    def in_flight(self) -> int:
        core = self._core
        return core.in_flight if core is not None else 0

    def _ready_core(self) -> "MlxCore":
        core = self._core
        if core is None:
            raise NotReadyError(f"the model {self.model_id} is {self._status}")
        return core

    @property
    def queue_limit(self) -> int:
        return self._queue_limit

    @queue_limit.setter
    def queue_limit(self, limit: int) -> None:
        with self._cond:
            self._queue_limit = int(limit)
            if self._core is not None:
                self._core.queue_limit = int(limit)

    def cancel_all(self) -> None:
        core = self._core
        if core is not None:
            core.cancel_all()

    def stats(self) -> Any:
        core = self._core
        if core is not None:
            return core.stats()
        if self._last_stats is not None:
            return self._last_stats
        from .core import EngineStats

        return EngineStats()

    def count_tokens(self, prompt: Any) -> int:
        return self._ready_core().count_tokens(prompt)

    def render(self, prompt: Any) -> Any:
        """On a worker thread: waits for (or starts) the model's load, then renders."""
        with self._cond:
            self._rendering += 1
        try:
            return self.wait_ready().render(prompt)
        finally:
            with self._cond:
                self._rendering -= 1
                self._last_active = time.monotonic()

    def announce(self) -> Any:
        core = self._core
        return core.announce() if core is not None else None

    def submit(self, prompt: Any, params: Any, **kwargs: Any) -> Any:
        core = self._core
        if core is None:
            raise NotReadyError(f"the model {self.model_id} is not loaded; retry shortly")
        self._last_active = time.monotonic()
        return core.submit(prompt, params, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # Anything else of the core's face, from the ready core.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._ready_core(), name)

    # status / close ---------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """The model's part of ``server_status``: ``{"model": {...}, "multimodal": ...}`` --
        the core's own while it is loaded (an engine failure shows there), with the load's
        ``progress`` and ``loads`` added."""
        with self._cond:
            core, facts, state, error, progress = self._core, self._facts, self._status, self._error, self._progress
        body: dict[str, Any] = {"multimodal": None}
        if core is not None:
            body = dict(core.status())  # its other parts too (e.g. "kv_cache")
            model = dict(body["model"])
        else:
            model = {
                "status": state,
                "model_id": facts.model_id if facts else self.model_id,
                "model_path": facts.model_path if facts else self.config.model_path,
            }
            if facts is not None:
                model.update(
                    model_type=facts.model_type,
                    context_length=facts.context_length,
                    thinking_enabled=facts.thinking_enabled,
                )
            if error is not None and state == "failed":
                model["error"] = error.to_abi()["error"]
        if facts is not None:
            model["weight_bytes"] = facts.weight_bytes
        if progress is not None:
            model["progress"] = progress.snapshot()
        model["loads"] = self.loads
        return {**body, "model": model}

    def describe(self) -> dict[str, Any]:
        """``server_status``'s ``model`` object."""
        return self.status()["model"]

    def close(self) -> None:
        """Cancel a load in progress (waiting for it to stop) and free the model."""
        with self._cond:
            self._closed = True
            if self._progress is not None:
                self._progress.cancel()
            thread, core, self._core = self._thread, self._core, None
            self._status = "unloaded"
            if core is not None:
                self._last_stats = core.stats()
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(_CANCEL_JOIN_S)
        if core is not None:
            core.close()


def _facts(core: "MlxCore") -> ModelFacts:
    from .core.memory_guard import weight_bytes_of_dir

    loaded = core.loaded
    return ModelFacts(
        model_id=loaded.model_id,
        model_path=str(loaded.model_path),
        model_type=loaded.model_type,
        context_length=loaded.context_length,
        thinking_enabled=loaded.thinking_enabled,
        capabilities=core.capabilities,
        weight_bytes=weight_bytes_of_dir(Path(loaded.model_path)),
    )
