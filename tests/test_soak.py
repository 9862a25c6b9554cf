"""A bounded soak: many requests, 8 at a time, a third of them abandoned at random points and
a tenth malformed; then load -> generate -> unload cycles.

Every request is answered, cleanly refused with 429, or (malformed) refused with its 4xx;
afterwards nothing is in flight, and the process is back where it started (issue 20):

- Python threads and OS threads (``/proc/self/task``, which also sees MLX's native threads):
  exactly the starting count;
- open file descriptors: exactly the starting count;
- RSS: within ``RSS_TOLERANCE`` of the start (allocator caches and Python's free lists keep
  some pages; a leak of a request's or a model's buffers is far larger);
- MLX's active memory: no more than before (the bounded prompt cache aside).

``LIB_MLX_SOAK_REQUESTS`` (default 1000) and ``LIB_MLX_SOAK_CYCLES`` (default 30) scale it.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import json
import os
import random
import threading
import time

import httpx
import pytest

from hardening_support import Served, core_of, wait_for
from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig

REQUESTS = int(os.environ.get("LIB_MLX_SOAK_REQUESTS", "1000"))
CYCLES = int(os.environ.get("LIB_MLX_SOAK_CYCLES", "30"))
RSS_TOLERANCE = 64 * 1024 * 1024
CONCURRENCY = 8
QUEUE_LIMIT = 6  # below the concurrency, so that some requests meet a full queue
PROMPTS = ["hello", "tell me a story", "what is two plus two", "list three colours", "say something"]


def _threads() -> collections.Counter:
    """Live threads by kind; the server loop's default executor (``asyncio_N``, bounded by
    its ``max_workers``) is counted apart."""
    return collections.Counter("executor" if t.name.startswith("asyncio_") else "other" for t in threading.enumerate())


# Bounded pools that start their threads lazily, up to their size: counted apart, and checked
# against that size instead of the starting count.
_POOLS = ("asyncio_", "lib_mlx-render")


def _process() -> dict[str, int]:
    """What the process holds: Python threads and OS threads (both less the bounded pools'),
    the pools' threads, file descriptors, RSS bytes."""
    with open("/proc/self/statm") as f:
        rss_pages = int(f.read().split()[1])
    pooled = sum(1 for t in threading.enumerate() if t.name.startswith(_POOLS))
    return {
        "python_threads": threading.active_count() - pooled,
        "os_threads": len(os.listdir("/proc/self/task")) - pooled,
        "pool_threads": pooled,
        "fds": len(os.listdir("/proc/self/fd")),
        "rss": rss_pages * os.sysconf("SC_PAGE_SIZE"),
    }


def _back_to(start: dict[str, int], timeout: float = 10.0) -> dict[str, int]:
    """Waits (threads and sockets wind down) until counts are back at ``start``; returns the
    last reading."""
    now = _process()

    def settled() -> bool:
        nonlocal now
        gc.collect()
        now = _process()
        return all(now[k] <= start[k] for k in ("python_threads", "os_threads", "fds"))

    wait_for(settled, timeout, interval=0.1)
    return now


def _assert_back(start: dict[str, int], what: str) -> dict[str, int]:
    now = _back_to(start)
    for key in ("python_threads", "os_threads", "fds"):
        assert now[key] == start[key], f"{what}: {key} {start[key]} -> {now[key]}"
    from lib_mlx.server.context import MAX_CONCURRENT_RENDERS

    assert now["pool_threads"] <= min(32, (os.cpu_count() or 1) + 4) + MAX_CONCURRENT_RENDERS, now
    grown = now["rss"] - start["rss"]
    assert grown <= RSS_TOLERANCE, f"{what}: RSS grew by {grown / 2**20:.1f} MiB (tolerance {RSS_TOLERANCE / 2**20:.0f})"
    return now


if not os.path.isdir("/proc/self/task"):
    pytest.skip("the soak reads /proc (Linux)", allow_module_level=True)


def _mlx_bytes(s: Served) -> int:
    """MLX's active bytes less those the (bounded) prompt cache holds on purpose."""
    import mlx.core as mx

    gc.collect()
    return int(mx.get_active_memory()) - core_of(s.runtime, s.handle).stats().prompt_cache_bytes


async def _one(http: httpx.AsyncClient, s: Served, rng: random.Random, outcomes: collections.Counter) -> None:
    """One request; refused with 429, it backs off as ``Retry-After`` asks (scaled down) and
    tries again, a few times at most."""
    for _ in range(60):
        outcome = await _attempt(http, s, rng)
        outcomes[outcome] += 1
        if outcome != "429":
            return
        await asyncio.sleep(rng.uniform(0.02, 0.1))


# A tenth of the requests: each a different way to be wrong, each with its own 4xx.
MALFORMED = [
    (b"{not json", "application/json", 400, "invalid_json"),
    (json.dumps({"messages": "hello"}).encode(), "application/json", 400, None),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -3}).encode(), "application/json", 400, None),
    (b'{"messages": [{"role": "user", "content": "\\ud800"}]}', "application/json", 400, "invalid_json"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}], "chat_template_kwargs": {"chat_template": "x"}}).encode(), "application/json", 400, "unsupported_parameter"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), "text/plain", 415, "unsupported_media_type"),
    (json.dumps({"messages": [{"role": "user", "content": "x" * 40_000}]}).encode(), "application/json", 400, "context_length_exceeded"),
]


