"""Quantized KV caches, alone and in continuous batching.

mlx-lm quantizes a single stream's cache (``QuantizedKVCache``, ``generate_step(kv_bits=...)``),
but its ``BatchGenerator`` has no quantized batch cache: ``BatchKVCache`` merges, extends,
filters and trims full-precision buffers only. ``BatchQuantizedKVCache`` does the same for
quantized ones (each of keys and values a ``(packed, scales, biases)`` triple, rows
left-padded as in ``BatchKVCache``), and ``MergeableQuantizedKVCache`` is mlx-lm's single cache
with the ``merge`` that ``BatchGenerator`` calls to build a batch from caches.

Quantization is per token and head (groups run along the head dimension), so a row quantizes
the same whether it sits alone or in a batch, and padding never touches another row's groups:
a batched quantized request gives the answer it gives alone.

The rule for when a cache turns quantized (``KVQuantization.start``): a cache holding at least
``start`` tokens after a step is converted whole, as mlx-lm's ``maybe_quantize_kv_cache`` does.
With ``start`` 0 (the default here) caches are quantized from their first token, in both paths
alike. In a batch the rows share one buffer: it turns quantized when its longest row reaches
``start`` (its size is what memory pays for), so a shorter row may be quantized earlier than it
would be alone; with ``start`` 0 batched and lone runs quantize identically.

What cannot be quantized stays full precision, and ``plan`` says which: sliding-window layers
(mlx-lm's ``RotatingKVCache`` has no quantized form) and recurrent states. A model whose
attention cannot read a quantized cache at all (attention sinks, KV-shared layers reading
another layer's keys) fails the load-time probe (``check_model``) with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
from mlx.utils import tree_map
from mlx_lm.models.base import create_causal_mask
from mlx_lm.models.cache import (
    BatchKVCache,
    KVCache,
    QuantizedKVCache,
    _BaseCache,
    dynamic_roll,
)

SUPPORTED_BITS = (4, 8)
SUPPORTED_GROUP_SIZES = (32, 64, 128)


@dataclass(frozen=True)
class KVQuantization:
    """How a model's KV caches are quantized: ``bits`` per value in groups of ``group_size``
    along the head dimension, from the ``start``-th token a cache holds."""

    bits: int
    group_size: int = 64
    start: int = 0

    def __post_init__(self) -> None:
        if self.bits not in SUPPORTED_BITS:
            raise ValueError(f"kv_bits must be one of {SUPPORTED_BITS}, not {self.bits}")
        if self.group_size not in SUPPORTED_GROUP_SIZES:
            raise ValueError(f"kv_group_size must be one of {SUPPORTED_GROUP_SIZES}, not {self.group_size}")
        if self.start < 0:
            raise ValueError("quantized_kv_start must be >= 0")


# --- single caches ----------------------------------------------------------------------------
class MergeableQuantizedKVCache(QuantizedKVCache):
    """mlx-lm's ``QuantizedKVCache`` that a ``BatchGenerator`` can merge into a batch."""

    @classmethod
    def merge(cls, caches: list[Any]) -> "BatchQuantizedKVCache":
        return BatchQuantizedKVCache.merge(caches)

    def to_quantized(self, group_size: int = 64, bits: int = 4) -> "MergeableQuantizedKVCache":
        return self  # already quantized: a no-op for ``maybe_quantize_kv_cache``


def quantize_layer(layer: Any, q: KVQuantization) -> Any:
    """The quantized form of one cache layer, or the layer itself where it has none."""
    if isinstance(layer, QuantizedKVCache):
        return layer if type(layer) is MergeableQuantizedKVCache else _mergeable(layer)
    if type(layer) is KVCache:
        new = MergeableQuantizedKVCache(group_size=q.group_size, bits=q.bits)
        if layer.keys is not None:
            held = layer.offset
            new.keys = mx.quantize(layer.keys[..., :held, :], group_size=q.group_size, bits=q.bits)
            new.values = mx.quantize(layer.values[..., :held, :], group_size=q.group_size, bits=q.bits)
        new.offset = layer.offset
        return new
    if type(layer) is BatchKVCache:
        return BatchQuantizedKVCache.from_batch(layer, q)
    return layer


def _mergeable(layer: QuantizedKVCache) -> MergeableQuantizedKVCache:
    new = MergeableQuantizedKVCache(group_size=layer.group_size, bits=layer.bits)
    new.keys, new.values, new.offset = layer.keys, layer.values, layer.offset
    return new


def quantizable(layer: Any) -> bool:
    return type(layer) in (KVCache, BatchKVCache) or isinstance(layer, (QuantizedKVCache, BatchQuantizedKVCache))


