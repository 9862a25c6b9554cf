"""How far a model load has got: a thread-safe, monotonic progress value, and its cancel flag.

The loader (possibly on a background thread) writes it; ``server_status`` and a CLI progress bar
read ``snapshot()`` from any thread. Every figure only ever grows and the phase only moves
forward, so a host may draw a bar straight from it.

``bytes_*``/``files_*`` count the model's files: files already on disk (a local directory, or
the hub cache) count as done from the start, downloaded ones as their bytes arrive. They reach
their totals when the download ends; ``phase`` then tells what follows (``load``: weights into
memory, ``warmup``: the worker and first evaluation).
"""

from __future__ import annotations

import threading
from typing import Any

PHASES = ("resolve", "download", "load", "warmup")


class LoadCancelled(Exception):
    """The load was cancelled (``unload_model`` on a loading handle). Internal: never reaches
    a client, since the handle it belonged to is gone."""


class LoadProgress:
    """The progress of one load. ``cancel()`` asks the loader to stop at its next check."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._phase = 0
        self._bytes_done = 0
        self._bytes_total = 0
        self._files_done = 0
        self._files_total = 0
        self._cancelled = threading.Event()

    # writer side ------------------------------------------------------------------------
    def enter(self, phase: str) -> None:
        """Move on to ``phase`` (never back)."""
        index = PHASES.index(phase)
        with self._lock:
            self._phase = max(self._phase, index)
        self.check()

    def set_totals(self, *, bytes_total: int, files_total: int) -> None:
        with self._lock:
            self._bytes_total = max(self._bytes_total, int(bytes_total))
            self._files_total = max(self._files_total, int(files_total))

    def add_bytes(self, n: int) -> None:
        """Bytes arrived; raises ``LoadCancelled`` once cancelled (the downloader stops there,
        its partial file left in place to resume from)."""
        if n > 0:
            with self._lock:
                self._bytes_done += int(n)
                self._bytes_total = max(self._bytes_total, self._bytes_done)
        self.check()

    def file_done(self, size: int = 0, *, counted_bytes: int = 0) -> None:
        """A file is complete; ``size - counted_bytes`` of its bytes were not reported yet."""
        with self._lock:
            self._files_done += 1
            self._files_total = max(self._files_total, self._files_done)
            self._bytes_done += max(0, int(size) - int(counted_bytes))
            self._bytes_total = max(self._bytes_total, self._bytes_done)

    def finish_files(self) -> None:
        """Every file is on disk: the counters reach their totals."""
        with self._lock:
            self._bytes_done = self._bytes_total = max(self._bytes_done, self._bytes_total)
            self._files_done = self._files_total = max(self._files_done, self._files_total)

    # cancel -----------------------------------------------------------------------------
    def cancel(self) -> None:
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def check(self) -> None:
        if self._cancelled.is_set():
            raise LoadCancelled("the load was cancelled")

    # reader side ------------------------------------------------------------------------
    @property
    def phase(self) -> str:
        return PHASES[self._phase]

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "phase": PHASES[self._phase],
                "bytes_done": self._bytes_done,
                "bytes_total": self._bytes_total,
                "files_done": self._files_done,
                "files_total": self._files_total,
            }
