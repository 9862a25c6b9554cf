"""Speculative decoding (issue 21): prompt lookup and a draft model give exactly the plain
greedy output -- with a draft that agrees (the same model), one that does not (another random
model), and prompt lookup on a prompt the answer repeats -- and count their acceptances."""

from __future__ import annotations

import mlx.core as mx
import pytest
from mlx_lm import load
from mlx_lm.generate import generate_step
from mlx_lm.models.cache import make_prompt_cache

from lib_mlx.core.kv_quant import KVQuantization, make_cache

from long_context_support import attentive
from lib_mlx.core.speculative import (
    NgramDrafter,
    SpeculativeStats,
    draft_model_generate_step,
    prompt_lookup_generate_step,
)

N = 40


@pytest.fixture(scope="module")
def models(make_model):
    target, _ = load(str(make_model("qwen3", hidden_size=128, num_layers=2, head_dim=64)))
    other, _ = load(str(make_model("qwen3", hidden_size=128, num_layers=2, head_dim=64, seed=5)))
    return attentive(target), attentive(other, seed=2)


def plain(model, prompt, n=N, cache=None):
    cache = cache if cache is not None else make_prompt_cache(model)
    return [t for t, _ in generate_step(mx.array(prompt), model, max_tokens=n, prompt_cache=cache)]


def repeating_prompt() -> list[int]:
    """A prompt with its own text twice: prompt lookup finds drafts in it."""
    body = [40 + (i * 7) % 90 for i in range(30)]
    return [3, 4] + body + [5] + body[:6]


def test_ngram_drafts_continue_the_latest_occurrence() -> None:
    d = NgramDrafter([1, 2, 3, 4, 9, 1, 2, 3, 5, 1, 2])
    assert d.draft(3) == [3, 5, 1]  # "1 2" last seen before "3 5 1"
    d.append(7)
    assert d.draft(2) == []  # "7" never seen before
    assert NgramDrafter([1, 2]).draft(0) == []


def test_prompt_lookup_equals_plain_greedy(models) -> None:
    target, _ = models
    prompt = repeating_prompt()
    want = plain(target, prompt)
    stats = SpeculativeStats()
    got = [t for t, _, _ in prompt_lookup_generate_step(prompt, target, make_prompt_cache(target), max_tokens=N, stats=stats)]
    assert got == want
    assert stats.emitted == N and stats.steps < N  # some drafts were accepted
    assert 0 < stats.accepted <= stats.drafted


def test_prompt_lookup_with_a_reused_prefix_and_quantized_cache(models) -> None:
    target, _ = models
    prompt = repeating_prompt()
    kv = KVQuantization(4, 32)
    want = plain(target, prompt, cache=make_cache(target, kv))
    cache = make_cache(target, kv)
    target(mx.array(prompt[:10])[None], cache=cache)  # the cache holds a reused prefix
    got = [t for t, _, _ in prompt_lookup_generate_step(prompt[10:], target, cache, history=prompt[:10], max_tokens=N, kv=kv)]
    assert got == want


@pytest.mark.parametrize("agree", [True, False], ids=["agreeing-draft", "disagreeing-draft"])
def test_a_draft_model_equals_plain_greedy(models, agree) -> None:
    target, other = models
    prompt = repeating_prompt()
    want = plain(target, prompt)
    stats = SpeculativeStats()
    draft = target if agree else other
    got = [t for t, _, _ in draft_model_generate_step(prompt, target, draft, make_prompt_cache(target), max_tokens=N, stats=stats)]
    assert got == want
    assert stats.emitted == N
    if agree:
        assert stats.accepted == stats.drafted > 0
    else:
        assert stats.acceptance < 0.5


def test_a_draft_model_with_a_reused_prefix(models) -> None:
    target, other = models
    prompt = repeating_prompt()
    want = plain(target, prompt)
    cache = make_prompt_cache(target)
    target(mx.array(prompt[:12])[None], cache=cache)
    got = [t for t, _, _ in draft_model_generate_step(prompt[12:], target, target, cache, history=prompt[:12], max_tokens=N)]
    assert got == want
