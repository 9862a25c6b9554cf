"""The multimodal core on a tiny random-initialised Gemma 4 (text + vision + audio towers)
through mlx-vlm: detection, lazy towers and their memory, placeholder expansion on the processed
input, and the mlx-lm-shaped language model against mlx-vlm's own forward pass."""

from __future__ import annotations

import gc
import math
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mlx_vlm")

import mlx.core as mx  # noqa: E402

from lib_mlx.core.vlm import (  # noqa: E402
    AudioClip,
    MediaInputs,
    is_multimodal_model_dir,
    load_vlm,
    multimodal_capabilities,
)
from lib_mlx.errors import InvalidRequestError  # noqa: E402
from lib_mlx.tiny_models import multimodal as mm  # noqa: E402

ANSWER, REASONING = "It is red.", "I see a square"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mm.build_gemma4_multimodal(tmp_path_factory.mktemp("mm") / "gemma4-mm", answer=ANSWER, reasoning=REASONING)


@pytest.fixture(scope="module")
def vision_only_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return mm.build_gemma4_multimodal(tmp_path_factory.mktemp("mm") / "gemma4-vision", audio=False)


@pytest.fixture(scope="module")
def vlm(model_dir: Path):
    return load_vlm(model_dir, lazy_encoders=True)


def image(width: int, height: int):
    from PIL import Image

    return Image.new("RGB", (width, height), (200, 30, 30))


def prompt_text(vlm, *kinds: str, thinking: bool = True) -> str:
    content = [{"type": k} for k in kinds] + [{"type": "text", "text": "Describe."}]
    return vlm.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=False, enable_thinking=thinking
    )


