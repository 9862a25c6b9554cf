"""A prompt cache on disk that survives restarts (opt-in, bounded).

Each entry is one ``.safetensors`` file in mlx-lm's ``save_prompt_cache`` layout (the cache
layers' state, their class names and scalars) whose metadata also holds the tokens the cache
holds and what it is valid for (``CacheIdentity``: the model's identity, its dtype, the KV
quantization, the chat template). The rules:

- Keyed by identity + the token list (a SHA-256 of both), so an entry is written at most once:
  a key already on disk or queued is never written again (SSD wear was the complaint about
  always-on disk caches).
- Written by a writer thread, never on the decode path; the worker only hands over the
  evaluated arrays (sliced to what they hold). A write goes to a temporary name and is renamed
  into place, so a crash leaves no half-written entry under a real name.
- Validated on read: an entry of another model, dtype, ``kv_bits`` or template is never used;
  a corrupt or truncated file is skipped with a warning (and forgotten), never a crash.
- Bounded by bytes: after each write the least recently used files go (a hit refreshes a file's
  modification time; the budget covers every entry in the directory).

The index (tokens of each valid entry) is read from the files' headers when the store opens,
without loading any tensors.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import queue
import struct
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("lib_mlx.disk_cache")

SUFFIX = ".safetensors"
FORMAT = "lib_mlx-prompt-cache-1"


@dataclass(frozen=True)
class CacheIdentity:
    """What an entry must match to be reused."""

    model: str  # a digest of the model's config and weight files (``model_identity``)
    dtype: str
    kv_bits: int | None = None
    kv_group_size: int | None = None
    template: str = ""  # a digest of the chat template

    def metadata(self) -> dict[str, str]:
        return {f"id_{k}": "" if v is None else str(v) for k, v in asdict(self).items()}

    def mismatch(self, metadata: dict[str, str]) -> str | None:
        """The first field in which ``metadata`` differs from this identity, or None."""
        for key, want in self.metadata().items():
            if metadata.get(key) != want:
                return key.removeprefix("id_")
        return None

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()


def model_identity(model_dir: str | Path) -> str:
    """A digest of a model directory's ``config.json`` and its weight files' names and sizes."""
    root = Path(model_dir)
    h = hashlib.sha256()
    config = root / "config.json"
    if config.exists():
        h.update(config.read_bytes())
    for weights in sorted(root.glob("*.safetensors")):
        h.update(f"{weights.name}:{weights.stat().st_size}".encode())
    return h.hexdigest()[:32]


def text_digest(text: str | None) -> str:
    return hashlib.sha256((text or "").encode()).hexdigest()[:16]


@dataclass
class DiskCacheStats:
    entries: int = 0  # valid for this model
    nbytes: int = 0  # every entry in the directory
    writes: int = 0
    write_bytes: int = 0
    skipped_writes: int = 0  # already on disk or queued
    hits: int = 0
    rejected: int = 0  # another model, dtype, kv_bits or template
    corrupt: int = 0
    write_seconds: float = 0.0
    writes_by_key: dict[str, int] = field(default_factory=dict)


@dataclass
class _Entry:
    tokens: np.ndarray
    path: Path
    nbytes: int
    trimmable: bool


class DiskPromptCache:
    """The on-disk store. ``lookup``/``load``/``put`` run on the engine's worker thread; the
    writes run on this store's own thread."""

    def __init__(self, directory: str | Path, max_bytes: int, identity: CacheIdentity) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.identity = identity
        self.stats = DiskCacheStats()
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}  # valid for this identity
        self._pending: set[str] = set()
        self._queue: queue.Queue[tuple[str, list[int], list[Any], bool] | None] = queue.Queue()
        self._scan()
        self._thread = threading.Thread(target=self._write_loop, name="lib_mlx-disk-cache", daemon=True)
        self._thread.start()

    # reading ----------------------------------------------------------------------------
    def _scan(self) -> None:
        total = 0
        for path in self.directory.glob(f"*{SUFFIX}"):
            if path.name.startswith("."):
                continue
            try:
                size = path.stat().st_size
                metadata = read_metadata(path, size)
            except (OSError, ValueError) as exc:
                log.warning("skipping an unreadable prompt-cache file %s: %s", path.name, exc)
                self.stats.corrupt += 1
                continue
            total += size
            if metadata.get("format") != FORMAT:
                continue
            if self.identity.mismatch(metadata) is not None:
                self.stats.rejected += 1
                continue
            key = path.name[: -len(SUFFIX)]
            self._entries[key] = _Entry(_tokens(metadata["tokens"]), path, size, metadata.get("trimmable") == "1")
        self.stats.entries = len(self._entries)
        self.stats.nbytes = total

    def lookup(self, tokens: list[int] | np.ndarray, limit: int) -> tuple[str, int] | None:
        """The entry sharing the longest usable prefix (at most ``limit`` tokens) with
        ``tokens``, as (key, tokens reusable); None when none."""
        query = np.asarray(tokens, dtype=np.int64)
        best: tuple[str, int] | None = None
        with self._lock:
            items = list(self._entries.items())
        for key, entry in items:
            common = min(_common_prefix(entry.tokens, query), limit)
            usable = common if (common == len(entry.tokens) or entry.trimmable) else 0
            if usable and (best is None or usable > best[1]):
                best = (key, usable)
        return best

    def load(self, key: str) -> tuple[list[int], list[Any]] | None:
        """The entry's tokens and cache layers; None (with a warning) when the file is gone,
        corrupt, truncated or no longer valid for this model."""
        from mlx_lm.models.cache import QuantizedKVCache, load_prompt_cache

        with self._lock:
            entry = self._entries.get(key)
        if entry is None:
            return None
        try:
            cache, metadata = load_prompt_cache(str(entry.path), return_metadata=True)
            why = self.identity.mismatch(metadata)
            if why is not None:
                raise ValueError(f"made for another {why}")
            tokens = _tokens(metadata["tokens"]).tolist()
            import mlx.core as mx

            mx.eval([layer.state for layer in cache])
        except Exception as exc:  # noqa: BLE001 - a bad file is skipped, never a crash
            log.warning("skipping prompt-cache file %s: %s", entry.path.name, exc)
            self.stats.corrupt += 1
            with self._lock:
                self._entries.pop(key, None)
                self.stats.entries = len(self._entries)
            return None
        cache = [_mergeable(layer) if type(layer) is QuantizedKVCache else layer for layer in cache]
        try:
            os.utime(entry.path)  # least recently used goes first
        except OSError:
            pass
        self.stats.hits += 1
        return tokens, cache

    # writing ----------------------------------------------------------------------------
    def key(self, tokens: list[int]) -> str:
        h = hashlib.sha256(self.identity.digest().encode())
        h.update(np.asarray(tokens, dtype=np.int64).tobytes())
        return h.hexdigest()[:40]

    def put(self, tokens: list[int], cache: list[Any], *, trimmable: bool) -> bool:
        """Queue ``cache`` (holding ``tokens``) to be written, unless its entry exists or is
        queued already. Returns whether it was queued. The arrays handed over are sliced to
        what the cache holds and evaluated here, so the writer only reads finished memory."""
        key = self.key(tokens)
        with self._lock:
            if key in self._entries or key in self._pending:
                self.stats.skipped_writes += 1
                return False
            self._pending.add(key)
        layers = _exportable(cache)
        self._queue.put((key, list(tokens), layers, trimmable))
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued write is done (tests, benchmarks, shutdown)."""
        done = threading.Event()
        self._queue.put(("__flush__", [], [done], False))  # type: ignore[list-item]
        done.wait(timeout)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(30)

    def _write_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            key, tokens, layers, trimmable = item
            if key == "__flush__":
                layers[0].set()
                continue
            try:
                self._write(key, tokens, layers, trimmable)
            except Exception:  # noqa: BLE001 - a failed write loses an entry, nothing else
                log.exception("could not write a prompt-cache entry")
            finally:
                with self._lock:
                    self._pending.discard(key)

    def _write(self, key: str, tokens: list[int], layers: list[Any], trimmable: bool) -> None:
        import time

        from mlx_lm.models.cache import save_prompt_cache

        t0 = time.perf_counter()
        path = self.directory / f"{key}{SUFFIX}"
        if path.exists():
            return
        metadata = {
            "format": FORMAT,
            "tokens": _encode_tokens(tokens),
            "trimmable": "1" if trimmable else "0",
            **self.identity.metadata(),
        }
        tmp = self.directory / f".{key}.tmp{SUFFIX}"
        save_prompt_cache(str(tmp), layers, metadata)
        size = tmp.stat().st_size
        if size > self.max_bytes:
            tmp.unlink(missing_ok=True)
            return
        os.replace(tmp, path)
        entry = _Entry(np.asarray(tokens, dtype=np.int64), path, size, trimmable)
        with self._lock:
            # Entries this one can be trimmed back to are redundant (as in memory).
            for other_key, other in list(self._entries.items()):
                n = len(other.tokens)
                if trimmable and n < len(entry.tokens) and _common_prefix(other.tokens, entry.tokens) == n:
                    self._entries.pop(other_key)
                    other.path.unlink(missing_ok=True)
            self._entries[key] = entry
            self.stats.writes += 1
            self.stats.write_bytes += size
            self.stats.writes_by_key[key] = self.stats.writes_by_key.get(key, 0) + 1
            self.stats.write_seconds += time.perf_counter() - t0
        self._evict()

    def _evict(self) -> None:
        files = []
        for path in self.directory.glob(f"*{SUFFIX}"):
            if path.name.startswith("."):
                continue
            try:
                st = path.stat()
            except OSError:
                continue
            files.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in files)
        files.sort()
        while files and total > self.max_bytes:
            _, size, path = files.pop(0)
            path.unlink(missing_ok=True)
            total -= size
            with self._lock:
                self._entries.pop(path.name[: -len(SUFFIX)], None)
        with self._lock:
            self.stats.entries = len(self._entries)
            self.stats.nbytes = total


# --- files -----------------------------------------------------------------------------------
def read_metadata(path: Path, size: int | None = None) -> dict[str, str]:
    """The metadata ``save_prompt_cache`` stored, read from the file's header only; ``ValueError`` when the
    header is malformed or the file is shorter than its header says."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("truncated header")
        (n,) = struct.unpack("<Q", head)
        if n > 100 * 1024 * 1024:
            raise ValueError("implausible header size")
        raw = f.read(n)
    if len(raw) < n:
        raise ValueError("truncated header")
    header = json.loads(raw)
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    size = path.stat().st_size if size is None else size
    if size < 8 + n + end:
        raise ValueError(f"truncated: {size} bytes of {8 + n + end}")
    # ``save_prompt_cache`` flattens [metadata, classes, scalars]: ours are the "0." keys.
    flat = header.get("__metadata__") or {}
    return {k[2:]: v for k, v in flat.items() if k.startswith("0.")}


