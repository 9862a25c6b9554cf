"""Concurrent requests batched through mlx-lm's BatchGenerator (issue 8): the same answers as
one at a time, each request with its own sampling, budget, stop strings and cancellation, and
its own events -- through the engine and through the server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from lib_mlx.core import ChatPrompt, Generation, SamplingParams, batching
from lib_mlx.core.engine import Engine
from lib_mlx.core.events import Done, ReasoningDelta, TextDelta
from lib_mlx.core.loader import LoadedModel, load
from lib_mlx.core.prompt import render
from lib_mlx.config import MlxModelConfig
from lib_mlx.errors import QueueFullError
from lib_mlx.tiny_models import TRIGGERS

QUESTIONS = [
    "What is the weather like in Paris?",
    "Name three rivers of Europe, please, and tell me which one is longest.",
    "Hi",
    "Count from one to ten in French and then in German.",
]


@pytest.fixture(scope="module", params=["qwen3", "gemma4_text"])
def loaded(request, make_model) -> LoadedModel:
    kwargs = {"sliding_window": 16, "num_layers": 5} if request.param == "gemma4_text" else {"num_layers": 3}
    return load(MlxModelConfig(str(make_model(request.param, hidden_size=64, **kwargs))))


@pytest.fixture
def engine(loaded) -> Iterator[Engine]:
    engine = Engine(loaded, queue_limit=4, prompt_cache_bytes=0)
    yield engine
    engine.close()


@pytest.fixture(params=[0, 8, 256], ids=["plain-layouts", "cuda-layouts", "cuda-layouts-no-whole-step"])
def layout_rules(request, monkeypatch) -> int:
    """Also run with the rules for backends that build kernels per KV-buffer layout (CUDA):
    a batched request keeps only whole cache steps of a reused or handed-over cache and runs
    the rest again. With steps of 8 tokens these short prompts have some to keep; with CUDA's
    real 256 nothing is kept (a short chat on a GPU)."""
    step = request.param
    if step:
        monkeypatch.setattr(batching, "layouts_compile", lambda: True)
        monkeypatch.setattr(batching, "whole_step_prefix", lambda n: n - n % step)
    return step


def submit(
    engine: Engine, loaded: LoadedModel, question: str | list[dict[str, Any]], arrival: Any = None, **params: Any
) -> Generation:
    messages = [{"role": "user", "content": question}] if isinstance(question, str) else question
    rendered = render(loaded, ChatPrompt(messages=messages))
    sampling = SamplingParams(**{"temperature": 0.0, "ignore_eos": True, "max_tokens": 12, **params})
    return engine.submit(rendered, sampling, arrival=arrival)


def collect(generation: Generation) -> tuple[str, Done]:
    text = []
    for event in generation:
        if isinstance(event, (TextDelta, ReasoningDelta)):
            text.append(event.text)
        elif isinstance(event, Done):
            return "".join(text), event
    raise AssertionError("no Done")


def test_batched_answers_equal_one_at_a_time(loaded, engine) -> None:
    alone = Engine(loaded, queue_limit=1, prompt_cache_bytes=0)
    try:
        expected = [collect(submit(alone, loaded, q, max_tokens=8 + i)) for i, q in enumerate(QUESTIONS)]
    finally:
        alone.close()
    generations = [submit(engine, loaded, q, max_tokens=8 + i) for i, q in enumerate(QUESTIONS)]
    got = [collect(g) for g in generations]
    for (text, done), (want, want_done) in zip(got, expected):
        assert text == want
        assert done.finish_reason == want_done.finish_reason == "length"
        assert done.usage.completion_tokens == want_done.usage.completion_tokens
        assert done.usage.prompt_tokens == want_done.usage.prompt_tokens


def test_requests_run_together_not_one_after_another(loaded, engine) -> None:
    long = submit(engine, loaded, QUESTIONS[0], max_tokens=400)
    next(iter(long))  # the long one is decoding
    short = submit(engine, loaded, QUESTIONS[1], max_tokens=3)
    _, done = collect(short)
    assert done.usage.completion_tokens == 3
    assert not long.finished.is_set()  # the short one finished while the long one ran
    long.cancel()
    _, done = collect(long)
    assert done.finish_reason == "cancelled" and done.usage.completion_tokens < 400


@pytest.mark.parametrize("sampling", [{"temperature": 0.0}, {"temperature": 1.0, "seed": 7}], ids=["greedy", "seeded"])
def test_a_request_joined_mid_answer_answers_as_if_alone(loaded, engine, sampling, layout_rules) -> None:
    """A request that starts alone runs through generate_step; when a second arrives it moves
    into a batch (Qwen3's trimmable caches) or was batched from the start (Gemma 4's rotating
    ones). Either way its answer is the one it gives alone."""
    alone = Engine(loaded, queue_limit=1, prompt_cache_bytes=0)
    try:
        want, _ = collect(submit(alone, loaded, QUESTIONS[3], max_tokens=40, **sampling))
    finally:
        alone.close()
    first = submit(engine, loaded, QUESTIONS[3], max_tokens=40, **sampling)
    events = iter(first)
    head = [next(events)]  # decoding has begun
    second = submit(engine, loaded, QUESTIONS[0], max_tokens=10)
    rest = list(events)
    text = "".join(e.text for e in head + rest if isinstance(e, (TextDelta, ReasoningDelta)))
    done = rest[-1]
    assert isinstance(done, Done) and done.usage.completion_tokens == 40
    assert text == want
    assert collect(second)[1].usage.completion_tokens == 10
    stats = engine.stats()
    assert stats.handoffs == (1 if loaded.model_type == "qwen3" else 0)
    assert stats.batch_runs == 1 and stats.max_batch_size == 2
    assert stats.completion_tokens == 50 and stats.finished == 2


def test_a_batched_request_reusing_a_cache_answers_as_if_alone(loaded, layout_rules) -> None:
    """The second turn of a chat joins a running request and reuses the first turn's cache (with
    the CUDA rules: only whole steps of it); both answer as they would alone, uncached."""
    turn1 = [{"role": "user", "content": QUESTIONS[1]}]
    turn2 = [*turn1, {"role": "assistant", "content": "The Danube, the Rhine and the Loire."}, {"role": "user", "content": QUESTIONS[3]}]
    alone = Engine(loaded, queue_limit=1, prompt_cache_bytes=0)
    try:
        want_long = collect(submit(alone, loaded, QUESTIONS[0], max_tokens=60))[0]
        want = collect(submit(alone, loaded, turn2, max_tokens=20))[0]
    finally:
        alone.close()
    engine = Engine(loaded, queue_limit=4)
    try:
        collect(submit(engine, loaded, turn1))
        long = submit(engine, loaded, QUESTIONS[0], max_tokens=60)
        events = iter(long)
        head = [next(events)]  # decoding has begun
        text, done = collect(submit(engine, loaded, turn2, max_tokens=20))
        rest = list(events)
    finally:
        engine.close()
    assert text == want
    assert "".join(e.text for e in head + rest if isinstance(e, (TextDelta, ReasoningDelta))) == want_long
    step, cached = layout_rules, done.usage.cached_tokens
    if step > len(render(loaded, ChatPrompt(messages=turn2)).tokens):
        assert cached == 0  # under a step to reuse: run again rather than meet a new layout
    else:
        assert cached > 0
        if step and loaded.model_type == "qwen3":  # trimmable: whole steps of it
            assert cached % step == 0


def test_on_cuda_a_batch_reuses_whole_steps_of_a_cache_or_nothing(make_model) -> None:
    """Where kernels are built per KV-buffer layout, a batched request keeps whole 256-token
    steps of a trimmable hit, and a sliding-window hit (which cannot be cut) only if it holds
    at least a step: less saves a GPU nothing and costs a kernel build."""
    from mlx_lm.models.cache import make_prompt_cache

    from lib_mlx.core.prompt_cache import CacheHit

    loaded = load(MlxModelConfig(str(make_model("qwen3", hidden_size=64, num_layers=2))))
    cache = make_prompt_cache(loaded.model)
    import mlx.core as mx

    loaded.model(mx.zeros((1, 600), dtype=mx.int32), cache=cache)
    kept = batching.whole_steps_of(CacheHit(cache, 600))
    assert kept is not None and kept.reused == 512 and cache[0].offset == 512
    assert batching.whole_steps_of(CacheHit(make_prompt_cache(loaded.model), 255)) is None
    assert batching.at_least_a_step(CacheHit([], 255)) is None
    assert batching.at_least_a_step(CacheHit([], 300)) is not None


def test_a_burst_announced_while_rendering_starts_as_one_batch(loaded, engine) -> None:
    """The server announces each request while its prompt renders; the first one submitted
    waits for the others (they come moments later) and all prefill together, rather than the
    first alone and the rest after its first token."""
    arrivals = [engine.announce() for _ in range(3)]
    first = submit(engine, loaded, QUESTIONS[0], arrivals[0])
    time.sleep(0.01)  # the others are still rendering
    rest = [submit(engine, loaded, q, a) for q, a in zip(QUESTIONS[1:], arrivals[1:])]
    assert all(collect(g)[1].usage.completion_tokens == 12 for g in [first, *rest])
    stats = engine.stats()
    assert [s.prompts for s in stats.recent_steps if s.kind == "batch_start"] == [3]
    assert stats.handoffs == 0 and stats.single_runs == 0
    assert stats.announced == 0


def test_an_announced_request_that_never_comes_holds_nobody_for_long(loaded, engine) -> None:
    stray = engine.announce()  # e.g. its request failed validation after rendering
    started = time.monotonic()
    assert collect(submit(engine, loaded, QUESTIONS[2], max_tokens=2))[1].usage.completion_tokens == 2
    assert time.monotonic() - started < 30  # not a hang: the wait is bounded
    assert engine.announced == 1
    stray.close()
    stray.close()  # idempotent
    assert engine.announced == 0
    alone = Engine(loaded, queue_limit=1)
    try:
        assert alone.announce() is None  # nothing to batch with: nothing to wait for
    finally:
        alone.close()


def test_each_request_keeps_its_own_sampling(loaded, engine) -> None:
    alone = Engine(loaded, queue_limit=1, prompt_cache_bytes=0)
    try:
        seeded_alone = collect(submit(alone, loaded, QUESTIONS[0], temperature=1.0, seed=1234))[0]
    finally:
        alone.close()
    generations = [
        submit(engine, loaded, QUESTIONS[0], temperature=1.0, seed=1234),
        submit(engine, loaded, QUESTIONS[1], temperature=0.8, top_p=0.9),
        submit(engine, loaded, QUESTIONS[2], max_tokens=5),
        submit(engine, loaded, QUESTIONS[3], temperature=1.0, seed=99, max_tokens=7),
    ]
    results = [collect(g) for g in generations]
    assert results[0][0] == seeded_alone  # a seed gives the same draws in a batch as alone
    assert [r[1].usage.completion_tokens for r in results] == [12, 12, 5, 7]


def test_stop_strings_and_cancellation_are_per_request(loaded, engine) -> None:
    reference, _ = collect(submit(engine, loaded, QUESTIONS[0], max_tokens=12))
    stop = reference[len(reference) // 2 :][:2] or reference[-1:]
    cut = submit(engine, loaded, QUESTIONS[0], max_tokens=12, stop=(stop,))
    cancelled = submit(engine, loaded, QUESTIONS[1], max_tokens=400)
    free = submit(engine, loaded, QUESTIONS[2], max_tokens=12)
    cancelled.cancel()
    cut_text, cut_done = collect(cut)
    _, cancelled_done = collect(cancelled)
    free_text, free_done = collect(free)
    assert cut_done.finish_reason == "stop" and cut_text == reference[: reference.index(stop)]
    assert cancelled_done.finish_reason == "cancelled" and cancelled_done.usage.completion_tokens < 400
    assert free_done.finish_reason == "length" and free_done.usage.completion_tokens == 12


def test_queue_limit_still_bounds_requests_in_flight(loaded, engine) -> None:
    generations = [submit(engine, loaded, QUESTIONS[i], max_tokens=200) for i in range(4)]
    with pytest.raises(QueueFullError):
        submit(engine, loaded, QUESTIONS[0])
    for generation in generations:
        generation.cancel()
    assert all(collect(g)[1].finish_reason == "cancelled" for g in generations)
    assert engine.in_flight == 0


# --- through the server ------------------------------------------------------------------------
PIECES = {
    "thinking": ["<think>", "\nHmm", ".\n", "</think>", "Hello", " there", "!"],
    "no_thinking": ["Bonjour", " à", " vous", "."],
}


def test_concurrent_streams_through_the_server_each_get_their_own_answer(serve, make_model) -> None:
    triggers = TRIGGERS["qwen3"]
    model_dir = make_model("qwen3", chains={triggers[k]: v for k, v in PIECES.items()})
    with serve(model_dir, queue_limit=4) as s:
        results: dict[int, Any] = {}
        barrier = threading.Barrier(4)

        def stream(i: int) -> None:
            client = s.client()
            thinking = i % 2 == 0
            barrier.wait()
            chunks = list(
                client.chat.completions.create(
                    model=s.info.model_id,
                    messages=[{"role": "user", "content": QUESTIONS[i]}],
                    stream=True,
                    stream_options={"include_usage": True},
                    extra_body={"chat_template_kwargs": {"enable_thinking": thinking}},
                )
            )
            content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for c in chunks if c.choices)
            results[i] = (thinking, content, reasoning, chunks[-1].usage)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
    assert sorted(results) == [0, 1, 2, 3]
    for thinking, content, reasoning, usage in results.values():
        if thinking:
            assert content == "Hello there!" and reasoning.strip() == "Hmm."
            assert usage.completion_tokens == len(PIECES["thinking"])
        else:
            assert content == "Bonjour à vous." and reasoning == ""
            assert usage.completion_tokens == len(PIECES["no_thinking"])
