"""``build_model``: a tiny random model directory of a real architecture, loadable by mlx-lm."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import _tokenizer, _weights
from ._families import FamilySpec, family_spec

Family = Literal["qwen3", "gemma4_text", "llama"]

_VOCAB_SIZE = 1024  # the BPE trainer's budget; the corpus fills ~750 of it


def build_model(
    family: Family,
    out_dir: str | Path,
    *,
    chains: Mapping[str, Sequence[str]] | None = None,
    quantize_bits: int | None = None,
    hidden_size: int = 64,
    num_layers: int = 2,
    dtype: str = "float32",
    vocab_extra: Sequence[str] = (),
    max_position_embeddings: int = 4096,
    seed: int = 0,
    chat_template: str | None = None,
    **config_overrides: Any,
) -> Path:
    """Write a tiny random-initialised ``family`` model directory to ``out_dir`` and return it.

    The directory holds ``config.json``, ``model.safetensors`` (+ index), ``tokenizer.json``,
    ``tokenizer_config.json`` (with the family's real ``chat_template``),
    ``special_tokens_map.json`` and ``generation_config.json``; ``mlx_lm.load(out_dir)`` loads it.

    ``chains`` scripts greedy decoding: ``{trigger: pieces}``, where ``trigger`` is the text of
    a rendered prompt's last token (see ``TRIGGERS`` and ``trigger_for``) and ``pieces`` the
    tokens to emit after it, each one token (multi-character pieces are added to the
    vocabulary). The family's end-of-turn token (``END_OF_TURN``) is appended unless the chain
    already ends with one of the family's stop tokens (Gemma 4 also stops at
    ``<|tool_response>``, which ends a turn that calls tools). A token may appear in several
    chains only if it is followed by the same piece each time (chains may merge, e.g. a
    thinking chain running into the no-thinking chain's answer); no chain may repeat a token.
    The build fails if any scripted step does not win the real forward pass by a wide margin
    (after quantization and softcapping).

    ``vocab_extra`` adds more single tokens (added, non-special). ``quantize_bits`` (e.g. 4)
    writes an mlx-lm quantized model (group size 64, or 32 when ``hidden_size`` is not a
    multiple of 64). ``chat_template`` replaces the family's template (e.g. a variant of
    ``CHAT_TEMPLATES[family]`` that opens ``<think>`` in the generation prompt).
    ``config_overrides`` update ``config.json`` before the model is built.
    """
    spec = family_spec(family)
    if chat_template is not None:
        spec = dataclasses.replace(spec, chat_template=chat_template)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    tok = _tokenizer.train(spec, _VOCAB_SIZE)
    for piece in vocab_extra:
        _tokenizer.token_id(tok, piece, add=True)
    token_chains = _resolve_chains(tok, spec, chains or {})
    describe = functools.partial(_tokenizer.token_text, tok)
    successors = _weights.successor_map(token_chains, describe)

    ids = {content: tok.token_to_id(content) for content, _ in spec.specials}
    config = spec.make_config(
        hidden=hidden_size, layers=num_layers, vocab=tok.get_vocab_size(), max_pos=max_position_embeddings, ids=ids
    )
    config["torch_dtype"] = dtype
    config.update(config_overrides)

    model = _make_model(config, seed)
    if successors:
        softcap = config.get("final_logit_softcapping") or math.inf
        _weights.script(model, successors, target=min(_weights.TARGET_LOGIT, softcap))
    if dtype != "float32":
        _weights.cast(model, dtype)
    if quantize_bits:
        config = _weights.quantize(model, config, quantize_bits)
    _weights.verify(model, successors, describe)

    from mlx_lm.utils import save_config, save_model

    for stale in (*out.glob("model*.safetensors"), *out.glob("model.safetensors.index.json")):
        stale.unlink()  # a previous build's shards would be loaded too
    save_model(out, model)
    save_config(config, out / "config.json")
    _tokenizer.write(tok, spec, out, max_position_embeddings)
    generation = {
        "bos_token_id": ids[spec.bos] if spec.bos else ids[spec.pad],
        "eos_token_id": [ids[t] for t in spec.stop_tokens],
        **({"pad_token_id": ids[spec.pad]} if spec.pad else {}),
        **spec.sampling,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2))
    return out


def build_large_model(
    out_dir: str | Path, *, min_bytes: int = 50 * 1024 * 1024, family: Family = "llama", **kwargs: Any
) -> Path:
    """A model whose weights take at least ``min_bytes`` (float32, hidden 512), for memory tests."""
    kwargs.setdefault("hidden_size", 512)
    config = family_spec(family).make_config(
        hidden=kwargs["hidden_size"], layers=1, vocab=800, max_pos=4096, ids=defaultdict(int)
    )
    per_layer = _layer_params(config)
    embeddings = 2 * config["vocab_size"] * config["hidden_size"]
    kwargs.setdefault("num_layers", max(1, math.ceil((min_bytes / 4 - embeddings) / per_layer)))
    path = build_model(family, out_dir, **kwargs)
    size = model_bytes(path)
    if size < min_bytes:
        raise AssertionError(f"{path} holds {size} bytes of weights, under {min_bytes}")
    return path


def model_bytes(path: str | Path) -> int:
    """Bytes of the ``*.safetensors`` weight files in a model directory."""
    return sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))


def _resolve_chains(tok, spec: FamilySpec, chains: Mapping[str, Sequence[str]]) -> list[list[int]]:
    before = _suffix_ends(tok, spec)
    pieces_ids = []
    for trigger, pieces in chains.items():
        pieces = list(pieces)
        if not pieces or pieces[-1] not in spec.stop_tokens:
            pieces.append(spec.end_of_turn)
        if stray := [p for p in pieces[:-1] if p in spec.stop_tokens]:
            raise ValueError(f"chain for {trigger!r}: the stop token {stray[0]!r} may only end a chain")
        pieces_ids.append([_tokenizer.token_id(tok, piece, add=True) for piece in pieces])
    # Triggers last: one may be a piece another chain just made a token.
    resolved = [[_tokenizer.token_id(tok, trigger, add=False), *ids] for trigger, ids in zip(chains, pieces_ids)]
    after = _suffix_ends(tok, spec)
    for situation, last in before.items():
        if after[situation] != last:
            raise ValueError(
                f"a scripted piece changes how the {situation!r} generation prompt tokenizes "
                f"(its last token is now {after[situation]!r}, was {last!r}); choose other pieces"
            )
    return resolved


def _suffix_ends(tok, spec: FamilySpec) -> dict[str, str]:
    return {
        situation: _tokenizer.token_text(tok, tok.encode(suffix, add_special_tokens=False).ids[-1])
        for situation, suffix in spec.prompt_suffixes.items()
    }


def _make_model(config: dict[str, Any], seed: int):
    from mlx_lm.utils import _get_classes

    model_class, args_class = _get_classes(config)
    model = model_class(args_class.from_dict(config))
    _weights.randomize(model, np.random.default_rng(seed))
    return model


def _layer_params(config: dict[str, Any]) -> int:
    h, i = config["hidden_size"], config["intermediate_size"]
    hd, heads, kv = config["head_dim"], config["num_attention_heads"], config["num_key_value_heads"]
    return 2 * h * heads * hd + 2 * h * kv * hd + 3 * h * i + 2 * h

