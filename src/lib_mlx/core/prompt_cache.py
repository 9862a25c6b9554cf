"""Prompt (KV) cache reuse: a small LRU of model caches keyed by the tokens they hold.

A request whose prompt shares a prefix with an entry reuses that entry's keys and values and
processes only the rest. The rules that keep it correct:

- Reuse is the longest common prefix of token lists, never a "similar" history: an entry that
  runs past the common prefix is trimmed back to it (``trim_prompt_cache``) where every layer's
  cache can be trimmed, and is not used at all where one cannot (a sliding-window cache that
  has wrapped, a recurrent state).
- At least one prompt token is always left to process, so the model yields fresh logits.
- ``fetch`` hands out a snapshot (``copy.deepcopy``: new cache objects over the same immutable
  MLX arrays, ~0.2 ms; the first write into a shared buffer copies it lazily), so an entry stays
  valid while a request extends its own copy.
- A checkpoint taken at the end of a prompt, before generation, keeps a thinking model's history
  reusable: its next prompt drops the reasoning it generated, so the entry for prompt + output
  diverges right where the output began. Trimmable caches get the same from the final entry;
  the checkpoint matters for caches that cannot be trimmed back (see ``needs_checkpoints``).
- Bounded by entries and bytes, least recently used first out.

Only the engine's worker thread uses an instance (MLX objects never cross threads).
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import DEFAULT_PROMPT_CACHE_BYTES

DEFAULT_MAX_BYTES = DEFAULT_PROMPT_CACHE_BYTES
DEFAULT_MAX_ENTRIES = 16


def cache_nbytes(cache: list[Any]) -> int:
    total = 0
    for layer in cache:
        try:
            total += int(layer.nbytes)
        except (AttributeError, NotImplementedError):
            pass
    return total


def cache_length(cache: list[Any]) -> int | None:
    """Tokens held by the cache (the first layer with an ``offset``), or None if unknown."""
    for layer in cache:
        offset = getattr(layer, "offset", None)
        if isinstance(offset, int):
            return offset
    return None


def reserve(cache: list[Any], room: int) -> None:
    """Make each plain KV cache layer hold ``room`` more tokens in a buffer whose length is a
    multiple of the cache's ``step``, as a cache grown from empty always is.

    A snapshot trimmed back to a shared prefix ends mid-buffer; mlx-lm grows such a cache to
    ``offset + k * step``, a buffer length (hence memory strides) that nothing else produces.
    MLX's CUDA backend builds its attention kernels per input layout, the first time ~80 ms
    (measured with MLX 0.32.4 on an H200, Qwen3-0.6B shape, 226 tokens onto 579 cached: 90-100
    ms at each new length, 15-17 ms once built), so every reused conversation turn would pay it.
    Growing here to a multiple of ``step`` keeps the lengths to the few that fresh caches use;
    it copies what mlx-lm's own growth would have copied, and nothing when the buffer fits."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    for layer in cache:
        quantized = isinstance(layer, QuantizedKVCache)  # keys, values: (packed, scales, biases)
        if (type(layer) is not KVCache and not quantized) or layer.keys is None:
            continue
        held, need = layer.offset, layer.offset + room
        if (layer.keys[0] if quantized else layer.keys).shape[2] >= need:
            continue
        size = -(-need // layer.step) * layer.step

        def grown(old: Any) -> Any:
            new = mx.zeros((*old.shape[:2], size, old.shape[3]), old.dtype)
            new[..., :held, :] = old[..., :held, :]
            return new

        if quantized:
            layer.keys, layer.values = tuple(map(grown, layer.keys)), tuple(map(grown, layer.values))
        else:
            layer.keys, layer.values = grown(layer.keys), grown(layer.values)


def layouts_compile() -> bool:
    """Whether the backend builds kernels per KV-buffer layout (MLX's CUDA backend does, see
    ``reserve``), so that re-running up to a step of tokens is cheaper than meeting a new layout.
    Metal and the CPU do not: there the tokens are worth more than the layout."""
    try:
        import mlx.core as mx

        return bool(mx.default_device() == mx.gpu and mx.cuda.is_available())
    except Exception:  # noqa: BLE001 - an MLX without the cuda module has no CUDA backend
        return False


def whole_step_prefix(reused: int, step: int = 256) -> int:
    """The longest prefix of ``reused`` tokens that fills whole cache steps: a batched request
    keeps only that much of a reused cache where layouts compile (``layouts_compile``), because
    mlx-lm's ``BatchKVCache.merge`` copies a reused cache into a buffer of exactly its length,
    and every length is a new layout."""
    return reused - reused % step


def round_batch_buffers(layers: Sequence[Any]) -> None:
    """Pad every batched KV layer's buffer out to a whole number of steps (zeros past the
    tokens it holds, which nothing reads).

    mlx-lm's ``BatchKVCache`` gets buffers of any length when caches join a batch (``merge``:
    exactly the longest history; ``extend``: the longer of two buffers) or leave it
    (``filter`` drops shared left padding). Its growth only keeps whole steps from a buffer
    that already has them, so one odd length lives on for the rest of the batch, and on CUDA
    each one costs a kernel build (see ``reserve``) in the middle of everyone's decoding. Done
    between steps; a copy only when a layer's length is off."""
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache

    from .kv_quant import BatchQuantizedKVCache

    for layer in layers:
        quantized = type(layer) is BatchQuantizedKVCache  # keys, values: (packed, scales, biases)
        if (type(layer) is not BatchKVCache and not quantized) or layer.keys is None:
            continue
        size = (layer.keys[0] if quantized else layer.keys).shape[2]
        extra = -size % layer.step
        if extra:
            pad = [(0, 0), (0, 0), (0, extra), (0, 0)]
            if quantized:
                layer.keys = tuple(mx.pad(x, pad) for x in layer.keys)
                layer.values = tuple(mx.pad(x, pad) for x in layer.values)
            else:
                layer.keys, layer.values = mx.pad(layer.keys, pad), mx.pad(layer.values, pad)


def is_trimmable(cache: list[Any]) -> bool:
    return bool(cache) and all(layer.is_trimmable() for layer in cache)


def needs_checkpoints(cache: list[Any]) -> bool:
    """Whether a cache may become untrimmable during generation, so that a prompt-end
    checkpoint is the only way back to the end of the prompt. Plain (and quantized) KV caches
    can always be trimmed; sliding-window and recurrent caches cannot once they wrap."""
    from mlx_lm.models.cache import KVCache, QuantizedKVCache

    return not all(type(layer) is KVCache or isinstance(layer, QuantizedKVCache) for layer in cache)


def _compute(cache: list[Any]) -> None:
    """Evaluate what the cache holds. A cache taken out of a batch (mlx-lm's ``extract``) is a
    lazy copy of its rows of the batch's buffers; kept unevaluated, it would keep those whole
    buffers (every row, every step of room) alive behind an entry that counts only its own
    bytes."""
    import mlx.core as mx

    mx.eval([layer.state for layer in cache])


def _common_prefix(a: np.ndarray, b: np.ndarray) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.flatnonzero(a[:n] != b[:n])
    return int(diff[0]) if len(diff) else n


@dataclass
class _Entry:
    tokens: np.ndarray
    cache: list[Any]
    nbytes: int
    trimmable: bool


@dataclass
class CacheHit:
    """A snapshot to extend in place, holding ``reused`` tokens of the prompt."""

    cache: list[Any]
    reused: int


@dataclass
class CacheStats:
    entries: int = 0
    nbytes: int = 0
    hits: int = 0
    misses: int = 0
    reused_tokens: int = 0


class PromptCache:
    """An LRU of (tokens, model cache) entries bounded by count and bytes."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES, *, disk: Any = None
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        # A ``disk_cache.DiskPromptCache``: entries stored here are also written there (once
        # each, off this thread), and a prompt it holds a longer prefix of is loaded from it.
        self.disk = disk
        self._entries: OrderedDict[int, _Entry] = OrderedDict()
        self._keys = iter(range(1 << 62))
        self._nbytes = 0
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0 and self.max_entries > 0

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
        self._nbytes = 0
        self.stats.entries = self.stats.nbytes = 0

    # lookup -----------------------------------------------------------------------------
    def fetch(self, tokens: Sequence[int]) -> CacheHit | None:
        """The entry sharing the longest usable prefix with ``tokens``, as a snapshot trimmed
        to that prefix; None when nothing can be reused."""
        if len(tokens) < 2:
            self.stats.misses += 1
            return None
        query = np.asarray(tokens, dtype=np.int64)
        limit = len(tokens) - 1  # leave one token to process
        best_key, best_len = self._best(query, limit)
        if self.disk is not None and self._from_disk(query, limit, best_len):
            best_key, best_len = self._best(query, limit)
        if best_key is None or best_len == 0:
            self.stats.misses += 1
            return None
        entry = self._entries[best_key]
        self._entries.move_to_end(best_key)
        cache = copy.deepcopy(entry.cache)
        excess = len(entry.tokens) - best_len
        if excess:
            from mlx_lm.models.cache import trim_prompt_cache

            trim_prompt_cache(cache, excess)
        self.stats.hits += 1
        self.stats.reused_tokens += best_len
        return CacheHit(cache, best_len)

    def _best(self, query: np.ndarray, limit: int) -> tuple[int | None, int]:
        best_key, best_len = None, 0
        for key, entry in self._entries.items():
            common = min(_common_prefix(entry.tokens, query), limit)
            usable = common if (common == len(entry.tokens) or entry.trimmable) else 0
            if usable > best_len or (usable == best_len and usable and best_key is not None):
                best_key, best_len = key, usable  # ties: the most recently used wins
        return best_key, best_len

    def _from_disk(self, query: np.ndarray, limit: int, in_memory: int) -> bool:
        """Load the disk entry sharing a longer prefix than memory has into memory (a restart,
        or an entry evicted from memory). Returns whether one was loaded."""
        found = self.disk.lookup(query, limit)
        if found is None or found[1] <= in_memory:
            return False
        loaded = self.disk.load(found[0])
        if loaded is None:
            return False
        tokens, cache = loaded
        return self.insert(tokens, cache, persist=False)

    # storage ----------------------------------------------------------------------------
    def insert(self, tokens: Sequence[int], cache: list[Any], *, snapshot: bool = False, persist: bool = True) -> bool:
        """Keep ``cache`` as holding exactly ``tokens`` (and queue it for the disk store, unless
        ``persist`` is false). ``snapshot=True`` stores a copy (for a cache that the caller goes
        on mutating: the prompt-end checkpoint). Returns whether it was stored."""
        if not self.enabled or not tokens or not cache:
            return False
        held = cache_length(cache)
        if held is not None and held != len(tokens):
            return False  # the cache does not hold what we think it does: never store a lie
        nbytes = cache_nbytes(cache)
        if nbytes > self.max_bytes:
            return False
        if snapshot:
            cache = copy.deepcopy(cache)
        _compute(cache)
        entry = _Entry(np.asarray(tokens, dtype=np.int64), cache, nbytes, is_trimmable(cache))
        # Entries that are prefixes of the new one are redundant when it can be trimmed back to
        # them; an identical token list is replaced.
        for key, other in list(self._entries.items()):
            n = len(other.tokens)
            if n <= len(entry.tokens) and _common_prefix(other.tokens, entry.tokens) == n:
                if n == len(entry.tokens) or entry.trimmable:
                    self._drop(key)
        self._entries[next(self._keys)] = entry
        self._nbytes += nbytes
        while self._entries and (len(self._entries) > self.max_entries or self._nbytes > self.max_bytes):
            self._drop(next(iter(self._entries)))
        self.stats.entries = len(self._entries)
        self.stats.nbytes = self._nbytes
        if persist and self.disk is not None:
            self.disk.put(list(tokens), cache, trimmable=entry.trimmable)
        return True

    def _drop(self, key: int) -> None:
        entry = self._entries.pop(key)
        self._nbytes -= entry.nbytes
        self.stats.entries = len(self._entries)
        self.stats.nbytes = self._nbytes



def generation_prompt_tails(tokenizer: Any) -> list[tuple[int, ...]]:
    """The token sequences the chat template appends to open the assistant's turn (with
    thinking on and off), longest first: ``<|im_start|>assistant\\n``, ``...<think>\\n\\n</think>\\n\\n``,
    ``<|turn>model\\n``... A checkpoint goes just before them, at the end of the conversation
    itself: the next turn's prompt repeats the history but not necessarily this opening (an
    empty thinking block, an opened reasoning channel)."""
    if getattr(tokenizer, "chat_template", None) is None:
        return []
    messages = [{"role": "user", "content": "checkpoint"}]
    tails: set[tuple[int, ...]] = set()
    for thinking in (True, False):
        try:
            head = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False, enable_thinking=thinking)
            full = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, enable_thinking=thinking)
        except Exception:  # noqa: BLE001 - a template we cannot probe: checkpoint at the end
            continue
        if full.startswith(head) and len(full) > len(head):
            tail = tuple(tokenizer.encode(full[len(head) :], add_special_tokens=False))
            if tail:
                tails.add(tail)
    return sorted(tails, key=len, reverse=True)


def history_end(tokens: Sequence[int], tails: list[tuple[int, ...]]) -> int:
    """Where the conversation ends and the assistant's opening begins (see
    ``generation_prompt_tails``); the prompt's last token when no opening is recognised."""
    n = len(tokens)
    for tail in tails:
        k = len(tail)
        if k < n and tuple(tokens[n - k :]) == tail:
            return n - k
    return n - 1


__all__ = ["CacheHit", "PromptCache", "cache_length", "generation_prompt_tails", "history_end", "needs_checkpoints"]