def expected_image_tokens(width: int, height: int) -> int:
    """Gemma 4's budget: resize (keeping the aspect) to at most max_soft_tokens * k^2 patches,
    sides multiples of k * patch, then one soft token per k x k patches."""
    k, patch = mm.POOLING_KERNEL, mm.PATCH_SIZE
    factor = math.sqrt(mm.IMAGE_SOFT_TOKENS * k * k * patch * patch / (width * height))
    side = k * patch
    h, w = math.floor(factor * height / side) * side, math.floor(factor * width / side) * side
    return (h // patch) * (w // patch) // (k * k)


def active_after(fn):
    gc.collect()
    mx.clear_cache()
    before = mx.get_active_memory()
    result = fn()
    return result, mx.get_active_memory() - before


# --- detection -------------------------------------------------------------------------------


def test_detection_reads_config_and_weights(model_dir: Path, vision_only_dir: Path, make_model, tmp_path: Path) -> None:
    assert is_multimodal_model_dir(model_dir)
    assert multimodal_capabilities(model_dir) == {"image", "audio"}
    assert multimodal_capabilities(vision_only_dir) == {"image"}
    assert not is_multimodal_model_dir(make_model("gemma4_text"))
    assert not is_multimodal_model_dir(tmp_path)  # no config.json at all


# --- lazy towers -----------------------------------------------------------------------------


def test_lazy_encoders_keep_towers_out_of_memory_until_media(model_dir: Path) -> None:
    eager, eager_bytes = active_after(lambda: load_vlm(model_dir, lazy_encoders=False))
    tower_bytes = sum(t["weights_bytes"] for t in eager.status()["towers"].values())
    assert all(t["resident"] for t in eager.status()["towers"].values())
    del eager

    lazy, lazy_bytes = active_after(lambda: load_vlm(model_dir, lazy_encoders=True))
    status = lazy.status()
    assert status["capabilities"] == ["audio", "image"]
    assert {k: t["resident"] for k, t in status["towers"].items()} == {"vision": False, "audio": False}
    assert all(t["bytes"] == 0 for t in status["towers"].values())
    assert lazy_bytes < eager_bytes
    assert eager_bytes - lazy_bytes == pytest.approx(tower_bytes, rel=0.05)

    # The first image loads the vision tower only; its bytes show up in status and in MLX.
    prepared, grew = active_after(lambda: lazy.prepare(prompt_text(lazy, "image"), MediaInputs([image(64, 64)])))
    assert prepared.towers_loaded == ["vision"]
    towers = lazy.status()["towers"]
    assert towers["vision"]["resident"] and towers["vision"]["bytes"] == towers["vision"]["weights_bytes"]
    assert not towers["audio"]["resident"]
    assert grew >= towers["vision"]["weights_bytes"]
    # ...and a second image finds it resident.
    again = lazy.prepare(prompt_text(lazy, "image"), MediaInputs([image(64, 64)]))
    assert again.towers_loaded == []


# --- processed input -------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(64, 64), (64, 48), (300, 100)])
def test_image_placeholder_expands_to_soft_tokens(vlm, width: int, height: int) -> None:
    text = prompt_text(vlm, "image")
    prepared = vlm.prepare(text, MediaInputs([image(width, height)]))
    n = expected_image_tokens(width, height)
    assert prepared.image_tokens == n and prepared.audio_tokens == 0
    vocab = vlm.tokenizer.get_vocab() if hasattr(vlm.tokenizer, "get_vocab") else vlm.tokenizer._tokenizer.get_vocab()
    boi, img, eoi = vocab[mm.BOI], vocab[mm.IMAGE_TOKEN], vocab[mm.EOI]
    start = prepared.tokens.index(boi)
    assert prepared.tokens[start : start + n + 2] == [boi] + [img] * n + [eoi]
    # The rest of the prompt is the rendered text with its one placeholder replaced.
    plain = vlm.tokenizer.encode(text, add_special_tokens=False)
    assert len(prepared.tokens) == len(plain) - 1 + n + 2
    assert prepared.input_embeddings.shape == (len(prepared.tokens), vlm.model.config.text_config.hidden_size)


@pytest.mark.parametrize(("seconds", "rate"), [(1.0, 16000), (0.5, 16000), (0.75, 22050), (1.0, 48000)])
def test_audio_placeholder_expands_by_duration(vlm, seconds: float, rate: int) -> None:
    clip = AudioClip(mm.tone(seconds, rate), rate)
    prepared = vlm.prepare(prompt_text(vlm, "audio"), MediaInputs(audios=[clip]))
    assert prepared.audio_tokens == math.ceil(seconds * 1000 / mm.AUDIO_MS_PER_TOKEN)


def test_image_and_audio_together(vlm) -> None:
    media = MediaInputs([image(64, 48)], [AudioClip(mm.tone(1.0), 16000)])
    prepared = vlm.prepare(prompt_text(vlm, "image", "audio"), media)
    assert (prepared.image_tokens, prepared.audio_tokens) == (12, 25)


def test_placeholder_count_must_match_media(vlm) -> None:
    with pytest.raises(InvalidRequestError):
        vlm.prepare(prompt_text(vlm, "image"), MediaInputs([image(64, 64), image(64, 64)]))


def test_audio_on_a_vision_only_model_is_rejected(vision_only_dir: Path) -> None:
    model = load_vlm(vision_only_dir)
    assert model.capabilities == {"image"} and set(model.status()["towers"]) == {"vision"}
    with pytest.raises(InvalidRequestError) as err:
        model.prepare(prompt_text(model, "audio"), MediaInputs(audios=[AudioClip(mm.tone(0.2), 16000)]))
    assert err.value.code == "unsupported_media"


# --- the language model the engine drives ----------------------------------------------------


def test_language_model_matches_mlx_vlm_forward(model_dir: Path) -> None:
    """The merged embeddings through the mlx-lm-shaped model give mlx-vlm's own logits, whole
    and in prefill chunks through a KV cache (as generate_step feeds them)."""
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_vlm.utils import prepare_inputs

    plain = mm.build_gemma4_multimodal(model_dir.parent / "random", seed=3)  # unscripted weights
    model = load_vlm(plain)
    rng = np.random.default_rng(0)
    picture = image(80, 60)
    picture.putdata([tuple(int(v) for v in rng.integers(0, 255, 3)) for _ in range(80 * 60)])
    clip = AudioClip((0.1 * rng.standard_normal(16000)).astype(np.float32), 16000)
    text = prompt_text(model, "image", "audio")
    prepared = model.prepare(text, MediaInputs([picture], [clip]))

    inputs = prepare_inputs(model.processor, images=[picture], audio=[clip.samples], prompts=text, padding=False)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask")}
    reference = model.model(inputs["input_ids"], **extra).logits[0]

    ids = mx.array(prepared.tokens)
    whole = model.language(ids[None], input_embeddings=prepared.input_embeddings[None])[0]
    assert mx.allclose(whole, reference, atol=1e-4).item()

    cache = make_prompt_cache(model.language)
    chunks = [
        model.language(ids[None, s : s + 9], cache=cache, input_embeddings=prepared.input_embeddings[None, s : s + 9])[0]
        for s in range(0, len(prepared.tokens), 9)
    ]
    assert mx.allclose(mx.concatenate(chunks), reference, atol=1e-4).item()


@pytest.mark.parametrize(("thinking", "expected"), [(True, f"<|channel>thought\n{REASONING}<channel|>{ANSWER}"), (False, ANSWER)])
def test_scripted_model_writes_its_chain_after_media(vlm, thinking: bool, expected: str) -> None:
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache

    media = MediaInputs([image(64, 64)], [AudioClip(mm.tone(0.3), 16000)])
    prepared = vlm.prepare(prompt_text(vlm, "image", "audio", thinking=thinking), media)
    out = []
    for token, _ in generate_step(
        mx.array(prepared.tokens),
        vlm.language,
        max_tokens=40,
        input_embeddings=prepared.input_embeddings,
        prompt_cache=make_prompt_cache(vlm.language),
    ):  # mlx-lm's default sampler is greedy
        if token in vlm.tokenizer.eos_token_ids:
            break
        out.append(token)
    assert vlm.tokenizer.decode(out) == expected
