"""The prompt cache on disk (issue 21): entries survive a new store over the same directory,
each is written exactly once and off the caller's thread, an entry of another model or
``kv_bits`` is never used, a corrupt or truncated file is skipped with a warning, and the
directory stays under its byte budget, least recently used out first."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.cache import KVCache

from lib_mlx.core.disk_cache import CacheIdentity, DiskPromptCache
from lib_mlx.core.kv_quant import KVQuantization, MergeableQuantizedKVCache, quantize_layer
from lib_mlx.core.prompt_cache import PromptCache

ID = CacheIdentity(model="m1", dtype="float32", template="t1")


def cache_of(n: int, seed: int = 0, layers: int = 2) -> list[KVCache]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(layers):
        c = KVCache()
        c.update_and_fetch(*(mx.array(rng.standard_normal((1, 2, n, 32)).astype(np.float32)) for _ in range(2)))
        out.append(c)
    return out


def same(a: list, b: list) -> None:
    for x, y in zip(a, b):
        assert x.offset == y.offset
        for p, q in zip(x.keys_and_values(), y.keys_and_values()):
            if isinstance(p, tuple):
                for pp, qq in zip(p, q):
                    np.testing.assert_array_equal(np.array(pp), np.array(qq))
            else:
                np.testing.assert_array_equal(np.array(p), np.array(q))


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "kv"


def test_an_entry_survives_a_restart_and_is_written_once(store_dir) -> None:
    disk = DiskPromptCache(store_dir, 1 << 30, ID)
    tokens = list(range(10, 30))
    cache = cache_of(20)
    assert disk.put(tokens, cache, trimmable=True)
    assert not disk.put(tokens, cache, trimmable=True)  # queued already
    disk.flush()
    assert not disk.put(tokens, cache, trimmable=True)  # on disk already
    assert disk.stats.writes == 1 and list(disk.stats.writes_by_key.values()) == [1]
    disk.close()

    again = DiskPromptCache(store_dir, 1 << 30, ID)  # a restart
    found = again.lookup(tokens + [99], limit=len(tokens))
    assert found is not None and found[1] == 20
    loaded_tokens, loaded = again.load(found[0])
    assert loaded_tokens == tokens
    same(loaded, cache)
    assert not again.put(tokens, loaded, trimmable=True)  # never rewritten after a restart
    again.close()


def test_quantized_entries_round_trip_as_mergeable(store_dir) -> None:
    q = KVQuantization(4, 32)
    cache = [quantize_layer(c, q) for c in cache_of(12)]
    ident = CacheIdentity(model="m1", dtype="float32", kv_bits=4, kv_group_size=32, template="t1")
    disk = DiskPromptCache(store_dir, 1 << 30, ident)
    disk.put(list(range(12)), cache, trimmable=True)
    disk.flush()
    _, loaded = disk.load(disk.lookup(list(range(13)), 12)[0])
    assert all(type(c) is MergeableQuantizedKVCache and c.bits == 4 for c in loaded)
    same(loaded, cache)
    disk.close()


@pytest.mark.parametrize(
    "other",
    [
        CacheIdentity(model="m2", dtype="float32", template="t1"),
        CacheIdentity(model="m1", dtype="float32", kv_bits=8, kv_group_size=64, template="t1"),
        CacheIdentity(model="m1", dtype="bfloat16", template="t1"),
        CacheIdentity(model="m1", dtype="float32", template="t2"),
    ],
    ids=["model", "kv_bits", "dtype", "template"],
)
def test_an_entry_of_another_model_or_kv_bits_is_never_used(store_dir, other) -> None:
    disk = DiskPromptCache(store_dir, 1 << 30, ID)
    disk.put(list(range(8)), cache_of(8), trimmable=True)
    disk.close()
    mismatched = DiskPromptCache(store_dir, 1 << 30, other)
    assert mismatched.lookup(list(range(9)), 8) is None
    assert mismatched.stats.rejected == 1
    mismatched.close()


def test_a_corrupt_or_truncated_file_is_skipped_with_a_warning(store_dir, caplog) -> None:
    disk = DiskPromptCache(store_dir, 1 << 30, ID)
    disk.put(list(range(8)), cache_of(8), trimmable=True)
    disk.put(list(range(50, 60)), cache_of(10, seed=1), trimmable=True)
    disk.close()
    files = sorted(store_dir.glob("*.safetensors"))
    assert len(files) == 2
    data = files[0].read_bytes()
    files[0].write_bytes(data[: len(data) // 2])  # truncated
    caplog.set_level(logging.WARNING, logger="lib_mlx.disk_cache")
    again = DiskPromptCache(store_dir, 1 << 30, ID)
    assert again.stats.corrupt == 1 and again.stats.entries == 1
    assert "truncated" in caplog.text
    # A file whose tensors are garbage behind a good header fails on load: skipped, forgotten.
    (key, _), = [(k, e) for k, e in again._entries.items()]
    path = again._entries[key].path
    raw = bytearray(path.read_bytes())
    raw[8:12] = b"\xff\xff\xff\xff"  # breaks the header's JSON
    path.write_bytes(bytes(raw))
    found = again.lookup(again._entries[key].tokens.tolist() + [1], 100)
    assert found is not None and again.load(found[0]) is None
    assert again.lookup(list(range(50, 61)), 100) is None
    again.close()


def test_the_directory_stays_under_its_budget_least_recently_used_first(store_dir) -> None:
    one = DiskPromptCache(store_dir, 1 << 30, ID)
    one.put(list(range(8)), cache_of(8), trimmable=True)
    one.flush()
    size = next(store_dir.glob("*.safetensors")).stat().st_size
    one.close()
    disk = DiskPromptCache(store_dir, int(size * 2.5), ID)
    disk.put(list(range(100, 108)), cache_of(8, 1), trimmable=True)
    disk.flush()
    time.sleep(0.02)
    assert disk.load(disk.lookup(list(range(9)), 8)[0]) is not None  # touch the first
    time.sleep(0.02)
    disk.put(list(range(200, 208)), cache_of(8, 2), trimmable=True)
    disk.flush()
    assert disk.stats.nbytes <= size * 2.5
    assert disk.lookup(list(range(9)), 8) is not None  # recently used: kept
    assert disk.lookup(list(range(100, 109)), 8) is None  # least recently used: gone
    disk.close()


def test_writes_happen_off_the_callers_thread(store_dir, monkeypatch) -> None:
    import lib_mlx.core.disk_cache as dc

    threads = []
    real = dc.DiskPromptCache._write

    def spy(self, *args):
        threads.append(threading.current_thread().name)
        return real(self, *args)

    monkeypatch.setattr(dc.DiskPromptCache, "_write", spy)
    disk = DiskPromptCache(store_dir, 1 << 30, ID)
    disk.put(list(range(8)), cache_of(8), trimmable=True)
    disk.flush()
    disk.close()
    assert threads == ["lib_mlx-disk-cache"]


def test_the_memory_cache_reloads_from_disk_after_a_restart(store_dir) -> None:
    memory = PromptCache(disk=DiskPromptCache(store_dir, 1 << 30, ID))
    tokens = list(range(10, 40))
    memory.insert(tokens, cache_of(30))
    memory.disk.flush()
    memory.disk.close()
    fresh = PromptCache(disk=DiskPromptCache(store_dir, 1 << 30, ID))  # a restart
    hit = fresh.fetch(tokens[:25] + [7, 8, 9])
    assert hit is not None and hit.reused == 25
    assert fresh.disk.stats.hits == 1 and fresh.disk.stats.writes == 0  # loading writes nothing
    assert len(fresh) == 1
    fresh.disk.close()
