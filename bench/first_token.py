"""``python -m bench.first_token``: where the time to the first token goes, stage by stage.

The main benchmark says how far the server's first token is behind raw ``mlx_lm``; this says
where that time goes. It runs ``lib-mlx serve`` in a process of its own with timing hooks
(``bench.stage_hooks``) that stamp each stage of a request on the system-wide monotonic
clock, streams the same prompts through the ``openai`` client and through bare ``http.client``, and
prints the median time from the client's send to each stage, next to raw
``mlx_lm.stream_generate`` and the engine in-process on the same prompts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from . import measure, servers
from .models import ModelSpec, build


def start_traced(model_dir: Path, work: Path, trace: Path) -> servers.Server:
    port = servers.free_port()
    env = dict(os.environ, LIB_MLX_STAGE_TRACE=str(trace))
    code = (
        "import bench.stage_hooks as h; h.install();"
        "from lib_mlx.cli import main; raise SystemExit(main())"
    )
    argv = [sys.executable, "-c", code, "serve", "--model", str(model_dir), "--port", str(port),
            "--queue-limit", "1", "--no-auth", "--no-page"]  # fmt: skip
    return servers.spawn("ours-traced", argv, env, work, "/health", port, model_dir.name)


def bare_stream(base_url: str, model: str, messages: list[dict[str, Any]], max_tokens: int, thinking: bool) -> float:
    """Time to the first SSE line carrying a token, with the standard library's ``http.client``
    (no openai client, no httpx): what the client library adds is the difference."""
    import http.client
    from urllib.parse import urlsplit

    body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
                       "stream": True, "chat_template_kwargs": {"enable_thinking": thinking}})  # fmt: skip
    url = urlsplit(base_url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=900)
    first = 0.0
    try:
        t0 = time.perf_counter()
        conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        for raw_line in response:
            line = raw_line.decode().strip()
            if first or not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content") or delta.get("tool_calls"):
                    first = time.perf_counter()
    finally:
        conn.close()
    return first - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_token", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "cpu", "phone"), default="cpu")
    parser.add_argument("--family", choices=("qwen3", "gemma4_text"), default="qwen3")
    parser.add_argument("--bits", type=int, default=None)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "lib_mlx-bench-models")
    parser.add_argument("--conversation", action="store_true", help="stage times per turn of the bench's conversation")
    args = parser.parse_args(argv)
    if args.conversation:
        return conversation_stages(args)

    import mlx.core as mx

    spec = ModelSpec(args.family, args.size, args.bits)
    model_dir = build(spec, args.models_dir / spec.name)
    thinking = args.family == "qwen3"
    work = Path(tempfile.mkdtemp(prefix="lib_mlx-first-token-"))
    trace = work / "stages.jsonl"
    print(f"{spec.name} on {mx.default_device()}; logs in {work}", file=sys.stderr)
    server = start_traced(model_dir, work, trace)
    raw = measure.Raw(model_dir)
    engine = measure.Engine(model_dir)
    client = measure.client_for(server)
    rows: dict[str, list[float]] = {}
    try:
        for run in range(args.runs + 1):  # run 0 warms up every path
            text = measure.make_text(raw.tokenizer, args.prompt_tokens, f"ft-{run}")
            messages = [{"role": "user", "content": text}]
            tokens = measure.render(raw.tokenizer, messages, thinking)
            r = raw.run(tokens, args.max_tokens)
            e = engine.run(messages, args.max_tokens, thinking)
            trace.write_text("")
            t_send = time.perf_counter()
            o = measure.stream_once(client, server.model, messages, args.max_tokens, thinking)
            stages = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
            h_text = measure.make_text(raw.tokenizer, args.prompt_tokens, f"ft-bare-{run}")
            h = bare_stream(server.base_url, server.model, [{"role": "user", "content": h_text}], args.max_tokens, thinking)
            if run == 0:
                continue
            for name, value in (("raw", r.ttft), ("engine in-process", e.ttft), ("server, http.client", h), ("server, openai", o.ttft)):
                rows.setdefault(f"TTFT {name}", []).append(value * 1000)
            for stage in stages:
                rows.setdefault(f"  stage: {stage['stage']}", []).append((stage["t"] - t_send) * 1000)
            print(f"  run {run}: raw {r.ttft * 1000:.1f} engine {e.ttft * 1000:.1f} http.client {h * 1000:.1f} "
                  f"openai {o.ttft * 1000:.1f} ms", file=sys.stderr)  # fmt: skip
    finally:
        server.stop()
        engine.close()
        raw.close()
    print(f"\n{spec.name}, {args.prompt_tokens}-token prompt, {mx.default_device()}: median ms over {args.runs} runs")
    print("(stages: ms from the openai client's send, stamped in the server process)\n")
    for name, values in rows.items():
        print(f"{name:<44} {statistics.median(values):8.2f}   (min {min(values):.2f}, max {max(values):.2f})")
    return 0


def conversation_stages(args: argparse.Namespace) -> int:
    """The bench's six-turn conversation through a traced server (after one unmeasured
    conversation of the same shape): per turn, ms from the client's send to each stage."""
    import mlx.core as mx

    spec = ModelSpec(args.family, args.size, args.bits)
    model_dir = build(spec, args.models_dir / spec.name)
    thinking = args.family == "qwen3"
    work = Path(tempfile.mkdtemp(prefix="lib_mlx-first-token-"))
    trace = work / "stages.jsonl"
    server = start_traced(model_dir, work, trace)
    raw = measure.Raw(model_dir)
    client = measure.client_for(server)
    try:
        for seed in ("warm-up", "measured"):
            script = measure.Conversation(raw.tokenizer, f"ft-conv-{seed}").script()
            print(f"\n{spec.name} on {mx.default_device()}, conversation ({seed}):")
            for turn, (messages, _) in enumerate(script, 1):
                tokens = measure.render(raw.tokenizer, messages, thinking)
                r = raw.run(tokens, 8)
                trace.write_text("")
                t_send = time.perf_counter()
                o = measure.stream_once(client, server.model, messages, 8, thinking)
                stages = [json.loads(line) for line in trace.read_text().splitlines() if line.strip()]
                cells = " ".join(f"{st['stage'][0]}:{(st['t'] - t_send) * 1000:.1f}" for st in stages)
                print(f"  turn {turn}: {o.prompt_tokens} tok, {o.cached_tokens} cached; raw (no cache) {r.ttft * 1000:.1f} ms, "
                      f"ours {o.ttft * 1000:.1f} ms; stages {cells}")  # fmt: skip
    finally:
        server.stop()
        raw.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
