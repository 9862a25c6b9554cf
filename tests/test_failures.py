"""One classifier of failures (``core.failures``): the worker and the HTTP / ABI boundaries
agree on what a failure is; only the wording and the catch-all class differ."""

from __future__ import annotations

import pytest
from hardening_support import MALLOC_OOM, METAL_OOM

from lib_mlx.core.failures import classify, generation_failure
from lib_mlx.errors import GenerationError, LibMlxError, OutOfMemoryError, QueueFullError


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (RuntimeError(MALLOC_OOM), "out_of_memory"),
        (RuntimeError(METAL_OOM), "out_of_memory"),
        (RuntimeError("CUDA error: out of memory"), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
        (QueueFullError(), "queue_full"),  # ours pass through unchanged
        (ValueError("[malloc] in a ValueError is not MLX's allocator"), None),
        (RuntimeError("[eval] Attempting to eval an array without a primitive"), None),
    ],
)
def test_both_sides_classify_alike(exc: BaseException, code: str | None) -> None:
    at_boundary, in_worker = classify(exc), generation_failure(exc)
    if code is None:  # anything else: internal at a boundary, a failed generation in the worker
        assert type(at_boundary) is LibMlxError and at_boundary.code == "internal_error"
        assert type(in_worker) is GenerationError and in_worker.code == "generation_failed"
    else:
        assert at_boundary.code == in_worker.code == code
        if isinstance(exc, LibMlxError):
            assert at_boundary is exc and in_worker is exc
        else:
            assert isinstance(at_boundary, OutOfMemoryError) and isinstance(in_worker, OutOfMemoryError)
