"""``python -m bench.burst``: what a burst of simultaneous requests waits for, step by step.

The main benchmark gives each concurrent client's time to first token; this says where it goes.
It runs lib_mlx's engine in this process (``queue_limit`` 4, prompt cache on, no HTTP), submits
1, 2 and 4 requests at the same moment from as many threads, and prints each request's time to
first token and, for the first and last trial of each size, every step of the batch behind it:
when it ran, how long it took, how many prompts it processed and how many tokens it produced
(and a request that began alone before moving into the batch), as the engine records them
(``EngineStats.recent_steps``). On a GPU, steps that take many times their neighbours are MLX
building kernels for a shape it has not seen.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from . import measure
from .models import ModelSpec, build


class StepLog:
    """The engine's own record of its steps (``MlxCore.stats().recent_steps``), from ``t0`` on."""

    def __init__(self) -> None:
        self.t0 = 0.0
        self.lines: list[str] = []

    def read(self, core: Any) -> None:
        for step in sorted(core.stats().recent_steps, key=lambda s: s.start):
            if step.start < self.t0:
                continue
            if step.kind == "batch":
                what = f"batch step: {step.prompts} prompt pieces, {step.tokens} tokens, {step.decoding} in the batch"
            elif step.kind == "batch_start":
                continue  # the steps tell it: a burst that starts together prefills together
            else:
                what = ("alone, then into the batch" if step.handed_off else "alone, to the end") + f" ({step.tokens} tokens)"
            self.lines.append(f"    at {1000 * (step.start - self.t0):8.1f} ms  {1000 * step.seconds:7.1f} ms  {what}")


def burst(core: Any, log: StepLog, texts: list[str], max_tokens: int, thinking: bool) -> list[float]:
    """Submit one request per text at the same moment; each one's time to first token (ms)."""
    from lib_mlx.core import ChatPrompt, SamplingParams
    from lib_mlx.core.events import ReasoningDelta, TextDelta

    prompts = [core.render(ChatPrompt(messages=[{"role": "user", "content": t}], thinking=thinking)) for t in texts]
    barrier = threading.Barrier(len(prompts))
    ttft = [0.0] * len(prompts)

    def client(i: int) -> None:
        barrier.wait()
        start = time.perf_counter()
        log.t0 = log.t0 or start
        generation = core.submit(prompts[i], SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True))
        for event in generation:
            if not ttft[i] and isinstance(event, (TextDelta, ReasoningDelta)):
                ttft[i] = 1000 * (time.perf_counter() - start)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.read(core)
    return ttft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.burst", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "cpu", "phone"), default="cpu")
    parser.add_argument("--family", choices=("qwen3", "gemma4_text"), default="qwen3")
    parser.add_argument("--bits", type=int, default=None)
    parser.add_argument("--trials", type=int, default=4, help="bursts per size; the first one warms up")
    parser.add_argument("--prompt-tokens", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="batch steps shown per listed trial")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "lib_mlx-bench-models")
    args = parser.parse_args(argv)

    import mlx.core as mx

    from lib_mlx.config import MlxModelConfig
    from lib_mlx.core import MlxCore
    from lib_mlx.core.loader import load

    spec = ModelSpec(args.family, args.size, args.bits)
    model_dir = build(spec, args.models_dir / spec.name)
    thinking = args.family == "qwen3"
    core = MlxCore(load(MlxModelConfig(model_path=str(model_dir))), queue_limit=4)
    log = StepLog()
    print(f"{spec.name} on {mx.default_device()}, {args.prompt_tokens}-token prompts, {args.max_tokens} tokens each")
    try:
        for n in (1, 2, 4):
            for trial in range(args.trials):
                log.t0, log.lines = 0.0, []
                texts = [measure.make_text(core.loaded.tokenizer, args.prompt_tokens, f"burst-{n}-{trial}-{i}") for i in range(n)]
                ttft = burst(core, log, texts, args.max_tokens, thinking)
                print(f"{n} at once, trial {trial}: first token after {', '.join(f'{t:.0f}' for t in sorted(ttft))} ms")
                if trial in (0, args.trials - 1):
                    print("\n".join(log.lines[: args.steps]))
    finally:
        core.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
