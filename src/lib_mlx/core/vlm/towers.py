"""Vision and audio towers that stay unloaded until a request needs them.

mlx-vlm loads safetensors lazily (``mx.load`` arrays read the file when first evaluated), so a
model loaded with ``lazy=True`` whose language-model weights alone are evaluated keeps its
towers as unread file references: they take no memory. Those references belong to the loading
thread's MLX stream, though (MLX streams are per thread: evaluating them on the engine's worker
fails with "There is no Stream(cpu, 0) in current thread"). So ``ensure`` -- on the worker, for
the first request that carries media -- loads the model lazily once more with mlx-vlm on its
own thread (same sanitising and quantisation as the first load), moves the tower modules over
and evaluates only them; the rest of that second copy is never read.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from .detect import TOWER_PREFIXES

_KIND_OF_MEDIA = {"image": "vision", "audio": "audio"}


@dataclass
class Tower:
    kind: str  # "vision" | "audio"
    modules: tuple[str, ...]  # attribute names on the mlx-vlm model
    weights_bytes: int
    resident: bool = False
    load_seconds: float = 0.0

    def status(self) -> dict[str, Any]:
        return {
            "resident": self.resident,
            "bytes": self.weights_bytes if self.resident else 0,
            "weights_bytes": self.weights_bytes,
            "modules": list(self.modules),
            "load_seconds": round(self.load_seconds, 4),
        }


def _params_bytes(module: Any) -> int:
    from mlx.utils import tree_flatten

    return sum(int(v.nbytes) for _, v in tree_flatten(module.parameters()))


def _all_arrays(module: Any) -> list[Any]:
    """Every array a module tree holds: parameters and private buffers alike (the audio tower
    keeps position tables in ``_``-prefixed attributes, which ``parameters()`` skips; left lazy
    they stay bound to the stream of the thread that built them)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    return [v for _, v in tree_flatten(module) if isinstance(v, mx.array)]


def find_towers(model: Any) -> dict[str, Tower]:
    """The model's tower modules by kind (only those present and carrying weights)."""
    towers: dict[str, Tower] = {}
    for kind, prefixes in TOWER_PREFIXES.items():
        names = tuple(
            p[:-1] for p in prefixes if getattr(model, p[:-1], None) is not None
        )
        size = sum(_params_bytes(getattr(model, n)) for n in names)
        if names and size:
            towers[kind] = Tower(kind, names, size)
    return towers


class TowerSet:
    """Residency of a model's towers. ``ensure`` runs on the worker thread; ``status`` may be
    called from any thread (it reads plain values only)."""

    def __init__(self, model: Any, *, lazy: bool, path: Any = None) -> None:
        import mlx.core as mx

        self._model = model
        self._path = path
        self._lock = threading.Lock()
        self.towers = find_towers(model)
        tower_modules = {n for t in self.towers.values() for n in t.modules}
        # Everything that is not a tower is evaluated now (read from the file).
        rest = [m.parameters() for name, m in model.children().items() if name not in tower_modules and m is not None]
        rest.append({k: v for k, v in model.parameters().items() if k not in model.children()})
        mx.eval(rest)
        if not lazy:
            mx.eval([_all_arrays(getattr(model, n)) for t in self.towers.values() for n in t.modules])
            for tower in self.towers.values():
                tower.resident = True

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(self.towers)

    def ensure(self, kinds: Any) -> list[str]:
        """Load the named towers that are not resident yet; returns those this call loaded."""
        import mlx.core as mx

        with self._lock:
            needed = [t for k in dict.fromkeys(kinds) if (t := self.towers.get(k)) is not None and not t.resident]
            if not needed:
                return []
            t0 = time.perf_counter()
            self._adopt_fresh_modules(needed)
            for tower in needed:
                mx.eval([_all_arrays(getattr(self._model, n)) for n in tower.modules])
                tower.load_seconds = time.perf_counter() - t0
                tower.resident = True
                t0 = time.perf_counter()
            return [t.kind for t in needed]

    def _adopt_fresh_modules(self, towers: list[Tower]) -> None:
        """Replace the towers' modules with ones whose (lazy) weights belong to this thread."""
        if self._path is None:
            return
        from mlx_vlm.utils import load_model

        fresh = load_model(self._path, lazy=True)
        for tower in towers:
            for name in tower.modules:
                setattr(self._model, name, getattr(fresh, name))

    def ensure_for_media(self, media_kinds: Any) -> list[str]:
        return self.ensure(_KIND_OF_MEDIA[k] for k in media_kinds if k in _KIND_OF_MEDIA)

    def status(self) -> dict[str, Any]:
        return {kind: tower.status() for kind, tower in self.towers.items()}

    @property
    def resident_bytes(self) -> int:
        return sum(t.weights_bytes for t in self.towers.values() if t.resident)
