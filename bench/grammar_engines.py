"""Grammar engines compared on a real ~152k vocabulary: schema compile time and the time to
compute one token mask, walking a valid JSON answer token by token.

    python -m bench.grammar_engines --gguf PATH/ggml-vocab-qwen35.gguf [--json OUT]

The vocabulary is Qwen's (151,936 ids) rebuilt from llama.cpp's ``ggml-vocab-qwen35.gguf``
(in the ``llama-cpp-python`` sdist, see shared NOTES) with the ``gguf`` reader and
``tokenizers``. Engines: llguidance (always), outlines-core and xgrammar when importable.
xgrammar imports torch at module level although its CPU matcher only needs DLPack; without
torch installed, ``--torch-stub`` lets it import (the figures are of its C++ core either way).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import types
from collections.abc import Callable
from typing import Any

# Schemas of the kind structured-output users send, each with one valid answer to walk.
SCHEMAS: dict[str, tuple[dict[str, Any], Any]] = {
    "flat": (
        {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "ok": {"type": "boolean"}},
            "required": ["name", "age", "ok"],
            "additionalProperties": False,
        },
        {"name": "Ada Lovelace", "age": 36, "ok": True},
    ),
    "nested_arrays_enums": (
        {
            "type": "object",
            "properties": {
                "city": {"type": "string", "maxLength": 40},
                "tags": {"type": "array", "items": {"type": "string", "enum": ["old", "big", "rainy", "sunny"]}, "minItems": 1, "maxItems": 3},
                "stats": {
                    "type": "object",
                    "properties": {"population": {"type": "integer", "minimum": 0}, "area_km2": {"type": "number", "minimum": 0}},
                    "required": ["population", "area_km2"],
                    "additionalProperties": False,
                },
                "mayor": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            },
            "required": ["city", "tags", "stats", "mayor"],
            "additionalProperties": False,
        },
        {"city": "Paris", "tags": ["old", "big"], "stats": {"population": 2102650, "area_km2": 105.4}, "mayor": None},
    ),
    "pattern_and_list": (
        {
            "type": "object",
            "properties": {
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "sku": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{4}$"},
                            "qty": {"type": "integer", "minimum": 1, "maximum": 99},
                            "note": {"type": "string"},
                        },
                        "required": ["sku", "qty"],
                        "additionalProperties": False,
                    },
                    "maxItems": 5,
                }
            },
            "required": ["items"],
            "additionalProperties": False,
        },
        {"items": [{"sku": "ABC-1234", "qty": 2, "note": "gift wrap please"}, {"sku": "XYZ-0001", "qty": 10}]},
    ),
    "json_object": ({"type": "object"}, {"answer": "free-form JSON", "n": [1, 2, 3], "nested": {"a": None}}),
}


def build_tokenizer(gguf_path: str) -> Any:
    """A ``transformers`` fast tokenizer from a byte-level BPE gguf vocabulary."""
    import gguf
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    reader = gguf.GGUFReader(gguf_path)

    def strings(key: str) -> list[str]:
        field = reader.fields[key]
        return [bytes(field.parts[i]).decode("utf-8") for i in field.data]

    tokens = strings("tokenizer.ggml.tokens")
    merges = strings("tokenizer.ggml.merges")
    types_ = [int(reader.fields["tokenizer.ggml.token_type"].parts[i][0]) for i in reader.fields["tokenizer.ggml.token_type"].data]
    eos = int(reader.fields["tokenizer.ggml.eos_token_id"].parts[-1][0])
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges], ignore_merges=False)
    tok = Tokenizer(bpe)
    # Qwen2's split regex (llama.cpp's LLAMA_VOCAB_PRE_TYPE_QWEN2).
    split = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    tok.decoder = decoders.ByteLevel()
    from tokenizers import AddedToken

    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types_) if k == 3])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=tokens[eos])


def _summary(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "mean_us": statistics.fmean(samples) * 1e6,
        "p50_us": samples[len(samples) // 2] * 1e6,
        "p99_us": samples[min(len(samples) - 1, int(len(samples) * 0.99))] * 1e6,
        "max_us": samples[-1] * 1e6,
    }


def _walk(compute: Callable[[], Any], consume: Callable[[int], Any], path: list[int], allowed: Callable[[int], bool]) -> list[float]:
    times = []
    for token in path:
        t0 = time.perf_counter()
        compute()
        times.append(time.perf_counter() - t0)
        assert allowed(token), f"the engine refused a token of a valid answer: {token}"
        consume(token)
    return times


def run_llguidance(hf_tok: Any, cases: dict[str, tuple[dict[str, Any], list[int]]]) -> dict[str, Any]:
    import llguidance
    import llguidance.hf
    import numpy as np

    t0 = time.perf_counter()
    ll_tok = llguidance.hf.from_tokenizer(hf_tok)
    out: dict[str, Any] = {"tokenizer_init_s": time.perf_counter() - t0, "schemas": {}}
    n_words = (ll_tok.vocab_size + 31) // 32
    for name, (schema, path) in cases.items():
        t0 = time.perf_counter()
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults={"whitespace_flexible": False})
        matcher = llguidance.LLMatcher(ll_tok, grammar)
        matcher.compute_logit_bias()  # the first mask builds the lexer: count it as compile
        compile_s = time.perf_counter() - t0
        matcher = llguidance.LLMatcher(ll_tok, grammar)
        mask = np.zeros(n_words, dtype=np.int32)
        ptr, size = mask.ctypes.data, mask.nbytes

        def allowed(t: int) -> bool:
            return bool((int(mask[t // 32]) >> (t % 32)) & 1)

        times = _walk(lambda: matcher.unsafe_compute_mask_ptr(ptr, size), matcher.consume_token, path, allowed)
        assert not matcher.is_error(), matcher.get_error()
        out["schemas"][name] = {"compile_s": compile_s, "tokens": len(path), **_summary(times)}
    return out


def run_outlines(hf_tok: Any, cases: dict[str, tuple[dict[str, Any], list[int]]]) -> dict[str, Any]:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    t0 = time.perf_counter()
    inv = _byte_decoder()
    by_text: dict[bytes, list[int]] = {}
    eos = hf_tok.eos_token_id
    for text, i in hf_tok.get_vocab().items():
        if i == eos or i in hf_tok.all_special_ids:
            continue
        raw = bytes(inv[c] for c in text) if all(c in inv for c in text) else text.encode()
        by_text.setdefault(raw, []).append(i)
    vocab = Vocabulary(eos, by_text)
    out: dict[str, Any] = {"tokenizer_init_s": time.perf_counter() - t0, "schemas": {}}
    for name, (schema, path) in cases.items():
        if name == "json_object":  # outlines-core has no free-form JSON mode (a regex cannot nest)
            out["schemas"][name] = {"unsupported": "no regex for arbitrary nesting"}
            continue
        t0 = time.perf_counter()
        try:
            index = Index(build_regex_from_schema(json.dumps(schema), whitespace_pattern=r""), vocab)
        except Exception as exc:  # noqa: BLE001 - report what the engine refuses
            out["schemas"][name] = {"unsupported": f"{type(exc).__name__}: {exc}"[:200]}
            continue
        compile_s = time.perf_counter() - t0
        guide = Guide(index)
        current: list[int] = []

        def compute() -> None:
            current[:] = guide.get_tokens()

        def allowed(t: int) -> bool:
            return t in set(current)

        times = _walk(compute, guide.advance, path, allowed)
        out["schemas"][name] = {"compile_s": compile_s, "tokens": len(path), **_summary(times)}
    return out


def run_xgrammar(hf_tok: Any, cases: dict[str, tuple[dict[str, Any], list[int]]]) -> dict[str, Any]:
    import numpy as np
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo.from_huggingface(hf_tok, vocab_size=len(hf_tok))
    compiler = xgr.GrammarCompiler(info, cache_enabled=False)
    out: dict[str, Any] = {"tokenizer_init_s": time.perf_counter() - t0, "schemas": {}}
    for name, (schema, path) in cases.items():
        t0 = time.perf_counter()
        if name == "json_object":
            compiled = compiler.compile_builtin_json_grammar()
        else:
            compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False, separators=(",", ":"))
        compile_s = time.perf_counter() - t0
        matcher = xgr.GrammarMatcher(compiled)
        mask = np.zeros((1, (info.vocab_size + 31) // 32), dtype=np.int32)

        def allowed(t: int) -> bool:
            return bool((int(mask[0, t // 32]) >> (t % 32)) & 1)

        times = _walk(lambda: matcher.fill_next_token_bitmask(mask), matcher.accept_token, path, allowed)
        out["schemas"][name] = {"compile_s": compile_s, "tokens": len(path), **_summary(times)}
    return out


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted (printable stand-in character -> byte)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


def _torch_stub() -> None:
    """Enough of a ``torch`` module for ``import xgrammar`` (its CPU matcher takes DLPack)."""
    try:
        import tvm_ffi  # noqa: F401 - xgrammar's FFI layer, imported while torch is truly absent
    except ImportError:
        pass
    stub = types.ModuleType("torch")
    stub.__path__ = []  # a package with no submodules: ``import torch.x`` fails as ImportError
    stub.__getattr__ = lambda name: (lambda *a, **k: None) if name[:1].islower() else type(name, (), {})  # type: ignore[method-assign]
    sys.modules["torch"] = stub


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--torch-stub", action="store_true")
    ap.add_argument("--engines", nargs="+", default=["llguidance", "outlines-core", "xgrammar"])
    args = ap.parse_args(argv)
    hf_tok = build_tokenizer(args.gguf)
    if args.torch_stub:  # after transformers has looked for a real torch
        _torch_stub()
    cases = {name: (schema, hf_tok.encode(json.dumps(value, separators=(",", ":")))) for name, (schema, value) in SCHEMAS.items()}
    result: dict[str, Any] = {"vocab_size": len(hf_tok), "engines": {}}
    engines = {"llguidance": run_llguidance, "outlines-core": run_outlines, "xgrammar": run_xgrammar}
    for name, fn in ((n, engines[n]) for n in args.engines):
        try:
            result["engines"][name] = fn(hf_tok, cases)
        except ImportError as exc:
            result["engines"][name] = {"unavailable": str(exc)}
        print(name, json.dumps(result["engines"][name], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
