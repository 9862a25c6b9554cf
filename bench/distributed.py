"""One process against two ranks on the same machine: what MLX's collectives cost.

``python -m bench.distributed [--size cpu|tiny] [--runs 5]`` builds the benchmark's Qwen3
model (and its Qwen2 twin, which mlx-lm can pipeline), serves it with ``lib-mlx serve`` and with
``lib-mlx launch -n 2 -- serve --distributed tensor|pipeline`` (ring backend over loopback), and
measures through the ``openai`` client: time to first token and decode tokens/s for one
streamed request, plus each rank's MLX memory after loading. Both ranks share this machine's
cores, so this measures the cost of the lockstep and the collectives, not a speed-up.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lib_mlx.tiny_models.variants import as_qwen2

from .measure import client_for, make_text, stream_once
from .models import ModelSpec, build
from .servers import Server, _wait_ready, free_port, running, start_ours


def _free_pair() -> int:
    """A port p with p and p + 1 free (the ring backend listens on one port per rank)."""
    import socket

    while True:
        base = free_port()
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", base + 1))
                return base
            except OSError:
                continue


def start_distributed(model_dir: Path, work: Path, mode: str) -> tuple[Server, list[int]]:
    """``lib-mlx launch -n 2 -- serve --distributed MODE``: the server and each rank's bytes."""
    port, ring = free_port(), _free_pair()
    log = work / f"distributed-{mode}.log"
    argv = [sys.executable, "-m", "lib_mlx", "launch", "-n", "2", "--starting-port", str(ring), "--",
            "serve", "--model", str(model_dir), "--port", str(port), "--no-auth", "--no-page",
            "--distributed", mode]  # fmt: skip
    # stdin a pipe that never speaks: mlx.launch polls its stdin, and /dev/null would spin it.
    process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(f"2 ranks ({mode})", f"http://127.0.0.1:{port}", model_dir.name, process, log)
    _wait_ready(server.base_url + "/health", process, log)
    deadline = time.monotonic() + 60
    while "Sharded" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    line = re.search(r"Sharded \((\w+)\) over 2 ranks: (.*)", log.read_text())
    per_rank = [int(float(mb) * 1e6) for mb in re.findall(r"rank \d+ ([\d.]+) MB", line.group(2))] if line else []
    return server, per_rank


def stop_group(server: Server) -> None:
    if server.process.poll() is None:
        os.killpg(os.getpgid(server.process.pid), signal.SIGINT)
        try:
            server.process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(os.getpgid(server.process.pid), signal.SIGKILL)


def measure(server: Server, prompt: str, runs: int, max_tokens: int) -> dict[str, float]:
    client = client_for(server)
    messages = [{"role": "user", "content": prompt}]
    stream_once(client, server.model, messages, 4, False)  # warm-up (not measured)
    samples = [stream_once(client, server.model, [{"role": "user", "content": f"{i} {prompt}"}], max_tokens, False) for i in range(runs)]
    return {
        "ttft_ms": statistics.median(s.ttft for s in samples) * 1000,
        "decode_tps": statistics.median(s.decode_tps for s in samples),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="cpu", choices=("cpu", "tiny", "phone"))
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "lib_mlx-bench-models")
    args = parser.parse_args(argv)

    from mlx_lm.tokenizer_utils import load as load_tokenizer

    qwen3 = build(ModelSpec("qwen3", args.size, None), args.models_dir / f"qwen3-{args.size}-bf16")
    qwen2 = as_qwen2(qwen3, args.models_dir / f"qwen2-{args.size}-bf16")
    prompt = make_text(load_tokenizer(qwen3), args.prompt_tokens, "distributed")
    weights = sum(p.stat().st_size for p in qwen3.glob("*.safetensors"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for mode, model in (("tensor", qwen3), ("pipeline", qwen2)):
            with running(start_ours(model, work, name=f"1 process ({model.name})")) as (single,):
                rows.append((single.name, measure(single, prompt, args.runs, args.max_tokens), [weights]))
            server, per_rank = start_distributed(model, work, mode)
            try:
                rows.append((server.name, measure(server, prompt, args.runs, args.max_tokens), per_rank))
            finally:
                stop_group(server)
    print(f"\nQwen3 {args.size} bf16 ({weights / 1e6:.1f} MB of weights), {args.prompt_tokens}-token prompt, "
          f"{args.max_tokens} tokens, median of {args.runs}\n")  # fmt: skip
    print("| server | first token (ms) | decode (tokens/s) | MLX memory per rank after load (MB) |")
    print("| --- | ---: | ---: | --- |")
    for name, figures, memory in rows:
        mem = " / ".join(f"{m / 1e6:.1f}" for m in memory) + (" (weights)" if len(memory) == 1 else "")
        print(f"| {name} | {figures['ttft_ms']:.1f} | {figures['decode_tps']:.1f} | {mem} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
