"""Long contexts in small memory through the engine (issue 21): quantized KV caches answer as a
lone quantized run does when batched and when reused from the prompt cache; the disk prompt
cache survives a restart and refuses another ``kv_bits``; speculative decoding equals plain
greedy alone and steps aside in a batch; the runtime's status reports KV bytes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lib_mlx.config import MlxModelConfig
from lib_mlx.core import ChatPrompt, SamplingParams
from lib_mlx.core.engine import Engine, Generation
from lib_mlx.core.engine_options import build_options
from lib_mlx.core.events import Done, ReasoningDelta, TextDelta
from lib_mlx.core.kv_quant import BatchQuantizedKVCache, MergeableQuantizedKVCache
from lib_mlx.core.loader import LoadedModel, load
from lib_mlx.core.prompt import render
from lib_mlx.errors import InvalidConfigError

from long_context_support import attentive

QUESTIONS = [
    "What is the weather like in Paris?",
    "Name three rivers of Europe, please, and tell me which one is longest.",
    "Count from one to ten in French and then in German.",
]


@pytest.fixture(scope="module", params=["qwen3", "gemma4_text"])
def model_dir(request, make_model) -> Path:
    if request.param == "gemma4_text":
        return make_model("gemma4_text", hidden_size=128, num_layers=5, sliding_window=16)
    return make_model("qwen3", hidden_size=128, num_layers=3, head_dim=64)


@pytest.fixture(scope="module")
def loaded(model_dir) -> LoadedModel:
    loaded = load(MlxModelConfig(str(model_dir)))
    attentive(loaded.model)
    return loaded


def engine_for(loaded: LoadedModel, queue_limit: int = 1, prompt_cache_bytes: int = 0, **fields: Any) -> Engine:
    config = MlxModelConfig(str(loaded.model_path), **fields)
    return Engine(loaded, queue_limit=queue_limit, prompt_cache_bytes=prompt_cache_bytes, options=build_options(config, loaded))


def submit(engine: Any, loaded: LoadedModel, messages: str | list[dict[str, Any]], **params: Any) -> Generation:
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    sampling = SamplingParams(**{"temperature": 0.0, "ignore_eos": True, "max_tokens": 16, **params})
    return engine.submit(render(loaded, ChatPrompt(messages=messages)), sampling)


def collect(generation: Generation) -> tuple[str, Done]:
    text = []
    for event in generation:
        if isinstance(event, (TextDelta, ReasoningDelta)):
            text.append(event.text)
        elif isinstance(event, Done):
            return "".join(text), event
    raise AssertionError("no Done")


KV4 = {"kv_bits": 4, "kv_group_size": 32}


def wait_for(condition: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def alone(loaded: LoadedModel, questions: list[Any], **fields: Any) -> list[str]:
    engine = engine_for(loaded, **fields)
    try:
        return [collect(submit(engine, loaded, q, max_tokens=10 + i))[0] for i, q in enumerate(questions)]
    finally:
        engine.close()


def test_quantized_batched_answers_equal_lone_quantized_runs(loaded) -> None:
    want = alone(loaded, QUESTIONS, **KV4)
    assert want != alone(loaded, QUESTIONS)  # 4-bit keys and values do change this model's answers
    engine = engine_for(loaded, queue_limit=4, **KV4)
    try:
        generations = [submit(engine, loaded, q, max_tokens=10 + i) for i, q in enumerate(QUESTIONS)]
        got = [collect(g)[0] for g in generations]
    finally:
        engine.close()
    assert got == want


@pytest.mark.parametrize("start", [0, 40], ids=["from-the-start", "from-token-40"])
def test_a_reused_quantized_cache_answers_as_a_fresh_one(loaded, start) -> None:
    """The second turn reuses the first turn's quantized cache, alone and joining a batch;
    both answer as a lone run without any cache."""
    fields = {**KV4, "quantized_kv_start": start}
    turn1 = [{"role": "user", "content": QUESTIONS[1]}]
    turn2 = [*turn1, {"role": "assistant", "content": "The Danube, the Rhine and the Loire."}, {"role": "user", "content": QUESTIONS[2]}]
    (want,) = alone(loaded, [turn2], **fields)
    for queue_limit in (1, 4):
        engine = engine_for(loaded, queue_limit=queue_limit, prompt_cache_bytes=1 << 30, **fields)
        try:
            collect(submit(engine, loaded, turn1))
            wait_for(lambda: len(engine.prompt_cache) > 0)  # stored just after Done
            entry = next(iter(engine.prompt_cache._entries.values()))
            kinds = {type(layer) for layer in entry.cache}
            if start == 0:
                assert MergeableQuantizedKVCache in kinds
            other = submit(engine, loaded, QUESTIONS[0], max_tokens=30) if queue_limit > 1 else None
            text, done = collect(submit(engine, loaded, turn2, max_tokens=10))
            if other is not None:
                collect(other)
        finally:
            engine.close()
        assert done.usage.cached_tokens > 0
        if start == 0:
            assert text == want


def test_a_batch_turns_quantized_when_its_longest_row_reaches_the_start(loaded, monkeypatch) -> None:
    from lib_mlx.core import batching

    quantized = []
    real = batching.BatchRunner._quantize_all

    def spy(self):
        quantized.append(True)
        return real(self)

    monkeypatch.setattr(batching.BatchRunner, "_quantize_all", spy)
    engine = engine_for(loaded, queue_limit=4, **KV4, quantized_kv_start=60)
    try:
        gens = [submit(engine, loaded, q, max_tokens=40) for q in QUESTIONS]
        for g in gens:
            assert collect(g)[1].usage.completion_tokens == 40
    finally:
        engine.close()
    assert quantized  # prompts of ~20-30 tokens + 40 generated pass 60


def test_the_disk_cache_survives_a_restart_and_refuses_other_kv_bits(loaded, tmp_path) -> None:
    turn1 = [{"role": "user", "content": QUESTIONS[1]}]
    turn2 = [*turn1, {"role": "assistant", "content": "The Danube."}, {"role": "user", "content": QUESTIONS[2]}]
    (want,) = alone(loaded, [turn2], **KV4)
    disk = {"prompt_cache_dir": str(tmp_path / "kv"), **KV4}
    engine = engine_for(loaded, prompt_cache_bytes=1 << 30, **disk)
    try:
        collect(submit(engine, loaded, turn1))
    finally:
        engine.close()  # flushes the writer
    files = list((tmp_path / "kv").glob("*.safetensors"))
    assert files

    engine = engine_for(loaded, prompt_cache_bytes=1 << 30, **disk)  # a restart
    try:
        text, done = collect(submit(engine, loaded, turn2, max_tokens=10))
        assert engine.options.disk.stats.hits == 1
    finally:
        engine.close()
    assert done.usage.cached_tokens > 0 and text == want

    engine = engine_for(loaded, prompt_cache_bytes=1 << 30, prompt_cache_dir=str(tmp_path / "kv"), kv_bits=8, kv_group_size=32)
    try:
        _, done = collect(submit(engine, loaded, turn2, max_tokens=10))
        assert engine.options.disk.stats.rejected >= 1
    finally:
        engine.close()
    assert done.usage.cached_tokens == 0


def test_status_reports_kv_bytes(runtime, model_dir, tmp_path) -> None:
    handle = runtime.load_model(MlxModelConfig(str(model_dir), prompt_cache_dir=str(tmp_path / "kv"), **KV4))
    core = runtime._entry(handle).core
    running = submit(core, core.loaded, QUESTIONS[0], max_tokens=2000)
    next(iter(running))  # decoding
    assert runtime.server_status(handle)["kv_cache"]["live_bytes"] > 0
    running.cancel()
    collect(running)
    collect(submit(core, core.loaded, QUESTIONS[0]))
    wait_for(lambda: core.kv_status()["prompt_cache_entries"] > 0)
    core.options.disk.flush()
    status = runtime.server_status(handle)["kv_cache"]
    assert status["live_bytes"] == 0  # nothing running
    assert status["prompt_cache_bytes"] > 0 and status["prompt_cache_entries"] >= 1
    assert status["disk_cache_bytes"] > 0
    assert status["kv_quantization"]["kv_bits"] == 4 and status["kv_quantization"]["quantized_layers"] >= 1


# --- speculative -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def qwen(make_model) -> LoadedModel:
    loaded = load(MlxModelConfig(str(make_model("qwen3", hidden_size=128, num_layers=3, head_dim=64))))
    attentive(loaded.model)
    return loaded


@pytest.mark.parametrize("fields", [{"prompt_lookup": True}, {"draft_model_path": "self"}], ids=["prompt-lookup", "draft"])
def test_speculative_answers_equal_plain_greedy(qwen, fields) -> None:
    if fields.get("draft_model_path") == "self":
        fields = {"draft_model_path": str(qwen.model_path)}
    questions = [QUESTIONS[0] + " " + QUESTIONS[0], QUESTIONS[2]]
    want = alone(qwen, questions)
    engine = engine_for(qwen, **fields)
    try:
        got = [collect(submit(engine, qwen, q, max_tokens=10 + i))[0] for i, q in enumerate(questions)]
        stats = engine.options.speculation.stats
    finally:
        engine.close()
    assert got == want
    assert stats.emitted == 10 + 11 and stats.drafted > 0


def test_a_speculative_request_joins_a_batch_without_speculation(qwen) -> None:
    want = alone(qwen, [QUESTIONS[2], QUESTIONS[0]])
    engine = engine_for(qwen, queue_limit=4, prompt_lookup=True)
    try:
        first = submit(engine, qwen, QUESTIONS[2], max_tokens=10)
        events = iter(first)
        head = [next(events)]  # decoding (speculatively) has begun
        second = submit(engine, qwen, QUESTIONS[0], max_tokens=11)
        rest = list(events)
        text = "".join(e.text for e in head + rest if isinstance(e, (TextDelta, ReasoningDelta)))
        assert [text, collect(second)[0]] == want
    finally:
        engine.close()


def test_speculation_is_refused_for_sliding_window_models(make_model) -> None:
    loaded = load(MlxModelConfig(str(make_model("gemma4_text", hidden_size=128, num_layers=5, sliding_window=16))))
    with pytest.raises(InvalidConfigError, match="trimmed"):
        build_options(MlxModelConfig(str(loaded.model_path), prompt_lookup=True), loaded)


def test_a_request_with_logits_processors_runs_without_speculation(qwen) -> None:
    """A grammar mask or a penalty keeps state per accepted token: such a request decodes
    plainly (nothing drafted) and answers as without speculation."""
    import mlx.core as mx

    ban = lambda tokens, logits: logits + mx.where(mx.arange(logits.shape[-1]) % 7 == 0, -1e9, 0.0)  # noqa: E731
    plain_engine = engine_for(qwen)
    try:
        want = collect(submit(plain_engine, qwen, QUESTIONS[0], logits_processors=(ban,)))[0]
    finally:
        plain_engine.close()
    engine = engine_for(qwen, prompt_lookup=True)
    try:
        got = collect(submit(engine, qwen, QUESTIONS[0], logits_processors=(ban,)))[0]
        assert engine.options.speculation.stats.drafted == 0
    finally:
        engine.close()
    assert got == want
