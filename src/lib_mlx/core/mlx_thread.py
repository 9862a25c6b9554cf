"""Reused OS threads for the work that calls MLX (each model's engine worker).

MLX gives every thread that evaluates arrays streams of its own, each served by a native
scheduler thread that outlives the Python thread: a fresh worker per loaded model left two
native threads behind per load -> generate -> unload cycle (30 cycles: 11 -> 69 OS threads).
Running each worker on a reused thread instead creates those streams once per thread ever
needed at the same time (the most models loaded at once), not once per load.

``MlxThread`` looks like a ``threading.Thread`` to its owner (``start``, ``join``,
``is_alive``, ``name``); ``native_id`` is None, as the OS thread does not end with the task.
The idle threads are daemons blocked on a queue, holding nothing of MLX's.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("lib_mlx.core")

_idle: list[_Worker] = []
_idle_lock = threading.Lock()


class _Worker:
    def __init__(self) -> None:
        self.tasks: queue.SimpleQueue[MlxThread] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._loop, name="lib_mlx-mlx-idle", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while True:
            task = self.tasks.get()
            self.thread.name = task.name
            try:
                task._run()
            finally:
                self.thread.name = "lib_mlx-mlx-idle"
                done = task._done
                del task  # hold nothing of the finished task (its engine, its model) while idle
                with _idle_lock:
                    _idle.append(self)
                done.set()


class MlxThread:
    """Runs ``target`` once on a reused daemon thread."""

    native_id = None  # the OS thread lives on after the task

    def __init__(self, target: Callable[[], Any], name: str) -> None:
        self.name = name
        self._target: Callable[[], Any] | None = target
        self._done = threading.Event()
        self._worker: _Worker | None = None

    def start(self) -> None:
        with _idle_lock:
            worker = _idle.pop() if _idle else None
        if worker is None:
            worker = _Worker()
        self._worker = worker
        worker.tasks.put(self)

    def _run(self) -> None:
        target, self._target = self._target, None
        try:
            if target is not None:
                target()
        except Exception:  # noqa: BLE001 - as threading.Thread would: report, and the thread lives on
            log.exception("%s failed", self.name)
        finally:
            del target

    def join(self, timeout: float | None = None) -> None:
        if self.is_current():
            return
        self._done.wait(timeout)

    def is_alive(self) -> bool:
        return self._worker is not None and not self._done.is_set()

    def is_current(self) -> bool:
        return self._worker is not None and threading.current_thread() is self._worker.thread and not self._done.is_set()


def idle_threads() -> int:
    with _idle_lock:
        return len(_idle)


__all__ = ["MlxThread", "idle_threads"]
