"""LibMlxRuntime: the lifecycle (load, serve, stop, status, unload) over handles.

Thread-safe. A table lock guards the handle map only; each handle has its own lock so that a
long load or stop on one model never blocks status calls on another. A handle's model lives in a
``ModelSlot`` (``slot.py``): loading in the background, ready, sleeping after an idle unload.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import threading
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import MlxModelConfig, MlxServerConfig, ServerInfo, with_env_overrides
from .errors import InvalidConfigError, LibMlxError, ServerNotRunningError, UnknownHandleError
from .slot import ModelSlot

log = logging.getLogger("lib_mlx.runtime")

if TYPE_CHECKING:
    import openai

    from .core import MlxCore
    from .idle import IdleWatcher
    from .server import ServerHandle


@dataclass
class _Entry:
    handle: int
    config: MlxModelConfig
    slot: ModelSlot
    server: "ServerHandle | None" = None
    idle: "IdleWatcher | None" = None
    lock: threading.RLock = field(default_factory=threading.RLock)
    unloaded: bool = False

    @property
    def core(self) -> "MlxCore | None":
        """The model's core while it is loaded (None while loading, sleeping, failed)."""
        return self.slot.core


class LibMlxRuntime:
    """Owns loaded models and their servers. Several runtimes may live in one process."""

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        _live_runtimes.add(self)

    # lifecycle ----------------------------------------------------------------------------
    def load_model(self, config: MlxModelConfig, *, wait: bool | None = None) -> int:
        """Load a model and return its handle (ints from 1). ``wait`` (default
        ``config.wait``, True) blocks until it is ready and raises a failed load's error; False
        returns at once: ``server_status`` then shows the load's progress and outcome. The
        environment's overrides apply here (``config.with_env_overrides``)."""
        from .core import MlxCore  # noqa: F401 - first: core.facade imports mlx-lm keeping the rlimits
        from .core.loader import check_model_dir

        wait = config.wait if wait is None else wait
        if config.model_path:
            check_model_dir(config.model_path)  # a wrong path fails at once, waiting or not
        slot = ModelSlot(with_env_overrides(config))
        if wait:
            slot.load_now()
        with self._lock:
            handle = next(self._ids)
            self._entries[handle] = _Entry(handle, config, slot)
        if not wait:
            slot.load_in_background()
        return handle

    def start_server(self, handle: int, config: MlxServerConfig | None = None) -> ServerInfo:
        """Start the HTTP server for ``handle``; if it already runs, return its info. On a
        handle still loading, ``config.wait`` (default) waits for the model (raising a failed
        load's error); ``wait: false`` listens at once and answers 503 until it is ready."""
        from .idle import IdleWatcher
        from .server import ServerHandle

        settings = config or MlxServerConfig()
        entry = self._entry(handle)
        if settings.wait:
            entry.slot.wait_ready()  # outside the handle's lock: status calls go on meanwhile
        with entry.lock:
            self._check_alive(entry)
            if entry.server is not None and entry.server.running:
                return entry.server.info
            core = entry.slot.core
            if core is not None and core.rank:
                raise InvalidConfigError(f"rank {core.rank} of a distributed model follows rank 0; only rank 0 serves")
            entry.slot.queue_limit = settings.queue_limit
            entry.server = ServerHandle(entry.slot, settings)
            if settings.idle_unload_s:
                entry.idle = IdleWatcher(entry.slot, settings.idle_unload_s)
            return entry.server.info

    def stop_server(self, handle: int) -> bool:
        """Stop the server (synchronous). Returns whether one was running; stopping a stopped
        server is not an error."""
        entry = self._entry(handle)
        with entry.lock:
            self._check_alive(entry)
            return self._stop(entry)

    def server_status(self, handle: int) -> dict[str, Any]:
        from .core.memory import memory_info

        entry = self._entry(handle)
        with entry.lock:
            self._check_alive(entry)
            server = entry.server
            running = server is not None and server.running
            server_body: dict[str, Any] = {"status": "running" if running else "stopped"}
            if running and server is not None:
                server_body.update(server.info.to_dict())
            slot = entry.slot
            if entry.idle is not None:
                server_body["idle_unload_s"] = entry.idle.idle_s
            model = slot.status()
            return {
                "handle": handle,
                "model": model["model"],
                "server": server_body,
                "in_flight": slot.in_flight,
                "memory": memory_info().to_dict(),
                "kv_cache": model.get("kv_cache"),
                # Vision/audio towers: which are resident and the bytes they take (null for a
                # text-only model, or one not loaded now).
                "multimodal": model["multimodal"],
                "stats": slot.stats().to_dict(),
            }

    def unload_model(self, handle: int) -> None:
        """Stop the server, cancel generations, free the model's memory; the handle dies."""
        from .core.memory import release_memory

        entry = self._entry(handle)
        with entry.lock:
            self._check_alive(entry)
            self._stop(entry)
            entry.unloaded = True
            with self._lock:
                self._entries.pop(handle, None)
            entry.slot.close()  # cancels a load in progress
        del entry
        release_memory()

    def handles(self) -> list[int]:
        with self._lock:
            return sorted(self._entries)

    def close(self) -> None:
        """Unload everything (for process exit and tests)."""
        for handle in self.handles():
            try:
                self.unload_model(handle)
            except UnknownHandleError:
                pass

    # a model sharded over several processes (``lib-mlx serve --distributed``) -------------
    def distributed_rank(self, handle: int) -> int:
        """This process's rank for a sharded model (0 serves; 0 also when not sharded)."""
        entry = self._entry(handle)
        return entry.slot.wait_ready().rank

    def follow(self, handle: int) -> LibMlxError | None:
        """On a rank other than 0: run rank 0's requests until it stops (blocking); the error
        that ended the group, if one did."""
        entry = self._entry(handle)
        with entry.lock:
            self._check_alive(entry)
        return entry.slot.wait_ready().follow()

    # conveniences -------------------------------------------------------------------------
    def server_info(self, handle: int) -> ServerInfo:
        entry = self._entry(handle)
        with entry.lock:
            self._check_alive(entry)
            if entry.server is None or not entry.server.running:
                raise ServerNotRunningError(f"no server is running for handle {handle}")
            return entry.server.info

    def openai_client(self, handle: int, **kwargs: Any) -> "openai.OpenAI":
        """An ``openai.OpenAI`` client bound to this handle's server (token included)."""
        import openai

        info = self.server_info(handle)
        return openai.OpenAI(base_url=f"{info.base_url}/v1", api_key=info.api_key or "none", **kwargs)

    # internals ----------------------------------------------------------------------------
    def _entry(self, handle: int) -> _Entry:
        if isinstance(handle, bool) or not isinstance(handle, int):
            raise UnknownHandleError(f"handle must be an integer, not {type(handle).__name__}")
        with self._lock:
            entry = self._entries.get(handle)
        if entry is None:
            raise UnknownHandleError(f"unknown handle {handle}")
        return entry

    @staticmethod
    def _check_alive(entry: _Entry) -> None:
        if entry.unloaded:
            raise UnknownHandleError(f"unknown handle {entry.handle} (unloaded)")

    @staticmethod
    def _stop(entry: _Entry) -> bool:
        idle, entry.idle = entry.idle, None
        if idle is not None:
            idle.stop()
        server, entry.server = entry.server, None
        if server is None:
            return False
        was_running = server.running
        server.stop()
        return was_running


# Every runtime of the process, so that exit can end their work first (see ``shutdown_all``).
_live_runtimes: "weakref.WeakSet[LibMlxRuntime]" = weakref.WeakSet()


def shutdown_all() -> None:
    """Stop every server and engine of every runtime and wait for their threads.

    A process that exits while an engine thread is inside MLX aborts in MLX's teardown
    (``terminate called without an active exception``): the C++ statics go away under a
    running thread. Registered with ``atexit`` (Python hosts; it runs before the interpreter
    and then MLX are torn down) and called by the C library's exit hook (C hosts, whose exit
    never finalizes Python). Safe to call more than once and from any thread."""
    for rt in list(_live_runtimes):
        try:
            rt.close()
        except Exception:  # noqa: BLE001 - exit goes on; the next runtime still gets closed
            log.exception("closing a runtime at exit failed")


atexit.register(shutdown_all)
