"""``python -m bench [--quick] [--phone]``: lib_mlx side by side with raw mlx-lm and
``mlx_lm.server`` on random-initialised models of real architectures, built offline.

Contenders, each on the same rendered prompts and token budgets, generation forced to
``max_tokens`` (the bench models' EOS is unreachable, see ``bench.models``):

- raw: ``mlx_lm.stream_generate`` in this process (no HTTP, no client);
- engine: lib_mlx's engine in this process (chat template, queue, generation, events; no HTTP),
  so that ours - engine is what HTTP, SSE and the client add, and engine - raw what the engine
  adds (single requests only);
- ours: ``lib-mlx serve`` in a process of its own, streamed through the ``openai`` client
  (``queue_limit`` 1 for single requests and conversations, 4 for concurrent clients);
- ours, no cache: the same with the prompt cache off (``LIB_MLX_PROMPT_CACHE_BYTES=0``);
- mlx_lm.server: ``python -m mlx_lm.server`` as shipped, in a process of its own, same client.

Measured: one streamed request (prompt tokens/s, decode tokens/s, time to first token); a
six-turn conversation with ~1,000 tokens of history by turn 3 (time to first token per turn) for
a thinking model (Qwen3, reasoning in every turn) and a plain one (Gemma 4, thinking off); 1, 2
and 4 concurrent streaming clients (aggregate decode tokens/s while all of them decode, time to
first token); and the cost of the prompt cache's snapshot (the thinking-model checkpoint).
Medians over several runs; contenders alternate within each run so that drifting machine load
hits them alike.

``--phone`` selects the Qwen3-0.6B and Gemma-4-E2B text shapes (for a GPU: MLX's Linux CPU
backend decodes those at ~1-3 tokens/s); the default is reduced widths and depths that decode at
tens of tokens/s on a CPU, where per-token server costs show.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import measure, report, servers
from .models import ModelSpec, build

HERE = Path(__file__).resolve().parent


@dataclass
class Plan:
    size: str
    runs: int
    prompt_tokens: int
    max_tokens: int
    conv_turns: int
    conv_runs: int
    conv_max_tokens: int
    conc_prompt_tokens: int
    conc_max_tokens: int
    conc_runs: int
    models: list[ModelSpec] = field(default_factory=list)
    conv_models: list[str] = field(default_factory=list)  # names: thinking qwen3, plain gemma4
    conc_models: list[str] = field(default_factory=list)
    clients: tuple[int, ...] = (1, 2, 4)


def make_plan(quick: bool, phone: bool) -> Plan:
    size = "phone" if phone else "cpu"
    specs = [ModelSpec(f, size, b) for f in ("qwen3", "gemma4_text") for b in (None, 4)]
    plan = Plan(
        size=size,
        runs=3 if quick else (7 if phone else 5),  # GPU runs see rare 50-70 ms stalls (raw too)
        prompt_tokens=256 if quick else 512,
        max_tokens=64 if quick else (256 if phone else 128),
        conv_turns=6,
        conv_runs=1 if quick else 3,
        conv_max_tokens=32 if quick else 64,
        conc_prompt_tokens=128 if quick else 256,
        conc_max_tokens=48 if quick else (256 if phone else 128),
        conc_runs=1 if quick else 3,
        models=specs,
        conv_models=[specs[0].name, specs[2].name],
        conc_models=[specs[0].name] if quick else [specs[0].name, specs[2].name],
    )
    return plan


def thinking_of(spec: ModelSpec) -> bool:
    """Qwen3 runs as the thinking model (reasoning in every turn), Gemma 4 as the plain one."""
    return spec.family == "qwen3"


def warm_up(
    plan: Plan,
    spec: ModelSpec,
    raw: measure.Raw,
    engine: measure.Engine,
    live: list[servers.Server],
    concurrent: list[servers.Server],
) -> None:
    """Throwaway rounds at the measured shapes. MLX's CUDA backend compiles kernels for every new
    prompt length (measured with 0.32.4 on an H200: 40-100 ms the first time a 4-bit Qwen3-0.6B
    shape prefills a length, ~20 ms in bf16, 10-15 ms once seen), which must not land in measured
    runs. Two single-request rounds, prompts named like the measured ones, so that the part a
    prompt-cache hit leaves to process has the measured length too (and so for the concurrent
    clients' prompts)."""
    thinking = thinking_of(spec)
    for seed in (90, 91):
        text = measure.make_text(raw.tokenizer, plan.prompt_tokens, f"{spec.name}-single-{seed}")
        messages = [{"role": "user", "content": text}]
        raw.run(measure.render(raw.tokenizer, messages, thinking), plan.max_tokens)
        engine.run(messages, plan.max_tokens, thinking)
        for server in live:
            measure.stream_once(measure.client_for(server), server.model, messages, plan.max_tokens, thinking)
    for n in plan.clients if concurrent else ():
        prompts = [
            [{"role": "user", "content": measure.make_text(raw.tokenizer, plan.conc_prompt_tokens, f"{spec.name}-c{n}-w-{i}")}]
            for i in range(n)
        ]
        raw.batch([measure.render(raw.tokenizer, messages, thinking) for messages in prompts], plan.conc_max_tokens)
        for server in concurrent:
            measure.concurrent(server, prompts, plan.conc_max_tokens, thinking)


def single(
    plan: Plan, spec: ModelSpec, raw: measure.Raw, engine: measure.Engine, ours: servers.Server, peer: servers.Server
) -> dict[str, Any]:
    thinking = thinking_of(spec)
    samples: dict[str, list[measure.Sample]] = {"raw": [], "engine": [], "ours": [], "mlx_lm": []}
    clients = {"ours": measure.client_for(ours), "mlx_lm": measure.client_for(peer)}
    for run in range(plan.runs):
        text = measure.make_text(raw.tokenizer, plan.prompt_tokens, f"{spec.name}-single-{run}")
        messages = [{"role": "user", "content": text}]
        samples["raw"].append(raw.run(measure.render(raw.tokenizer, messages, thinking), plan.max_tokens))
        samples["engine"].append(engine.run(messages, plan.max_tokens, thinking))
        for name, server in (("ours", ours), ("mlx_lm", peer)):
            samples[name].append(measure.stream_once(clients[name], server.model, messages, plan.max_tokens, thinking))
        _progress(f"{spec.name} single run {run + 1}/{plan.runs}: " + ", ".join(
            f"{k} {v[-1].decode_tps:.1f} tok/s ttft {v[-1].ttft * 1000:.0f} ms" for k, v in samples.items()))  # fmt: skip
    return {
        name: {
            "prompt_tps": report.median([s.prompt_tps for s in ss]),
            "decode_tps": report.median([s.decode_tps for s in ss]),
            "ttft_ms": report.median([s.ttft * 1000 for s in ss]),
            "prompt_tokens": ss[0].prompt_tokens,
            "completion_tokens": ss[0].completion_tokens,
        }
        for name, ss in samples.items()
    }


def conversation(
    plan: Plan, spec: ModelSpec, tokenizer: Any, contenders: dict[str, servers.Server]
) -> dict[str, Any]:
    """The same conversation with each contender, turn by turn (contenders alternate within a
    turn); a fresh conversation (new text from the first token) each run."""
    thinking = thinking_of(spec)
    clients = {name: measure.client_for(server) for name, server in contenders.items()}
    samples: dict[str, list[list[measure.Sample]]] = {name: [[] for _ in range(plan.conv_turns)] for name in contenders}
    if report.device_kind() == "gpu":  # every turn is a new prompt length: compile its kernels first
        script = measure.Conversation(tokenizer, f"{spec.name}-conv-warm-up", turns=plan.conv_turns).script()
        for messages, _ in script:
            for name, server in contenders.items():
                measure.stream_once(clients[name], server.model, messages, plan.conv_max_tokens, thinking)
    for run in range(plan.conv_runs):
        script = measure.Conversation(tokenizer, f"{spec.name}-conv-{run}", turns=plan.conv_turns).script()
        for t, (messages, _) in enumerate(script):
            for name, server in contenders.items():
                samples[name][t].append(measure.stream_once(clients[name], server.model, messages, plan.conv_max_tokens, thinking))
        _progress(f"{spec.name} conversation run {run + 1}/{plan.conv_runs}: TTFT ms " + "; ".join(
            f"{name} " + " ".join(f"{turns[t][-1].ttft * 1000:.0f}" for t in range(plan.conv_turns))
            for name, turns in samples.items()))  # fmt: skip
    turns = []
    for t in range(plan.conv_turns):
        ours = samples["ours"][t]
        turn: dict[str, Any] = {"prompt_tokens": ours[0].prompt_tokens, "cached_tokens": min(s.cached_tokens for s in ours)}
        for name in contenders:
            turn[name] = report.median([s.ttft * 1000 for s in samples[name][t]])
        turns.append(turn)
    return {"thinking": thinking, "turns": turns}


def concurrency(
    plan: Plan, spec: ModelSpec, raw: measure.Raw, contenders: dict[str, servers.Server]
) -> dict[str, Any]:
    """1, 2 and 4 clients at once against each server, and the same prompts through mlx-lm's
    ``BatchGenerator`` in-process ("raw"): the machine's own batching capacity."""
    thinking = thinking_of(spec)
    out: dict[str, Any] = {}
    for n in plan.clients:
        figures: dict[str, list[measure.Concurrent]] = {name: [] for name in ("raw", *contenders)}
        for run in range(plan.conc_runs):
            prompts = [
                [{"role": "user", "content": measure.make_text(raw.tokenizer, plan.conc_prompt_tokens, f"{spec.name}-c{n}-{run}-{i}")}]
                for i in range(n)
            ]
            tokens = [measure.render(raw.tokenizer, messages, thinking) for messages in prompts]
            figures["raw"].append(raw.batch(tokens, plan.conc_max_tokens))
            for name, server in contenders.items():
                figures[name].append(measure.concurrent(server, prompts, plan.conc_max_tokens, thinking))
            _progress(f"{spec.name} {n} clients run {run + 1}/{plan.conc_runs}: " + ", ".join(
                f"{k} {v[-1].aggregate_tps:.1f} tok/s" for k, v in figures.items()))  # fmt: skip
        out[str(n)] = {
            name: {
                "tps": report.median([c.aggregate_tps for c in cs]),
                "ttft_ms": report.median([c.ttft_median * 1000 for c in cs]),
                "ttft_max_ms": report.median([c.ttft_max * 1000 for c in cs]),
            }
            for name, cs in figures.items()
        }
    return out


def cache_operations(raw: measure.Raw, n_tokens: int = 1000) -> dict[str, float]:
    """What a prompt-cache snapshot costs: ``copy.deepcopy`` of a model cache holding
    ``n_tokens`` (new cache objects over the same immutable arrays), a ``PromptCache.fetch``,
    and the first decode step after a snapshot (its writes copy the shared buffers once) next
    to an ordinary step."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    from lib_mlx.core.prompt_cache import PromptCache, cache_nbytes

    model = raw.model
    tokens = list(range(10, 10 + n_tokens))
    cache = make_prompt_cache(model)
    model(mx.array(tokens)[None], cache=cache)
    mx.eval([c.state for c in cache])

    def step() -> float:
        t = time.perf_counter()
        logits = model(mx.array([[7]]), cache=cache)
        mx.eval(logits, [c.state for c in cache])
        return time.perf_counter() - t

    step()
    plain = min(step() for _ in range(5))
    shared, snapshot = [], []
    for _ in range(5):
        t = time.perf_counter()
        copy_ = copy.deepcopy(cache)
        snapshot.append(time.perf_counter() - t)
        shared.append(step())
        del copy_
    store = PromptCache()
    store.insert(tokens + [7] * (cache[0].offset - n_tokens) if hasattr(cache[0], "offset") else tokens, cache, snapshot=True)
    t = time.perf_counter()
    store.fetch(tokens + [1, 2, 3])
    fetch = time.perf_counter() - t
    return {
        "tokens": n_tokens,
        "mib": cache_nbytes(cache) / 2**20,
        "snapshot_ms": min(snapshot) * 1000,
        "fetch_ms": fetch * 1000,
        "step_ms": plain * 1000,
        "step_shared_ms": report.median(shared) * 1000,
    }


def _progress(line: str) -> None:
    print(f"  {time.strftime('%H:%M:%S')} {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer runs and tokens (a few minutes)")
    parser.add_argument("--phone", action="store_true", help="Qwen3-0.6B / Gemma-4-E2B text shapes (for a GPU)")
    parser.add_argument("--models-dir", type=Path, default=None, help="where to build (and reuse) the models")
    parser.add_argument("--out", type=Path, default=HERE / "RESULTS.md", help="the Markdown file to update")
    parser.add_argument("--json", type=Path, default=None, help="also write the raw figures as JSON")
    parser.add_argument("--family", choices=("qwen3", "gemma4_text"), default=None, help="bench one family only")
    parser.add_argument("--only", default=None, help="bench one model only, e.g. gemma4_text-phone-4bit")
    parser.add_argument("--note", action="append", default=[], help="a line for the report (e.g. machine load)")
    args = parser.parse_args(argv)

    import mlx.core as mx

    plan = make_plan(args.quick, args.phone)
    if args.family:
        plan.models = [m for m in plan.models if m.family == args.family]
    if args.only:
        plan.models = [m for m in plan.models if m.name == args.only]
    load_before = report.load_average()
    work = Path(tempfile.mkdtemp(prefix="lib_mlx-bench-"))
    models_dir = args.models_dir or Path(tempfile.gettempdir()) / "lib_mlx-bench-models"
    results: dict[str, Any] = {
        "title": f"{report.device_kind().upper()}{' (quick)' if args.quick else ''}: {plan.size} model shapes",
        "plan": {k: v for k, v in asdict(plan).items() if k not in ("models",)},
        "notes": list(args.note),
        "single": {},
        "conversation": {},
        "concurrency": {},
        "checkpoint": {},
    }
    print(f"models in {models_dir}; logs in {work}; device {mx.default_device()}", file=sys.stderr)
    text = ""
    for spec in plan.models:
        model_dir = build(spec, models_dir / spec.name)
        name = spec.name
        in_conv, in_conc = name in plan.conv_models, name in plan.conc_models
        _progress(f"{name}: starting servers")
        live = [servers.start_ours(model_dir, work, name=f"ours-{name}"), servers.start_mlx_lm(model_dir, work, name=f"mlx_lm-{name}")]
        ours, peer = live
        if in_conv:
            live.append(servers.start_ours(model_dir, work, prompt_cache=False, name=f"ours-nocache-{name}"))
        if in_conc:
            live.append(servers.start_ours(model_dir, work, queue_limit=4, name=f"ours-q4-{name}"))
        raw = measure.Raw(model_dir)
        engine = measure.Engine(model_dir)
        try:
            with servers.running(*live):
                warm_up(plan, spec, raw, engine, live, [live[-1], peer] if in_conc else [])
                results["single"][name] = single(plan, spec, raw, engine, ours, peer)
                if in_conv:
                    label = f"{name} ({'thinking' if thinking_of(spec) else 'plain'})"
                    contenders = {"ours": ours, "nocache": live[2], "mlx_lm": peer}
                    results["conversation"][label] = conversation(plan, spec, raw.tokenizer, contenders)
                    results["checkpoint"][name] = cache_operations(raw)
                if in_conc:
                    contenders = {"ours": live[-1], "mlx_lm": peer}
                    results["concurrency"][name] = concurrency(plan, spec, raw, contenders)
        finally:
            engine.close()
            raw.close()
        # After every model, so that a run cut short (a time limit) still leaves what it measured.
        text = save(args, results, load_before)
    print(text)
    return 0


def save(args: argparse.Namespace, results: dict[str, Any], load_before: tuple[float, ...]) -> str:
    results["machine"] = report.machine(load_before, report.load_average())
    text = report.report(results)
    key = report.device_kind() + ("-phone" if args.phone else "") + ("-quick" if args.quick else "") + (f"-{args.family}" if args.family else "")
    report.write_section(args.out, key, text)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {args.out} (section {key})", file=sys.stderr)
    return text


if __name__ == "__main__":
    raise SystemExit(main())