async def _malformed(http: httpx.AsyncClient, s: Served, rng: random.Random) -> str:
    body, content_type, status, code = rng.choice(MALFORMED)
    r = await http.post(s.base_url + "/v1/chat/completions", content=body, headers={"Content-Type": content_type})
    if r.status_code == 429:  # checks made while rendering wait for a queue slot like any request
        _check_refusal(r)
        return "429"
    assert r.status_code == status, (r.status_code, r.text, body[:80])
    error = r.json()["error"]
    assert code is None or error["code"] == code, (error, body[:80])
    return "malformed"


async def _attempt(http: httpx.AsyncClient, s: Served, rng: random.Random) -> str:
    if rng.random() < 0.1:
        return await _malformed(http, s, rng)
    body = {
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.randint(1, 12),
        "temperature": rng.choice([0.0, 0.7, 1.0]),
        "stream": rng.random() < 0.6,
    }
    url = s.base_url + "/v1/chat/completions"
    abandon = rng.random() < 1 / 3
    if abandon and not body["stream"]:
        # A plain request whose client gives up after a random wait.
        try:
            r = await asyncio.wait_for(http.post(url, json=body), timeout=rng.uniform(0.0, 0.15))
        except (TimeoutError, httpx.HTTPError):
            return "abandoned"
        return _check_plain(r)
    if not body["stream"]:
        return _check_plain(await http.post(url, json=body))
    async with http.stream("POST", url, json=body) as r:
        if r.status_code == 429:
            await r.aread()
            _check_refusal(r)
            return "429"
        assert r.status_code == 200, (r.status_code, await r.aread())
        stop_after = rng.randint(0, 6) if abandon else None
        frames: list[str] = []
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                frames.append(line[6:])
                if stop_after is not None and len(frames) > stop_after:
                    return "abandoned"  # leaving the block closes the connection mid-stream
    assert frames and frames[-1] == "[DONE]", frames[-3:]
    assert not any(f.startswith('{"error"') for f in frames), frames
    return "streamed"


def _check_refusal(r: httpx.Response) -> None:
    error = json.loads(r.content)["error"]
    assert error["code"] == "queue_full" and r.headers["retry-after"]


def _check_plain(r: httpx.Response) -> str:
    if r.status_code == 429:
        _check_refusal(r)
        return "429"
    assert r.status_code == 200, (r.status_code, r.text)
    assert r.json()["choices"][0]["finish_reason"] in ("stop", "length")
    return "answered"


