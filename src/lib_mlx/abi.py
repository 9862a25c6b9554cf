"""The lifecycle as JSON in / JSON out, over one process-wide runtime.

These are the very functions the C ABI (``src/lib_mlx.h``) calls. Each returns a JSON string,
``{"ok": true, ...}`` or ``{"ok": false, "error": {"code", "message"}}``, and never raises.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from .config import MlxModelConfig, MlxServerConfig, parse_config
from .core.failures import classify
from .errors import LibMlxError, UnknownHandleError
from .runtime import LibMlxRuntime, shutdown_all

log = logging.getLogger("lib_mlx.abi")

_runtime: LibMlxRuntime | None = None
_runtime_lock = threading.Lock()


def runtime() -> LibMlxRuntime:
    """The process-wide runtime (the single place where a global is right)."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = LibMlxRuntime()
        return _runtime


def _reply(fn: Callable[[], dict[str, Any]]) -> str:
    try:
        body = {"ok": True, **fn()}
    except LibMlxError as exc:
        body = exc.to_abi()
    except Exception as exc:  # noqa: BLE001 - the ABI never raises
        log.exception("lifecycle call failed")
        body = classify(exc).to_abi()
    return json.dumps(body, ensure_ascii=False)


def _handle(handle: Any) -> int:
    if isinstance(handle, bool) or not isinstance(handle, int):
        raise UnknownHandleError(f"handle must be an integer, not {type(handle).__name__}")
    return handle


def load_model(config_json: str | bytes | None) -> str:
    def run() -> dict[str, Any]:
        config = parse_config(MlxModelConfig, config_json)
        rt = runtime()
        handle = rt.load_model(config)  # ``"wait": false`` returns while it loads
        model = rt.server_status(handle)["model"]
        return {"handle": handle, "status": model["status"], "model_id": model["model_id"]}

    return _reply(run)


def start_server(handle: int, config_json: str | bytes | None = None) -> str:
    def run() -> dict[str, Any]:
        h = _handle(handle)
        config = parse_config(MlxServerConfig, config_json, required=False)
        info = runtime().start_server(h, config)
        return {"handle": h, "server": info.to_dict()}

    return _reply(run)


def stop_server(handle: int) -> str:
    def run() -> dict[str, Any]:
        h = _handle(handle)
        was_running = runtime().stop_server(h)
        return {"handle": h, "status": "stopped", "was_running": was_running}

    return _reply(run)


def server_status(handle: int) -> str:
    return _reply(lambda: runtime().server_status(_handle(handle)))


def unload_model(handle: int) -> str:
    def run() -> dict[str, Any]:
        h = _handle(handle)
        runtime().unload_model(h)
        return {"handle": h, "status": "unloaded"}

    return _reply(run)


def shutdown() -> str:
    """Stop every server and engine and join their threads (the C library's exit hook; see
    ``runtime.shutdown_all``). Handles are gone afterwards."""

    def run() -> dict[str, Any]:
        shutdown_all()
        return {"status": "shut_down"}

    return _reply(run)


__all__ = ["load_model", "runtime", "server_status", "shutdown", "start_server", "stop_server", "unload_model"]
