"""``python -m bench.keepalive``: time to the first token on a reused (keep-alive) connection.

Clients such as the ``openai`` SDK keep their connection open, so every request after the first
travels on a reused socket. A server that leaves Nagle's algorithm on there pays ~40 ms per
request (delayed ACK) that a fresh connection never shows (issue 20.5). This streams the same
prompts over one ``http.client`` connection kept open for all runs, to ``lib-mlx serve`` and to
``mlx_lm.server``, next to raw ``mlx_lm.stream_generate`` on the same tokens, and also times a
keep-alive ``GET /health`` (ours) to show the transport alone. Prints median ms per contender.
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from . import measure, servers
from .models import ModelSpec, build


class KeptAlive:
    """One HTTP/1.1 connection reused for every request (asserted: never reopened)."""

    def __init__(self, base_url: str) -> None:
        url = urlsplit(base_url)
        self.conn = http.client.HTTPConnection(url.hostname, url.port, timeout=900)
        self.conn.connect()
        self.sock = self.conn.sock
        self.reopened = 0  # a server without keep-alive (HTTP/1.0) closes after each response

    def _check_reused(self) -> None:
        if self.conn.sock is not self.sock:
            self.reopened += 1
            self.conn.close()
            self.conn.connect()
            self.sock = self.conn.sock

    def get(self, path: str) -> float:
        t0 = time.perf_counter()
        self.conn.request("GET", path)
        response = self.conn.getresponse()
        response.read()
        elapsed = time.perf_counter() - t0
        self._check_reused()
        return elapsed

    def first_token(self, model: str, messages: list[dict[str, Any]], max_tokens: int, thinking: bool) -> float:
        body = json.dumps({"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0.0,
                           "stream": True, "chat_template_kwargs": {"enable_thinking": thinking}})  # fmt: skip
        t0 = time.perf_counter()
        self.conn.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = self.conn.getresponse()
        first = 0.0
        for raw_line in response:  # read to the end: the connection is reused next
            line = raw_line.decode().strip()
            if first or not line.startswith("data: {"):
                continue
            for choice in json.loads(line[6:]).get("choices", []):
                delta = choice.get("delta") or {}
                if delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning"):
                    first = time.perf_counter()
        self._check_reused()
        return first - t0

    def close(self) -> None:
        self.conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.keepalive", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=("tiny", "cpu", "phone"), default="tiny")
    parser.add_argument("--family", choices=("qwen3", "gemma4_text"), default="qwen3")
    parser.add_argument("--bits", type=int, default=None)
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--no-mlx-lm", action="store_true", help="skip mlx_lm.server")
    parser.add_argument("--models-dir", type=Path, default=Path(tempfile.gettempdir()) / "lib_mlx-bench-models")
    args = parser.parse_args(argv)

    import mlx.core as mx

    spec = ModelSpec(args.family, args.size, args.bits)
    model_dir = build(spec, args.models_dir / spec.name)
    thinking = args.family == "qwen3"
    work = Path(tempfile.mkdtemp(prefix="lib_mlx-keepalive-"))
    print(f"{spec.name} on {mx.default_device()}; logs in {work}", file=sys.stderr)
    contenders = [servers.start_ours(model_dir, work)]
    if not args.no_mlx_lm:
        contenders.append(servers.start_mlx_lm(model_dir, work))
    raw = measure.Raw(model_dir)
    rows: dict[str, list[float]] = {}
    with servers.running(*contenders):
        conns = {s.name: KeptAlive(s.base_url) for s in contenders}
        try:
            for run in range(args.runs + 1):  # run 0 warms every path up
                text = measure.make_text(raw.tokenizer, args.prompt_tokens, f"ka-{run}")
                messages = [{"role": "user", "content": text}]
                times = {"raw mlx_lm.stream_generate": raw.run(measure.render(raw.tokenizer, messages, thinking), args.max_tokens).ttft}
                for server in contenders:
                    # A different prompt per server: neither sees the other's text in its cache.
                    own = [{"role": "user", "content": text + f" ({server.name})"}]
                    times[f"TTFT {server.name}"] = conns[server.name].first_token(
                        server.model, own, args.max_tokens, thinking
                    )
                times["GET /health ours"] = conns[contenders[0].name].get("/health")
                if run == 0:
                    continue
                for name, value in times.items():
                    rows.setdefault(name, []).append(value * 1000)
        finally:
            for conn in conns.values():
                conn.close()
            raw.close()
    for name, conn in conns.items():
        kept = "kept alive for every request" if not conn.reopened else f"closed by the server after each response ({conn.reopened}x): a new connection per request"
        print(f"{name}: connection {kept}")
    print(f"\n{spec.name}, {args.prompt_tokens}-token prompt, {args.max_tokens} tokens, {mx.default_device()}: "
          f"median ms over {args.runs} runs, one kept-alive connection per server\n")  # fmt: skip
    for name, values in rows.items():
        print(f"{name:<44} {statistics.median(values):8.2f}   (min {min(values):.2f}, max {max(values):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
