"""One classifier of failures, and how the worker leaves MLX usable after one.

Wherever an unexpected exception meets a boundary it becomes one of the package's errors here:
``generation_failure`` in the worker (a request that fails ends with a ``Failed`` event),
``classify`` in the HTTP server and the C ABI (an error body). Ours pass through unchanged; an
out-of-memory failure is an ``OutOfMemoryError`` on both sides (``is_out_of_memory``); anything
else a ``GenerationError`` inside a generation, an internal error elsewhere.
"""

from __future__ import annotations

import logging
import os

from ..errors import GenerationError, LibMlxError, OutOfMemoryError

log = logging.getLogger("lib_mlx.engine")

# MLX has no exception type for a failed allocation: its allocators throw std::runtime_error
# (RuntimeError here) -- "[malloc] Unable to allocate N bytes.", "[metal::malloc] Attempting to
# allocate N bytes which is greater than the maximum allowed buffer size", CUDA's "out of
# memory" -- so the message is the only signal there is. (On the Linux CPU backend of MLX 0.32
# a failed allocation is not reported at all: the process segfaults in the kernel that writes
# to the buffer. Nothing in Python can catch that.)
OOM_MARKERS = ("[malloc]", "::malloc]", "unable to allocate", "attempting to allocate", "out of memory", "outofmemory")


def is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and any(marker in text for marker in OOM_MARKERS)


def classify(exc: BaseException) -> LibMlxError:
    """``exc`` as one of the package's errors, at a boundary (HTTP, ABI): ours as they are,
    out of memory as ``OutOfMemoryError``, anything else an internal error."""
    if isinstance(exc, LibMlxError):
        return exc
    if is_out_of_memory(exc):
        return OutOfMemoryError(f"Out of memory: {exc}")
    return LibMlxError(f"{type(exc).__name__}: {exc}")


def generation_failure(exc: BaseException) -> LibMlxError:
    """What a request that raised ``exc`` while generating reports (``Failed.error``): the same
    classes as ``classify``, a ``GenerationError`` for the rest."""
    if isinstance(exc, LibMlxError):
        return exc
    if is_out_of_memory(exc):
        return OutOfMemoryError(f"the model ran out of memory: {exc}")
    return GenerationError(f"generation failed: {type(exc).__name__}: {exc}")


def recover_after_failure() -> None:
    """Leave MLX usable for the next request after one failed.

    mlx-lm's samplers are ``mx.compile``d over ``mx.random.state``; an exception thrown while one
    is traced leaves that global state holding a placeholder array, and every later sampled
    generation fails ("[eval] Attempting to eval an array without a primitive") -- a dead
    worker behind a live socket. Reseed it. Then hand the buffer cache back, so that the next
    request after an out-of-memory error can allocate."""
    import mlx.core as mx

    try:
        try:
            mx.eval(mx.random.state)
        except Exception:  # noqa: BLE001 - any failure means the state is unusable
            mx.random.seed(int.from_bytes(os.urandom(8), "little"))
        mx.clear_cache()
    except Exception:  # noqa: BLE001 - recovery must never take the worker down
        log.exception("could not reset MLX state after a failed generation")


__all__ = ["OOM_MARKERS", "classify", "generation_failure", "is_out_of_memory", "recover_after_failure"]