def make_cache(model: Any, q: KVQuantization | None) -> list[Any]:
    """A fresh cache for ``model``: with ``q`` and ``q.start`` 0, plain KV layers come quantized
    from the first token (sliding-window and recurrent layers stay as they are)."""
    from mlx_lm.models.cache import make_prompt_cache

    cache = make_prompt_cache(model)
    if q is not None and q.start == 0:
        cache = [quantize_layer(layer, q) for layer in cache]
    return cache


def maybe_quantize(cache: list[Any], q: KVQuantization | None) -> bool:
    """Convert, in place, the layers of ``cache`` that hold at least ``q.start`` tokens and can
    be quantized (a batch layer: when its longest row does). Returns whether any changed."""
    if q is None:
        return False
    changed = False
    for i, layer in enumerate(cache):
        if type(layer) is KVCache and layer.offset >= q.start:
            cache[i] = quantize_layer(layer, q)
            changed = True
        elif type(layer) is BatchKVCache and layer.keys is not None and _longest_row(layer) >= q.start:
            cache[i] = quantize_layer(layer, q)
            changed = True
        elif type(layer) is QuantizedKVCache:
            cache[i] = _mergeable(layer)
    return changed


def _longest_row(layer: BatchKVCache) -> int:
    return int(mx.max(layer.offset).item()) if layer.offset.size else 0


def plan(model: Any, q: KVQuantization | None) -> dict[str, Any]:
    """What ``q`` does to ``model``'s cache layers: how many are quantized, and the kinds that
    stay full precision (for the status report)."""
    from mlx_lm.models.cache import make_prompt_cache

    layers = make_prompt_cache(model)
    kept = sorted({type(layer).__name__ for layer in layers if not quantizable(layer)})
    return {
        "kv_bits": q.bits if q else None,
        "kv_group_size": q.group_size if q else None,
        "quantized_kv_start": q.start if q else None,
        "quantized_layers": sum(quantizable(layer) for layer in layers) if q else 0,
        "layers": len(layers),
        "full_precision_kinds": kept if q else sorted({type(layer).__name__ for layer in layers}),
    }


def check_model(model: Any, q: KVQuantization) -> None:
    """Run two tokens through ``model`` with a quantized cache; raise ``ValueError`` saying why
    when its attention cannot read one (or no layer can be quantized)."""
    from mlx_lm.models.cache import make_prompt_cache

    layers = make_prompt_cache(model)
    if not any(quantizable(layer) for layer in layers):
        kinds = sorted({type(layer).__name__ for layer in layers})
        raise ValueError(f"kv_bits: none of this model's cache layers can be quantized ({', '.join(kinds)})")
    cache = [quantize_layer(layer, q) for layer in layers]
    try:
        out = model(mx.array([[1, 2]]), cache=cache)
        mx.eval(out)
        out = model(mx.array([[3]]), cache=cache)
        mx.eval(out)
    except Exception as exc:  # noqa: BLE001 - turned into the load error
        raise ValueError(f"kv_bits: this model's attention cannot read a quantized KV cache ({type(exc).__name__}: {exc})") from None


# --- the batch cache --------------------------------------------------------------------------
def _quantize(x: mx.array, group_size: int, bits: int) -> tuple[mx.array, mx.array, mx.array]:
    return tuple(mx.quantize(x, group_size=group_size, bits=bits))  # type: ignore[return-value]


def _empty_triple(rows: int, heads: int, length: int, like: tuple[mx.array, ...]) -> tuple[mx.array, ...]:
    return tuple(mx.zeros((rows, heads, length, part.shape[-1]), dtype=part.dtype) for part in like)


