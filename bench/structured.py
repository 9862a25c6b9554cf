"""Structured output's cost: decode tokens/s with a JSON schema against without, same model,
same prompts, side by side in one run (alternating), and the schema's compile time.

    python -m bench.structured [--phone] [--runs 5] [--max-tokens 128] [--json OUT]

Through lib_mlx's engine in this process (render, queue, generation, events; no HTTP: the
grammar's cost is all in the engine). Greedy decoding. The schema asks for a long array of
bounded strings, so the constrained answer runs to ``max_tokens`` as the unconstrained one does
(the bench models cannot emit their end-of-sequence token). Decode tokens/s is the engine's own
figure (``Done.timings``: tokens after the first over the time since it).

The decode figures carry the machine's noise (a 2-core CPU shared with other work swings
±30% run to run); ``grammar per token`` is the processor's own cost measured alone (median
over a walk of a valid answer, dummy logits), and its share of an unconstrained token's time is
the bound on what the grammar can cost.

Compile time: the llguidance tokenizer for the model's vocabulary (once per model), a new
schema's grammar (validated; once per schema, then an LRU cache hit) and its first mask.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import measure
from .models import ModelSpec, build

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "title": {"type": "string", "maxLength": 40},
        "notes": {
            "type": "array",
            "minItems": 200,
            "items": {
                "type": "object",
                "properties": {
                    "id": {"type": "integer", "minimum": 0, "maximum": 9999},
                    "text": {"type": "string", "maxLength": 24},
                    "kind": {"enum": ["fact", "idea", "todo"]},
                },
                "required": ["id", "text", "kind"],
                "additionalProperties": False,
            },
        },
    },
    "required": ["title", "notes"],
    "additionalProperties": False,
}


def run_model(spec: ModelSpec, model_dir: Path, runs: int, prompt_tokens: int, max_tokens: int) -> dict[str, Any]:
    from lib_mlx.config import MlxModelConfig
    from lib_mlx.core import ChatPrompt, MlxCore, SamplingParams
    from lib_mlx.core.events import Done, TextDelta
    from lib_mlx.core.grammar import GrammarSpec, compiler_for

    core = MlxCore.load(MlxModelConfig(model_path=str(model_dir)))
    compiler = compiler_for(core.loaded)
    t0 = time.perf_counter()
    _ = compiler.tokenizer
    tokenizer_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    matcher = compiler.matcher(GrammarSpec.json_schema(SCHEMA))
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    matcher.compute_bitmask()
    first_mask_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiler.compile(GrammarSpec.json_schema(SCHEMA))
    cached_s = time.perf_counter() - t0

    tokenizer = core.loaded.tokenizer
    per_token_s = processor_cost(core.loaded, compiler.vocab_size)
    thinking = False
    out: dict[str, list[float]] = {"free": [], "json_schema": []}
    tokens: dict[str, list[int]] = {"free": [], "json_schema": []}
    valid_prefix = True

    def once(messages: list[dict[str, Any]], grammar: Any) -> tuple[float, int, str]:
        rendered = core.render(ChatPrompt(messages=messages, thinking=thinking))
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0, grammar=grammar)
        text, done = "", None
        for event in core.submit(rendered, params):
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, Done):
                done = event
        assert done is not None
        return done.timings.decode_tps, done.usage.completion_tokens, text

    for run in range(runs + 1):  # the first round warms up
        text = measure.make_text(tokenizer, prompt_tokens, f"{spec.name}-structured-{run}")
        messages = [{"role": "user", "content": text}]
        for mode in (("free", "json_schema") if run % 2 == 0 else ("json_schema", "free")):
            grammar = GrammarSpec.json_schema(SCHEMA) if mode == "json_schema" else None
            tps, n, answer = once(messages, grammar)
            if mode == "json_schema":
                valid_prefix = valid_prefix and answer.lstrip().startswith("{") and '"title"' in answer
            if run:
                out[mode].append(tps)
                tokens[mode].append(n)
        if run:
            print(f"{spec.name} run {run}/{runs}: free {out['free'][-1]:.1f} tok/s, json_schema {out['json_schema'][-1]:.1f} tok/s",
                  file=sys.stderr, flush=True)  # fmt: skip
    core.close()
    free, constrained = statistics.median(out["free"]), statistics.median(out["json_schema"])
    return {
        "model": spec.name,
        "vocab": compiler.vocab_size,
        "free_tps": free,
        "json_schema_tps": constrained,
        "ratio": constrained / free if free else 0.0,
        "free_best_tps": max(out["free"]),
        "json_schema_best_tps": max(out["json_schema"]),
        "tokens": {k: statistics.median(v) for k, v in tokens.items()},
        "tokenizer_init_s": tokenizer_s,
        "schema_compile_s": compile_s,
        "first_mask_s": first_mask_s,
        "cache_hit_s": cached_s,
        "constrained_output_is_json": valid_prefix,
        "processor_us_per_token": per_token_s * 1e6,
        "share_of_free_token": per_token_s * free,
    }


def processor_cost(loaded: Any, vocab: int) -> float:
    """Seconds per token of the grammar's logits processor alone (mask, host-to-array, where,
    evaluated), walking a valid answer of ``SCHEMA`` with dummy logits: the cost that the
    decode figures above show through the machine's noise."""
    import mlx.core as mx

    from lib_mlx.core.grammar import GrammarSpec, make_processor

    answer = {"title": "A short title", "notes": [{"id": i, "text": f"note number {i}", "kind": "idea"} for i in range(200)]}
    path = loaded.tokenizer.encode(json.dumps(answer), add_special_tokens=False)[:400]
    processor = make_processor(loaded, GrammarSpec.json_schema(SCHEMA))
    prompt = [0] * 16
    logits = mx.zeros((1, int((loaded.config or {}).get("vocab_size") or vocab)))
    mx.eval(logits)
    times = []
    for n in range(len(path) + 1):
        context = mx.array(prompt + path[:n])
        t0 = time.perf_counter()
        mx.eval(processor(context, logits))
        times.append(time.perf_counter() - t0)
    assert processor.failed is None, processor.failed
    return statistics.median(times[1:])


