"""Prompt (KV) cache reuse (issue 8): the store's rules, then real generation through the engine
and the server -- cached and uncached greedy output identical, a changed history never reusing
a stale prefix, and ``cached_tokens`` counting exactly the reused tokens."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from lib_mlx.core import ChatPrompt, SamplingParams
from lib_mlx.core.engine import Engine
from lib_mlx.core.events import Done, ReasoningDelta, TextDelta
from lib_mlx.core.loader import LoadedModel, load
from lib_mlx.core.prompt import render
from lib_mlx.core.prompt_cache import PromptCache, generation_prompt_tails, history_end, reserve, round_batch_buffers
from lib_mlx.config import MlxModelConfig


# --- the store, with stand-in caches (no MLX) ---------------------------------------------------
@dataclass
class FakeLayer:
    """Quacks like an mlx-lm cache layer: holds ``offset`` tokens, may or may not trim."""

    offset: int
    trimmable: bool = True
    bytes_per_token: int = 10
    trims: list[int] = field(default_factory=list)

    @property
    def nbytes(self) -> int:
        return self.offset * self.bytes_per_token

    @property
    def state(self) -> tuple[()]:
        return ()  # what the store evaluates on insert: no MLX arrays here

    def is_trimmable(self) -> bool:
        return self.trimmable

    def trim(self, n: int) -> int:
        self.trims.append(n)
        self.offset -= n
        return n


def fake(n: int, **kwargs: Any) -> list[FakeLayer]:
    return [FakeLayer(n, **kwargs), FakeLayer(n, **kwargs)]


def test_fetch_takes_the_longest_common_prefix_and_trims_to_it() -> None:
    store = PromptCache()
    store.insert([1, 2, 3, 4, 5, 6], fake(6))
    store.insert([1, 2, 9, 9], fake(4))
    hit = store.fetch([1, 2, 3, 4, 7, 8])
    assert hit is not None and hit.reused == 4
    assert [layer.offset for layer in hit.cache] == [4, 4]  # trimmed from 6 to the common 4
    # The stored entry is untouched: fetch hands out a snapshot.
    hit2 = store.fetch([1, 2, 3, 4, 5, 6, 7])
    assert hit2 is not None and hit2.reused == 6 and hit2.cache[0].trims == []


def test_at_least_one_prompt_token_is_left_to_process() -> None:
    store = PromptCache()
    store.insert([1, 2, 3], fake(3))
    hit = store.fetch([1, 2, 3])  # the same prompt again: reuse all but its last token
    assert hit is not None and hit.reused == 2 and hit.cache[0].offset == 2
    assert store.fetch([1]) is None


def test_an_untrimmable_cache_is_used_only_as_an_exact_prefix() -> None:
    store = PromptCache()
    store.insert([1, 2, 3, 4, 5], fake(5, trimmable=False))
    assert store.fetch([1, 2, 3, 9, 9]) is None  # would need trimming: recompute instead
    hit = store.fetch([1, 2, 3, 4, 5, 6])
    assert hit is not None and hit.reused == 5 and hit.cache[0].trims == []
    # A shorter checkpoint of the same history still serves a prompt that diverges later.
    store.insert([1, 2, 3], fake(3, trimmable=False))
    hit = store.fetch([1, 2, 3, 4, 9])
    assert hit is not None and hit.reused == 3


def test_reserve_grows_a_trimmed_cache_to_a_whole_number_of_steps() -> None:
    """A snapshot trimmed back mid-buffer grows to a multiple of ``step`` (the buffer lengths a
    fresh cache has; MLX's CUDA backend builds attention kernels per layout), keeping what it
    holds, so the prompt's remainder then writes in place."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache, trim_prompt_cache

    layer = KVCache()
    keys = mx.random.normal((1, 2, 300, 8))
    values = mx.random.normal((1, 2, 300, 4))
    layer.update_and_fetch(keys, values)
    assert layer.keys.shape[2] == 512
    trim_prompt_cache([layer], 300 - 290)
    reserve([layer], 250)  # 540 needed
    assert layer.offset == 290 and layer.keys.shape[2] == 768 and layer.values.shape == (1, 2, 768, 4)
    assert mx.array_equal(layer.keys[..., :290, :], keys[..., :290, :])
    assert mx.array_equal(layer.values[..., :290, :], values[..., :290, :])
    layer.update_and_fetch(mx.zeros((1, 2, 250, 8)), mx.zeros((1, 2, 250, 4)))
    assert layer.keys.shape[2] == 768  # no regrowth: mlx-lm would have made it 290 + 256 * 1
    before = layer.keys
    reserve([layer], 10)  # fits: untouched
    assert layer.keys is before
    reserve([KVCache()], 10)  # an empty cache grows on its own, aligned


def merged_batch(lengths: tuple[int, ...], *, key_dim: int, value_dim: int) -> Any:
    """mlx-lm's batch cache made of one filled KV cache per length (2 heads, random values)."""
    import mlx.core as mx
    from mlx_lm.models.cache import BatchKVCache, KVCache

    layers = []
    for n in lengths:
        layer = KVCache()
        layer.update_and_fetch(mx.random.normal((1, 2, n, key_dim)), mx.random.normal((1, 2, n, value_dim)))
        layers.append(layer)
    return BatchKVCache.merge(layers)


def test_an_entry_taken_out_of_a_batch_does_not_keep_the_batch_alive() -> None:
    """mlx-lm's ``extract`` hands a request's cache out of a batch as a lazy copy of its rows;
    stored unevaluated it would pin the whole batch's buffers (all rows, spare room included)
    while counting only its own bytes. The store computes it on insert."""
    import gc

    import mlx.core as mx

    batch = merged_batch((300, 200), key_dim=64, value_dim=64)
    round_batch_buffers([batch])
    mx.eval(batch.keys, batch.values)
    gc.collect()
    before = mx.get_active_memory()
    batch_bytes = batch.nbytes
    store = PromptCache(1 << 30)
    store.insert(list(range(200)), [batch.extract(1)])
    del batch
    gc.collect()
    assert store.nbytes == 2 * 200 * 2 * 64 * 4  # keys and values of its own 200 tokens
    assert mx.get_active_memory() <= before - batch_bytes + store.nbytes


def test_batched_buffers_are_padded_to_whole_steps() -> None:
    """A batch built from caches of any length (``merge``) or thinned out (``filter``) gets
    buffers of whole steps again, holding the same keys and values."""
    import mlx.core as mx
    from mlx_lm.models.cache import KVCache

    batch = merged_batch((300, 37), key_dim=8, value_dim=4)
    assert batch.keys.shape[2] == 300  # mlx-lm: exactly the longest
    keys, values = (mx.array(a) for a in batch.keys_and_values())
    round_batch_buffers([batch, KVCache()])
    assert batch.keys.shape[2] == batch.values.shape[2] == 512
    assert all(mx.array_equal(a, b) for a, b in zip(batch.keys_and_values(), (keys, values)))
    batch.filter([1])  # drops the 263 tokens of padding the short one no longer shares
    round_batch_buffers([batch])
    assert batch.keys.shape[2] == 256 and batch.size() == 37
    before = batch.keys
    round_batch_buffers([batch])
    assert batch.keys is before  # whole steps already: untouched


def test_a_different_history_reuses_nothing() -> None:
    store = PromptCache()
    store.insert([1, 2, 3, 4], fake(4))
    assert store.fetch([5, 2, 3, 4, 6]) is None
    assert store.stats.misses == 1 and store.stats.hits == 0


def test_bounded_by_entries_and_bytes_least_recently_used_first() -> None:
    store = PromptCache(max_bytes=1000, max_entries=2)
    store.insert([1, 1], fake(2))
    store.insert([2, 2], fake(2))
    assert store.fetch([1, 1, 5]) is not None  # [1, 1] is now the most recently used
    store.insert([3, 3], fake(2))
    assert len(store) == 2
    assert store.fetch([2, 2, 5]) is None and store.fetch([1, 1, 5]) is not None
    big = PromptCache(max_bytes=300)
    big.insert([1] * 10, fake(10))  # 200 bytes
    big.insert([2] * 10, fake(10))  # 400 in all: the older goes
    assert len(big) == 1 and big.nbytes == 200 and big.fetch([1] * 11) is None
    big.insert([3] * 20, fake(20))  # larger than the whole budget: not kept
    assert big.fetch([3] * 21) is None


def test_prefixes_of_a_trimmable_entry_are_dropped_and_lies_refused() -> None:
    store = PromptCache()
    store.insert([1, 2], fake(2))
    store.insert([1, 2, 3, 4], fake(4))
    assert len(store) == 1  # the longer trimmable entry covers the shorter one
    store.insert([1, 2, 3, 4, 5], fake(3))  # the cache holds 3 tokens, not 5: never stored
    assert len(store) == 1
    off = PromptCache(max_bytes=0)
    off.insert([1, 2], fake(2))
    assert len(off) == 0 and off.fetch([1, 2, 3]) is None


def test_checkpoint_position_is_before_the_assistant_opening(make_model) -> None:
    from mlx_lm.utils import load_tokenizer

    tokenizer = load_tokenizer(make_model("qwen3"))
    tails = generation_prompt_tails(tokenizer)
    assert tails, "the template's assistant opening was recognised"
    messages = [{"role": "user", "content": "Hello there"}]
    history = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=True)
    for thinking in (True, False):
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, enable_thinking=thinking)
        assert history_end(prompt, tails) == len(history)
    assert history_end([5, 6, 7], tails) == 2  # unknown ending: the last token


