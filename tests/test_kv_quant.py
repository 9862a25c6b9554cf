"""Quantized KV caches (issue 21): the batch cache behaves as mlx-lm's ``BatchKVCache`` does
(merge, extend, filter, trim, extract, right-padding), row for row what a lone quantized cache
holds; and through mlx-lm's own ``BatchGenerator`` a batch of quantized requests answers as
each does alone through ``generate_step``."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import BatchKVCache, KVCache, QuantizedKVCache

from long_context_support import attentive
from lib_mlx.core.kv_quant import (
    BatchQuantizedKVCache,
    KVQuantization,
    MergeableQuantizedKVCache,
    check_model,
    make_cache,
    maybe_quantize,
    plan,
    quantize_layer,
)

Q = KVQuantization(bits=4, group_size=32)
H, D = 2, 64


def kv(n: int, seed: int) -> tuple[mx.array, mx.array]:
    rng = np.random.default_rng(seed)
    return mx.array(rng.standard_normal((1, H, n, D)).astype(np.float32)), mx.array(rng.standard_normal((1, H, n, D)).astype(np.float32))


def lone(n: int, seed: int) -> MergeableQuantizedKVCache:
    cache = MergeableQuantizedKVCache(group_size=Q.group_size, bits=Q.bits)
    cache.update_and_fetch(*kv(n, seed))
    return cache


def dequant(triple: tuple[mx.array, ...]) -> np.ndarray:
    return np.array(mx.dequantize(*triple, group_size=Q.group_size, bits=Q.bits))


def rows_equal(batch: BatchQuantizedKVCache, singles: list[QuantizedKVCache]) -> None:
    """Every row of ``batch``, padding cut off, holds exactly what its lone cache holds."""
    for i, single in enumerate(singles):
        row = batch.extract(i)
        assert row.offset == single.offset
        k, v = row.keys_and_values()
        want_k, want_v = single.keys_and_values()
        np.testing.assert_array_equal(dequant(k), dequant(want_k))
        np.testing.assert_array_equal(dequant(v), dequant(want_v))


def test_merge_extend_filter_trim_follow_batch_kv_cache() -> None:
    singles = [lone(5, 1), lone(9, 2), lone(3, 3)]
    batch = MergeableQuantizedKVCache.merge(singles)
    plain = BatchKVCache.merge([_plain(5, 1), _plain(9, 2), _plain(3, 3)])
    assert batch.left_padding.tolist() == plain.left_padding.tolist() == [4, 0, 6]
    assert batch.offset.tolist() == plain.offset.tolist() and batch.size() == plain.size() == 9
    rows_equal(batch, singles)

    # a decode step for every row
    step = [kv(1, 10 + i) for i in range(3)]
    batch.update_and_fetch(mx.concatenate([k for k, _ in step]), mx.concatenate([v for _, v in step]))
    for single, (k, v) in zip(singles, step):
        single.update_and_fetch(k, v)
    rows_equal(batch, singles)
    assert batch.offset.tolist() == [6, 10, 4]

    # a newcomer joins (longer than everyone: the others gain left padding)
    newcomer = lone(14, 4)
    batch.extend(MergeableQuantizedKVCache.merge([newcomer]))
    singles.append(newcomer)
    rows_equal(batch, singles)
    assert batch.size() == 14

    # the longest leaves: shared left padding is dropped
    batch.filter([0, 2])
    kept = [singles[0], singles[2]]
    rows_equal(batch, kept)
    assert min(batch.left_padding.tolist()) == 0 and batch.size() == 6

    # trim one token off every row
    batch.trim(1)
    for single in kept:
        single.trim(1)
    rows_equal(batch, kept)
    assert batch.nbytes > 0


def test_a_full_precision_batch_joins_a_quantized_one() -> None:
    batch = MergeableQuantizedKVCache.merge([lone(4, 1)])
    plain = BatchKVCache.merge([_plain(7, 2)])
    batch.extend(plain)
    rows_equal(batch, [lone(4, 1), lone(7, 2)])


def test_right_padded_prompts_end_aligned() -> None:
    """``BatchGenerator`` right-pads prompts of unequal length, then ``finalize`` rolls them to
    the right; the quantized batch ends where the plain one does."""
    batch = BatchQuantizedKVCache([0, 0], Q.group_size, Q.bits)
    ka, va = kv(6, 1)
    kb, vb = kv(4, 2)
    pad = [(0, 0), (0, 0), (0, 2), (0, 0)]
    batch.prepare(lengths=[6, 4], right_padding=[0, 2])
    batch.update_and_fetch(mx.concatenate([ka, mx.pad(kb, pad)]), mx.concatenate([va, mx.pad(vb, pad)]))
    batch.finalize()
    assert batch.left_padding.tolist() == [0, 2] and batch.offset.tolist() == [6, 4]
    a, b = MergeableQuantizedKVCache(Q.group_size, Q.bits), MergeableQuantizedKVCache(Q.group_size, Q.bits)
    a.update_and_fetch(ka, va)
    b.update_and_fetch(kb, vb)
    rows_equal(batch, [a, b])


def test_a_running_plain_batch_is_quantized_in_place() -> None:
    plain = BatchKVCache.merge([_plain(5, 1), _plain(8, 2)])
    layers: list = [plain]
    assert not maybe_quantize(layers, KVQuantization(4, 32, start=9))  # longest row 8 < 9
    assert maybe_quantize(layers, KVQuantization(4, 32, start=8))
    assert type(layers[0]) is BatchQuantizedKVCache
    rows_equal(layers[0], [lone(5, 1), lone(8, 2)])


def _plain(n: int, seed: int) -> KVCache:
    cache = KVCache()
    cache.update_and_fetch(*kv(n, seed))
    return cache


def test_a_plain_cache_quantizes_to_what_a_quantized_one_holds() -> None:
    converted = quantize_layer(_plain(7, 5), Q)
    assert type(converted) is MergeableQuantizedKVCache and converted.offset == 7
    want = lone(7, 5)
    np.testing.assert_array_equal(dequant(converted.keys_and_values()[0]), dequant(want.keys_and_values()[0]))


def test_quantized_batch_generation_answers_as_each_does_alone(make_model) -> None:
    """mlx-lm's BatchGenerator over quantized caches (our merge) against generate_step alone
    over a quantized cache: the same greedy tokens for every prompt."""
    from mlx_lm import load
    from mlx_lm.generate import BatchGenerator, generate_step

    model, _ = load(str(make_model("qwen3", hidden_size=128, num_layers=2, head_dim=64)))
    attentive(model)
    q = KVQuantization(bits=4, group_size=32)
    check_model(model, q)
    prompts = [[5, 6, 7, 8, 9], [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21], [30, 31, 32]]
    n = 12
    alone = []
    for p in prompts:
        cache = make_cache(model, q)
        alone.append([t for t, _ in generate_step(mx.array(p), model, max_tokens=n, prompt_cache=cache)])
        assert all(type(c) is MergeableQuantizedKVCache for c in cache)
    gen = BatchGenerator(model, completion_batch_size=4, prefill_batch_size=4)
    uids = gen.insert(prompts, max_tokens=[n] * 3, caches=[make_cache(model, q) for _ in prompts])
    out: dict[int, list[int]] = {u: [] for u in uids}
    while any(len(v) < n for v in out.values()):
        for r in gen.next_generated():
            out[r.uid].append(r.token)
    gen.close()
    assert [out[u] for u in uids] == alone


def test_plan_says_what_stays_full_precision(make_model) -> None:
    from mlx_lm import load

    model, _ = load(str(make_model("gemma4_text", hidden_size=128, num_layers=5, sliding_window=16)))
    q = KVQuantization(bits=8, group_size=32)
    check_model(model, q)
    info = plan(model, q)
    assert info["quantized_layers"] == 1 and info["layers"] == 5
    assert info["full_precision_kinds"] == ["RotatingKVCache"]


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="kv_bits"):
        KVQuantization(bits=3)
    with pytest.raises(ValueError, match="kv_group_size"):
        KVQuantization(bits=4, group_size=16)


def test_quantized_buffers_keep_whole_steps_for_cuda() -> None:
    """``reserve`` (a reused single cache) and ``round_batch_buffers`` (a batch) keep quantized
    buffers, like full-precision ones, to whole steps: CUDA builds kernels per layout."""
    from lib_mlx.core.prompt_cache import reserve, round_batch_buffers

    single = lone(300, 1)
    single.trim(45)  # a reused prefix: 255 tokens in a 512-token buffer
    reserve([single], 300)
    assert all(x.shape[2] == 768 for x in single.keys + single.values)
    batch = MergeableQuantizedKVCache.merge([lone(5, 1), lone(9, 2)])  # a 9-token buffer
    round_batch_buffers([batch])
    assert all(x.shape[2] == 256 for x in batch.keys + batch.values)
    rows_equal(batch, [lone(5, 1), lone(9, 2)])