def markdown(results: list[dict[str, Any]], device: str) -> str:
    lines = [
        f"Structured output (`python -m bench.structured`, {device}): decode tokens/s, greedy, "
        "engine in-process, same prompts alternating; compile = new schema -> validated grammar + matcher.",
        "",
        "| model | vocab | free tok/s | json_schema tok/s | ratio | best free / json_schema | grammar per token | share of a free token | tokenizer init | schema compile | first mask | cache hit |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r['model']} | {r['vocab']} | {r['free_tps']:.1f} | {r['json_schema_tps']:.1f} | {r['ratio'] * 100:.0f}% | "
            f"{r['free_best_tps']:.1f} / {r['json_schema_best_tps']:.1f} | {r['processor_us_per_token']:.0f} µs | {r['share_of_free_token'] * 100:.1f}% | "
            f"{r['tokenizer_init_s'] * 1000:.0f} ms | {r['schema_compile_s'] * 1000:.1f} ms | {r['first_mask_s'] * 1000:.2f} ms | "
            f"{r['cache_hit_s'] * 1e6:.0f} µs |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import mlx.core as mx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phone", action="store_true", help="the Qwen3-0.6B / Gemma-4-E2B shapes (for a GPU)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "lib_mlx-bench-models")
    ap.add_argument("--only", nargs="*", help="model names (e.g. qwen3-cpu-bf16)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    size = "phone" if args.phone else "cpu"
    specs = [ModelSpec(f, size, b) for f in ("qwen3", "gemma4_text") for b in (None, 4)]
    if args.only:
        specs = [s for s in specs if s.name in args.only]
    results = []
    for spec in specs:
        model_dir = build(spec, args.models_dir / spec.name)
        results.append(run_model(spec, model_dir, args.runs, args.prompt_tokens, args.max_tokens))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    device = str(mx.default_device())
    print(markdown(results, device))
    if args.json:
        args.json.write_text(json.dumps({"device": device, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
