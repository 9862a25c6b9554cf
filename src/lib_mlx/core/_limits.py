"""Import mlx-lm without letting it rewrite the process's open-file limit.

``mlx_lm.utils`` runs ``resource.setrlimit(RLIMIT_NOFILE, (2048, 4096))`` when imported: that
lowers a host's higher hard limit for good (an unprivileged process can never raise it back),
lowers a higher soft limit, and fails the import -- every ``load_model`` -- where the hard limit
is below 4096. Around that import only, ``setrlimit`` for ``RLIMIT_NOFILE`` may raise the soft
limit (up to the hard limit), and never lowers either limit.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def keep_nofile_limit() -> Iterator[None]:
    try:
        import resource
    except ImportError:  # not a POSIX system: nothing to protect
        yield
        return
    real = resource.setrlimit

    def setrlimit(which: int, limits: tuple[int, int]) -> None:
        if which != resource.RLIMIT_NOFILE:
            real(which, limits)
            return
        soft, hard = resource.getrlimit(which)
        wanted = limits[0]
        ceiling = hard if hard != resource.RLIM_INFINITY else wanted
        if wanted == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY:
            return
        new_soft = max(soft, min(wanted, ceiling))
        if new_soft != soft:
            real(which, (new_soft, hard))

    resource.setrlimit = setrlimit  # type: ignore[assignment]
    try:
        yield
    finally:
        resource.setrlimit = real  # type: ignore[assignment]


def import_mlx_lm() -> None:
    """Import ``mlx_lm.utils`` (once) with the host's open-file limits kept."""
    if "mlx_lm.utils" in sys.modules:
        return
    with keep_nofile_limit():
        import mlx_lm.utils  # noqa: F401