def _exportable(cache: list[Any]) -> list[Any]:
    """mlx-lm cache objects holding exactly their tokens (no spare buffer), evaluated, of
    classes ``load_prompt_cache`` knows."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    out: list[Any] = []
    for layer in cache:
        if isinstance(layer, QuantizedKVCache) and layer.keys is not None:
            n = layer.offset
            keys = tuple(mx.contiguous(x[..., :n, :]) for x in layer.keys)
            values = tuple(mx.contiguous(x[..., :n, :]) for x in layer.values)
            layer = QuantizedKVCache.from_state((keys, values, n, layer.group_size, layer.bits))
        elif type(layer) is KVCache and layer.keys is not None:
            n = layer.offset
            layer = KVCache.from_state((mx.contiguous(layer.keys[..., :n, :]), mx.contiguous(layer.values[..., :n, :]), n))
        out.append(layer)
    mx.eval([layer.state for layer in out])
    return out


def _mergeable(layer: Any) -> Any:
    from .kv_quant import MergeableQuantizedKVCache

    keys, values, offset, group_size, bits = layer.state
    return MergeableQuantizedKVCache.from_state((tuple(keys), tuple(values), offset, group_size, bits))


def _encode_tokens(tokens: list[int]) -> str:
    return base64.b64encode(np.asarray(tokens, dtype="<i4").tobytes()).decode()


def _tokens(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<i4").astype(np.int64)


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


__all__ = ["CacheIdentity", "DiskPromptCache", "model_identity", "text_digest"]