class BatchQuantizedKVCache(_BaseCache):
    """``BatchKVCache`` with quantized keys and values (left-padded rows, one write index)."""

    step = 256

    def __init__(self, left_padding: list[int], group_size: int = 64, bits: int = 8) -> None:
        self.keys: tuple[mx.array, ...] | None = None
        self.values: tuple[mx.array, ...] | None = None
        self.left_padding = mx.array(left_padding)
        self.offset = mx.array([-p for p in left_padding])
        self._idx = 0
        self._right_padding: mx.array | None = None
        self.group_size = group_size
        self.bits = bits

    # building -------------------------------------------------------------------------
    @classmethod
    def merge(cls, caches: list[Any]) -> "BatchQuantizedKVCache":
        """One batch of single caches (quantized, or plain ones quantized here), right-aligned
        as ``BatchKVCache.merge`` aligns them."""
        settings = next(((c.group_size, c.bits) for c in caches if isinstance(c, QuantizedKVCache)), None)
        if settings is None:
            raise ValueError("BatchQuantizedKVCache.merge needs at least one quantized cache")
        group_size, bits = settings
        q = KVQuantization(bits, group_size)
        caches = [quantize_layer(c, q) if type(c) is KVCache else c for c in caches]
        lengths = [c.offset for c in caches]
        longest = max(lengths)
        padding = [longest - n for n in lengths]
        batch = cls(padding, group_size, bits)
        if longest == 0:
            return batch
        like = [c for c in caches if c.keys is not None][0]
        heads = like.keys[0].shape[1]
        keys = _empty_triple(len(caches), heads, longest, like.keys)
        values = _empty_triple(len(caches), heads, longest, like.values)
        for i, (p, c) in enumerate(zip(padding, caches)):
            if c.keys is None or c.offset == 0:
                continue
            for dst, src in zip(keys, c.keys):
                dst[i : i + 1, :, p : p + c.offset] = src[..., : c.offset, :]
            for dst, src in zip(values, c.values):
                dst[i : i + 1, :, p : p + c.offset] = src[..., : c.offset, :]
        batch.keys, batch.values = keys, values
        batch.offset = batch.offset + longest
        batch._idx = longest
        return batch

    @classmethod
    def from_batch(cls, layer: BatchKVCache, q: KVQuantization) -> "BatchQuantizedKVCache":
        """A running ``BatchKVCache`` quantized in place of it (same rows, padding, index)."""
        new = cls([0], q.group_size, q.bits)
        new.left_padding, new.offset, new._idx = layer.left_padding, layer.offset, layer._idx
        new._right_padding = layer._right_padding
        if layer.keys is not None:
            new.keys = _quantize(layer.keys[..., : layer._idx, :], q.group_size, q.bits)
            new.values = _quantize(layer.values[..., : layer._idx, :], q.group_size, q.bits)
        return new

    # the model's calls -------------------------------------------------------------------
    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[tuple[mx.array, ...], tuple[mx.array, ...]]:
        prev = self._idx
        n = keys.shape[2]
        if self.keys is None or prev + n > self.keys[0].shape[2]:
            rows, heads = keys.shape[:2]
            length = (self.step + n - 1) // self.step * self.step
            new_k = _quantize(mx.zeros((rows, heads, length, keys.shape[3]), keys.dtype), self.group_size, self.bits)
            new_v = _quantize(mx.zeros((rows, heads, length, values.shape[3]), values.dtype), self.group_size, self.bits)
            if self.keys is not None:
                assert self.values is not None
                if prev % self.step != 0:
                    self.keys, self.values = tree_map(lambda x: x[..., :prev, :], (self.keys, self.values))
                self.keys = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.keys, new_k))
                self.values = tuple(mx.concatenate([a, b], axis=2) for a, b in zip(self.values, new_v))
            else:
                self.keys, self.values = new_k, new_v
        assert self.values is not None
        self.offset = self.offset + n
        self._idx += n
        qk = _quantize(keys, self.group_size, self.bits)
        qv = _quantize(values, self.group_size, self.bits)
        for dst, src in zip(self.keys, qk):
            dst[..., prev : self._idx, :] = src
        for dst, src in zip(self.values, qv):
            dst[..., prev : self._idx, :] = src
        return self.keys_and_values()

    def keys_and_values(self) -> tuple[tuple[mx.array, ...], tuple[mx.array, ...]]:
        assert self.keys is not None and self.values is not None
        idx = self._idx
        return tree_map(lambda x: x[..., :idx, :], (self.keys, self.values))

    def make_mask(self, N: int, return_array: bool = False, **kwargs: Any) -> mx.array:
        return create_causal_mask(N, offset=self._idx, left_padding=self.left_padding, **kwargs)

    # BatchGenerator's calls --------------------------------------------------------------
    def prepare(self, *, left_padding: list[int] | None = None, lengths: Any = None, right_padding: list[int] | None = None) -> None:
        if left_padding is not None:
            if self.keys is not None:
                raise ValueError("Left padding can only be added to an empty BatchQuantizedKVCache")
            pad = mx.array(left_padding)
            self.left_padding = self.left_padding + pad
            self.offset = self.offset - pad
        if right_padding is not None and max(right_padding) > 0:
            self._right_padding = mx.array(right_padding)

    def finalize(self) -> None:
        if self._right_padding is None:
            return
        padding = self._right_padding
        if self.keys is not None:
            assert self.values is not None
            self.keys = tuple(dynamic_roll(x, padding[:, None], axis=2) for x in self.keys)
            self.values = tuple(dynamic_roll(x, padding[:, None], axis=2) for x in self.values)
        self.offset = self.offset - padding
        self.left_padding = self.left_padding + padding
        self._right_padding = None

    @property
    def state(self) -> tuple[Any, ...]:
        return self.keys, self.values, self.offset, self.left_padding

    @state.setter
    def state(self, v: tuple[Any, ...]) -> None:
        self.keys, self.values, self.offset, self.left_padding = v

    @property
    def meta_state(self) -> tuple[str, ...]:
        return tuple(map(str, (self._idx, self.group_size, self.bits)))

    @meta_state.setter
    def meta_state(self, v: tuple[str, ...]) -> None:
        self._idx, self.group_size, self.bits = map(int, v)

    def is_trimmable(self) -> bool:
        return True

    def trim(self, n: int) -> int:
        n = min(self._idx, n)
        self._idx -= n
        self.offset = self.offset - n
        return n

    def filter(self, batch_indices: Any) -> None:
        """Keep only the rows ``batch_indices`` (in place), dropping left padding they share."""
        if self.keys is not None:
            assert self.values is not None
            self.keys = tuple(x[batch_indices] for x in self.keys)
            self.values = tuple(x[batch_indices] for x in self.values)
        self.offset = self.offset[batch_indices]
        self.left_padding = self.left_padding[batch_indices]
        shared = min(self.left_padding.tolist()) if self.left_padding.size else 0
        if shared > 0:
            if self.keys is not None:
                assert self.values is not None
                self.keys = tuple(x[..., shared:, :] for x in self.keys)
                self.values = tuple(x[..., shared:, :] for x in self.values)
            self._idx -= shared
            self.left_padding = self.left_padding - shared

    def extend(self, other: Any) -> None:
        """Append ``other``'s rows (in place), right-aligned to the longer write index. A
        full-precision ``BatchKVCache`` (a prompt batch that has not reached ``start``) is
        quantized on the way in."""
        if type(other) is BatchKVCache:
            other = BatchQuantizedKVCache.from_batch(other, KVQuantization(self.bits, self.group_size))
        if self.keys is None and other.keys is None:
            self.left_padding = mx.concatenate([self.left_padding, other.left_padding])
            self.offset = mx.concatenate([self.offset, other.offset])
            self._idx = max(self._idx, other._idx)
            return
        top = max(self._idx, other._idx)
        like = self.keys if self.keys is not None else other.keys
        like_v = self.values if self.values is not None else other.values
        size = max(c.keys[0].shape[2] for c in (self, other) if c.keys is not None)

        def aligned(c: "BatchQuantizedKVCache") -> tuple[Any, Any, mx.array, mx.array]:
            rows = c.offset.shape[0]
            k = c.keys if c.keys is not None else _empty_triple(rows, like[0].shape[1], 0, like)
            v = c.values if c.values is not None else _empty_triple(rows, like_v[0].shape[1], 0, like_v)
            left = top - c._idx
            right = size - k[0].shape[2] - left
            if right < 0:
                k = tuple(x[..., :right, :] for x in k)
                v = tuple(x[..., :right, :] for x in v)
                right = 0
            if left or right:
                pad = [(0, 0), (0, 0), (left, right), (0, 0)]
                k = tuple(mx.pad(x, pad) for x in k)
                v = tuple(mx.pad(x, pad) for x in v)
            return k, v, c.offset, c.left_padding + left

        (k1, v1, o1, l1), (k2, v2, o2, l2) = aligned(self), aligned(other)
        self.keys = tuple(mx.concatenate([a, b]) for a, b in zip(k1, k2))
        self.values = tuple(mx.concatenate([a, b]) for a, b in zip(v1, v2))
        self.offset = mx.concatenate([o1, o2])
        self.left_padding = mx.concatenate([l1, l2])
        self._idx = top

    def extract(self, idx: int) -> MergeableQuantizedKVCache:
        """Row ``idx`` as a single quantized cache (its padding cut off)."""
        cache = MergeableQuantizedKVCache(group_size=self.group_size, bits=self.bits)
        padding = int(self.left_padding[idx].item())
        if self.keys is not None:
            assert self.values is not None
            cache.keys = tuple(mx.contiguous(x[idx : idx + 1, :, padding : self._idx]) for x in self.keys)
            cache.values = tuple(mx.contiguous(x[idx : idx + 1, :, padding : self._idx]) for x in self.values)
        cache.offset = self._idx - padding
        return cache

    def size(self) -> int:
        return self._idx

    def empty(self) -> bool:
        return self.keys is None

    @property
    def nbytes(self) -> int:
        if self.keys is None or self.values is None:
            return 0
        return sum(x.nbytes for x in (*self.keys, *self.values))


__all__ = [
    "BatchQuantizedKVCache",
    "KVQuantization",
    "MergeableQuantizedKVCache",
    "check_model",
    "make_cache",
    "maybe_quantize",
    "plan",
    "quantize_layer",
]
