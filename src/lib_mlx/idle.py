"""Idle unload: a watcher thread that puts a served model to sleep after ``idle_unload_s``
seconds without a request (``MlxServerConfig.idle_unload_s``; Ollama's ``keep_alive``,
llama.cpp's ``--sleep-idle-seconds``). The next request loads it again (``ModelSlot``)."""

from __future__ import annotations

import logging
import threading

from .slot import ModelSlot

log = logging.getLogger("lib_mlx.runtime")


class IdleWatcher:
    def __init__(self, slot: ModelSlot, idle_s: float) -> None:
        self.slot = slot
        self.idle_s = float(idle_s)
        # Checks a few times per idle period, at most once a second (a request in flight at a
        # check counts as activity then).
        self._period = min(max(self.idle_s / 4, 0.05), 1.0)
        self._stop = threading.Event()
        slot.touch()  # idle from the server's start, not from the load's end
        self._thread = threading.Thread(target=self._run, name=f"lib_mlx-idle-{slot.model_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.slot.sleep_if_idle(self.idle_s)
            except Exception:  # noqa: BLE001 - never let the watcher die silently mid-serve
                log.exception("idle unload of %s failed", self.slot.model_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
