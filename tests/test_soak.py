"""A bounded soak: many requests, 8 at a time, a third of them abandoned at random points.

Every request is answered or cleanly refused with 429; afterwards nothing is in flight, no
thread was left behind and MLX holds no more memory than before (the prompt cache aside, which
is bounded and accounted for). ``LIB_MLX_SOAK_REQUESTS`` scales it (default 300).
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

REQUESTS = int(os.environ.get("LIB_MLX_SOAK_REQUESTS", "300"))
CONCURRENCY = 8
QUEUE_LIMIT = 6  # below the concurrency, so that some requests meet a full queue
PROMPTS = ["hello", "tell me a story", "what is two plus two", "list three colours", "say something"]


def _threads() -> collections.Counter:
    """Live threads by kind; the server loop's default executor (``asyncio_N``, bounded by
    its ``max_workers``) is counted apart."""
    return collections.Counter("executor" if t.name.startswith("asyncio_") else "other" for t in threading.enumerate())


def _mlx_bytes(s: Served) -> int:
    """MLX's active bytes less those the (bounded) prompt cache holds on purpose."""
    import mlx.core as mx

    gc.collect()
    return int(mx.get_active_memory()) - core_of(s.runtime, s.handle).stats().prompt_cache_bytes


async def _one(http: httpx.AsyncClient, s: Served, rng: random.Random, outcomes: collections.Counter) -> None:
    """One request; refused with 429, it backs off as ``Retry-After`` asks (scaled down) and
    tries again, a few times at most."""
    for _ in range(20):
        outcome = await _attempt(http, s, rng)
        outcomes[outcome] += 1
        if outcome != "429":
            return
        await asyncio.sleep(rng.uniform(0.02, 0.1))


async def _attempt(http: httpx.AsyncClient, s: Served, rng: random.Random) -> str:
    body = {
        "messages": [{"role": "user", "content": rng.choice(PROMPTS)}],
        "max_tokens": rng.randint(1, 32),
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


@pytest.mark.timeout(240)
def test_soak(make_model):
    runtime = LibMlxRuntime()
    try:
        handle = runtime.load_model(MlxModelConfig(str(make_model("qwen3", max_position_embeddings=512))))
        s = Served(runtime, handle, runtime.start_server(handle, MlxServerConfig(queue_limit=QUEUE_LIMIT)))
        # Warm up at full concurrency: compiled samplers, the server loop's executor, the cache.
        asyncio.run(_run(s, 2 * CONCURRENCY, seed=1))
        assert wait_for(lambda: s.in_flight == 0, 10)
        threads, memory = _threads(), _mlx_bytes(s)

        t0 = time.monotonic()
        outcomes = asyncio.run(_run(s, REQUESTS, seed=2))
        elapsed = time.monotonic() - t0

        finished = outcomes["answered"] + outcomes["streamed"] + outcomes["abandoned"]
        assert finished == REQUESTS, outcomes  # every request got through within its retries
        assert outcomes["answered"] + outcomes["streamed"] >= REQUESTS // 3, outcomes
        assert outcomes["abandoned"] >= REQUESTS // 6, outcomes
        assert wait_for(lambda: s.in_flight == 0, 10), f"{s.in_flight} still in flight"
        assert wait_for(lambda: _threads()["other"] == threads["other"], 10), (threads, _threads())
        assert _threads()["executor"] <= min(32, (os.cpu_count() or 1) + 4)
        leaked = _mlx_bytes(s) - memory
        assert leaked <= 1 << 20, f"MLX holds {leaked} more bytes than before the soak"
        print(f"\nsoak: {dict(outcomes)} in {elapsed:.1f}s; threads {dict(_threads())}; MLX {leaked:+d} bytes")
        s.assert_serving()
    finally:
        runtime.close()