async def _run(s: Served, n: int, seed: int) -> collections.Counter:
    seeds = [random.Random(seed + i).random() for i in range(n)]
    outcomes: collections.Counter = collections.Counter()
    gate = asyncio.Semaphore(CONCURRENCY)
    limits = httpx.Limits(max_connections=CONCURRENCY * 2, max_keepalive_connections=CONCURRENCY)

    async with httpx.AsyncClient(timeout=60, headers=s.headers, limits=limits) as http:

        async def guarded(i: int) -> None:
            async with gate:
                await _one(http, s, random.Random(seeds[i]), outcomes)

        await asyncio.gather(*(guarded(i) for i in range(n)))
    return outcomes


@pytest.mark.timeout(400)
def test_soak(make_model):
    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3", max_position_embeddings=512))))
        s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(queue_limit=QUEUE_LIMIT)))
        # Warm up at full concurrency: compiled samplers, the server loop's executor, the cache.
        asyncio.run(_run(s, 4 * CONCURRENCY, seed=1))
        assert wait_for(lambda: s.in_flight == 0, 10)
        gc.collect()
        start, memory = _process(), _mlx_bytes(s)

        t0 = time.monotonic()
        outcomes = asyncio.run(_run(s, REQUESTS, seed=2))
        elapsed = time.monotonic() - t0

        finished = outcomes["answered"] + outcomes["streamed"] + outcomes["abandoned"] + outcomes["malformed"]
        assert finished == REQUESTS, outcomes  # every request got through within its retries
        assert outcomes["answered"] + outcomes["streamed"] >= REQUESTS // 3, outcomes
        assert outcomes["abandoned"] >= REQUESTS // 5, outcomes  # a third of the well-formed ones
        assert outcomes["malformed"] >= REQUESTS // 20, outcomes
        assert wait_for(lambda: s.in_flight == 0, 10), f"{s.in_flight} still in flight"
        end = _assert_back(start, "after the requests")
        leaked = _mlx_bytes(s) - memory
        assert leaked <= 1 << 20, f"MLX holds {leaked} more bytes than before the soak"
        print(
            f"\nsoak: {dict(outcomes)} in {elapsed:.1f}s; start {start}; end {end}; "
            f"RSS {(end['rss'] - start['rss']) / 2**20:+.1f} MiB; MLX {leaked:+d} bytes"
        )
        s.assert_serving()
    finally:
        runtime.close()


@pytest.mark.timeout(400)
def test_load_generate_unload_cycles(make_model):
    """Each cycle loads the model, serves it, answers one request plain and one streamed, and
    unloads it: after the first (warm-up) cycle, nothing may accumulate -- not the native
    threads MLX gives each thread that evaluates arrays, not sockets, not the model's memory."""
    import mlx.core as mx

    model_dir = str(make_model("qwen3", max_position_embeddings=512))
    runtime = LibMlxRuntime()

    def cycle() -> None:
        handle = runtime.load_model(MlxModelConfig(model_dir))
        s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig()))
        with httpx.Client(base_url=s.base_url, headers=s.headers, timeout=30) as http:
            body = {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 4}
            assert http.post("/v1/chat/completions", json=body).status_code == 200
            with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
                assert r.status_code == 200 and any(line == "data: [DONE]" for line in r.iter_lines())
        runtime.unload_model(handle)

    try:
        cycle()
        gc.collect()
        start, active = _process(), int(mx.get_active_memory())
        t0 = time.monotonic()
        for _ in range(CYCLES):
            cycle()
        elapsed = time.monotonic() - t0
        end = _assert_back(start, f"after {CYCLES} cycles")
        assert int(mx.get_active_memory()) <= active + (1 << 20)
        print(f"\ncycles: {CYCLES} in {elapsed:.1f}s; start {start}; end {end}; RSS {(end['rss'] - start['rss']) / 2**20:+.1f} MiB")
    finally:
        runtime.close()