# --- real generation through the engine ---------------------------------------------------------
@dataclass
class Turn:
    text: str
    usage: Any
    prompt: list[int]


def generate(engine: Engine, loaded: LoadedModel, messages: list[dict[str, Any]], thinking: bool, **params: Any) -> Turn:
    rendered = render(loaded, ChatPrompt(messages=messages, thinking=thinking))
    params = {"max_tokens": 16, "temperature": 0.0, "ignore_eos": True, **params}
    generation = engine.submit(rendered, SamplingParams(**params))
    text = []
    for event in generation:
        if isinstance(event, (TextDelta, ReasoningDelta)):
            text.append(event.text)
        elif isinstance(event, Done):
            return Turn("".join(text), event.usage, rendered.tokens)
    raise AssertionError("no Done")


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# Random weights (attention matters, so a stale cache would change the answer), float32.
# Gemma 4 with a 16-token sliding window: its rotating caches wrap, cannot be trimmed back,
# and the prompt-end checkpoint is what makes reuse possible.
MODELS = {
    "qwen3": {"num_layers": 3},
    "gemma4_text": {"num_layers": 5, "sliding_window": 16},
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def loaded(request, make_model) -> Iterator[LoadedModel]:
    family = request.param
    yield load(MlxModelConfig(str(make_model(family, hidden_size=64, **MODELS[family]))))


@pytest.fixture(params=[1, 4], ids=["single", "batched"])
def engines(request, loaded) -> Iterator[tuple[Engine, Engine]]:
    cached = Engine(loaded, queue_limit=request.param)
    uncached = Engine(loaded, queue_limit=request.param, prompt_cache_bytes=0)
    yield cached, uncached
    cached.close()
    uncached.close()


@pytest.mark.parametrize("thinking", [True, False], ids=["thinking", "plain"])
def test_cached_and_uncached_greedy_generation_are_identical(loaded, engines, thinking) -> None:
    cached, uncached = engines
    tails = generation_prompt_tails(loaded.tokenizer)
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You answer questions about cities."}]
    previous: Turn | None = None
    reused = 0
    for n in range(4):
        messages.append({"role": "user", "content": f"Question {n}: what is the weather like in Paris?"})
        with_cache = generate(cached, loaded, messages, thinking)
        without = generate(uncached, loaded, messages, thinking)
        assert with_cache.prompt == without.prompt
        assert with_cache.text == without.text, f"turn {n}"
        assert with_cache.usage.completion_tokens == without.usage.completion_tokens == 16
        assert without.usage.cached_tokens == 0
        if previous is None:
            assert with_cache.usage.cached_tokens == 0
        else:
            # The history up to where the previous prompt opened the assistant's turn is reused
            # (Qwen3's plain KV caches are trimmed back to the common prefix, which may run a
            # little further); never more than the prefix the two prompts share.
            floor = history_end(previous.prompt, tails)
            shared = common_prefix(previous.prompt, with_cache.prompt)
            assert floor <= with_cache.usage.cached_tokens <= max(shared, floor)
            assert with_cache.usage.prompt_tokens == len(with_cache.prompt)
        messages.append({"role": "assistant", "content": "It is sunny and warm in Paris today."})
        previous = with_cache
        reused += with_cache.usage.cached_tokens
    stats, none = cached.stats(), uncached.stats()
    assert stats.requests == stats.finished == 4 and stats.completion_tokens == 64
    assert stats.prompt_cache_hits == 3 and stats.cached_tokens == reused > 0
    assert none.prompt_cache_hits == none.cached_tokens == none.prompt_cache_entries == 0


def test_a_changed_history_does_not_reuse_the_stale_prefix(loaded, engines) -> None:
    cached, uncached = engines
    messages = [
        {"role": "system", "content": "You answer questions about cities."},
        {"role": "user", "content": "What is the weather like in Paris?"},
        {"role": "assistant", "content": "It is sunny and warm in Paris today."},
        {"role": "user", "content": "And tomorrow?"},
    ]
    first = generate(cached, loaded, messages, True)
    edited = [dict(m) for m in messages]
    edited[1]["content"] = "What is the weather like in Rome?"
    again = generate(cached, loaded, edited, True)
    reference = generate(uncached, loaded, edited, True)
    diverge = common_prefix(first.prompt, again.prompt)
    assert diverge < len(again.prompt) - 10  # the edit is early in the history
    assert again.usage.cached_tokens <= diverge
    assert again.text == reference.text
    if loaded.model_type == "qwen3":  # trimmable: everything up to the edit is reused
        assert again.usage.cached_tokens == diverge


class CountingModel:
    """The model, counting forward passes."""

    def __init__(self, model: Any) -> None:
        self.model, self.passes = model, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.passes += 1
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def test_a_prompt_end_checkpoint_costs_no_extra_forward_pass(make_model) -> None:
    """Gemma 4 (rotating caches): the first turn takes a checkpoint at the end of the history,
    then runs the assistant's opening in one pass; no more passes than without any cache."""
    import dataclasses

    base = load(MlxModelConfig(str(make_model("gemma4_text", hidden_size=64, **MODELS["gemma4_text"]))))
    messages = [{"role": "user", "content": "What is the weather like in Paris today?"}]
    passes = {}
    texts = {}
    for name, cache_bytes in (("cached", 1 << 30), ("uncached", 0)):
        counting = CountingModel(base.model)
        loaded = dataclasses.replace(base, model=counting)
        engine = Engine(loaded, queue_limit=1, prompt_cache_bytes=cache_bytes)
        try:
            texts[name] = generate(engine, loaded, messages, False, max_tokens=1).text
            passes[name] = counting.passes
            if name == "cached":
                assert engine.stats().prompt_cache_entries >= 1  # the checkpoint was taken
        finally:
            engine.close()
    assert texts["cached"] == texts["uncached"]
    assert passes["cached"] <= passes["uncached"], passes


def test_logits_processors_see_the_whole_prompt_with_a_cached_prefix(loaded) -> None:
    engine = Engine(loaded, queue_limit=1)
    seen: list[int] = []

    def record(tokens, logits):
        seen.append(int(tokens.shape[0]))
        return logits

    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    try:
        generate(engine, loaded, messages, True)
        messages += [{"role": "assistant", "content": "Sunny."}, {"role": "user", "content": "Tomorrow?"}]
        turn = generate(engine, loaded, messages, True, logits_processors=(record,), max_tokens=3)
    finally:
        engine.close()
    assert turn.usage.cached_tokens > 0
    # Whole prompt, then one more token a step (mlx-lm's look-ahead step runs one extra time).
    assert seen[:3] == [len(turn.prompt), len(turn.prompt) + 1, len(turn.prompt) + 2]


# --- through the server ------------------------------------------------------------------------
def test_chat_usage_reports_cached_tokens(serve, make_model) -> None:
    model_dir = make_model("qwen3", hidden_size=64, num_layers=3)
    messages: list[dict[str, Any]] = [{"role": "user", "content": "What is the weather like in Paris?"}]
    with serve(model_dir) as s:
        client = s.client()
        first = client.chat.completions.create(model=s.info.model_id, messages=messages, max_tokens=4)
        assert first.usage.prompt_tokens_details.cached_tokens == 0
        messages += [
            {"role": "assistant", "content": "It is sunny."},
            {"role": "user", "content": "And tomorrow?"},
        ]
        stream = client.chat.completions.create(
            model=s.info.model_id, messages=messages, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
        usage = [c for c in stream][-1].usage
        stats = s.status()["stats"]
    # The first prompt came back whole as the head of the second (its assistant opening included).
    assert usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens
    assert usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    assert stats["prompt_cache_hits"] == 1 and stats["requests"] == stats["finished"] == 2
    assert stats["cached_tokens"] == stats["prompt_cache_reused_tokens"] == usage.prompt_tokens_details.cached_tokens
    assert stats["prompt_tokens"] == first.usage.prompt_tokens + usage.prompt_tokens


@pytest.mark.parametrize("env", [None, "0", "oops"])
def test_the_prompt_cache_budget_comes_from_the_config_and_the_environment(runtime, make_model, monkeypatch, env) -> None:
    """``prompt_cache_bytes`` in the model config; ``LIB_MLX_PROMPT_CACHE_BYTES`` overrides it
    at load (an unusable value is ignored)."""
    from hardening_support import core_of

    from lib_mlx.config import with_env_overrides

    if env is not None:
        monkeypatch.setenv("LIB_MLX_PROMPT_CACHE_BYTES", env)
    config = MlxModelConfig(str(make_model("qwen3", hidden_size=64, num_layers=3)))
    assert with_env_overrides(config).prompt_cache_bytes == (0 if env == "0" else 1 << 30)
    assert with_env_overrides(MlxModelConfig("x", prompt_cache_bytes=0), {}).prompt_cache_bytes == 0
    handle = runtime.load_model(config)
    messages = [{"role": "user", "content": "What is the weather like in Paris?"}]
    core = core_of(runtime, handle)
    for _ in range(2):
        generation = core.submit(core.render(ChatPrompt(messages=messages)), SamplingParams(max_tokens=2, temperature=0.0))
        list(generation)
    stats = runtime.server_status(handle)["stats"]
    assert stats["finished"] == 2
    assert stats["prompt_cache_hits"] == (0 if env == "0" else 1)


def test_responses_continuation_reports_cached_tokens(serve, make_model) -> None:
    model_dir = make_model("qwen3", hidden_size=64, num_layers=3)
    with serve(model_dir) as s:
        client = s.client()
        first = client.responses.create(model=s.info.model_id, input="What is the weather like in Paris?", max_output_tokens=4)
        assert first.usage.input_tokens_details.cached_tokens == 0
        second = client.responses.create(
            model=s.info.model_id, input="And tomorrow?", previous_response_id=first.id, max_output_tokens=4
        )
    assert 0 < second.usage.input_tokens_details.cached_tokens < second.usage.input_tokens
