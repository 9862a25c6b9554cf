"""The report: tables of medians as Markdown, the machine description, ``RESULTS.md`` upkeep."""

from __future__ import annotations

import os
import platform
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(header), "| " + " | ".join("-" * w for w in widths) + " |"]
    out += [line(r) for r in rows]
    return "\n".join(out)


def fmt(value: float, digits: int = 1) -> str:
    if value != value:  # NaN
        return "-"
    return f"{value:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b and a == a and b == b else "-"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return f"{int(line.split()[1]) / 2**20:.0f} GiB"
    except OSError:
        pass
    return "?"


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "-"


def device_kind() -> str:
    import mlx.core as mx

    return "gpu" if mx.default_device() == mx.gpu else "cpu"


def machine(load_before: tuple[float, ...], load_after: tuple[float, ...]) -> list[str]:
    import mlx.core as mx

    device = str(mx.default_device())
    try:
        info = mx.device_info() if hasattr(mx, "device_info") else {}
        name = info.get("device_name") or info.get("architecture")
        if name:
            device += f" ({name})"
    except Exception:  # noqa: BLE001 - descriptive only
        pass
    return [
        f"- Date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
        f"- Machine: {platform.system()} {platform.machine()}, {_cpu_model()}, {os.cpu_count()} cores, {_memory_gib()} RAM",
        f"- MLX device: {device}",
        f"- Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}; "
        f"after: {' / '.join(f'{x:.2f}' for x in load_after)}",
        f"- Python {sys.version.split()[0]}, mlx {_version('mlx')}, mlx-lm {_version('mlx-lm')}, "
        f"lib_mlx {_version('lib_mlx')}, openai {_version('openai')}",
    ]


def load_average() -> tuple[float, ...]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def write_section(path: Path, key: str, body: str) -> None:
    """Replace (or add) the section ``key`` of ``RESULTS.md``, keeping the others (the CPU and
    GPU runs live side by side)."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    text = path.read_text() if path.exists() else _HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


_HEADER = """# Benchmark results

Produced by `python -m bench` (see `bench/__main__.py` for what each figure means). Each section
is one run on one machine; a new run on the same kind of machine replaces its section.
"""


def report(results: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    out: list[str] = []
    plan = results["plan"]
    out.append(f"## {results['title']}")
    out.append("")
    out += results["machine"]
    out.append(
        f"- Plan: {plan['runs']} runs per figure (medians); single request: {plan['prompt_tokens']}-token prompt, "
        f"{plan['max_tokens']} tokens decoded; conversation: {plan['conv_turns']} turns x {plan['conv_runs']} runs, "
        f"{plan['conv_max_tokens']} tokens per answer; concurrency: {plan['conc_prompt_tokens']}-token prompts, "
        f"{plan['conc_max_tokens']} tokens each, {plan['conc_runs']} runs"
    )
    if results.get("notes"):
        out += [f"- {note}" for note in results["notes"]]
    out.append("")

    single = results["single"]
    if single:
        out.append(
            "### One streamed request (client-side figures; raw = in-process `mlx_lm.stream_generate`, "
            "engine = lib_mlx's engine in-process without HTTP, beside raw in the bench's process; "
            "`python -m bench.first_token` splits the first token's time by stage)"
        )
        out.append("")
        rows = []
        for name, s in single.items():
            for label, key, digits in (("prompt tok/s", "prompt_tps", 0), ("decode tok/s", "decode_tps", 1), ("TTFT ms", "ttft_ms", 0)):
                raw, ours, peer = s["raw"][key], s["ours"][key], s["mlx_lm"][key]
                engine = s.get("engine", {}).get(key, float("nan"))
                extra = f" ({ours - raw:+.0f} ms)" if key == "ttft_ms" else ""
                rows.append([name, label, fmt(raw, digits), fmt(engine, digits), fmt(ours, digits), fmt(peer, digits),
                             ratio(ours, raw) + extra, ratio(ours, peer)])  # fmt: skip
        out.append(table(["model", "figure", "raw", "engine", "ours", "mlx_lm.server", "ours/raw", "ours/mlx_lm"], rows))
        out.append("")

    conv = results["conversation"]
    if conv:
        out.append(
            "### Conversation: time to first token per turn (ms); ours reuses the prompt cache, "
            "'ours, no cache' has it off"
        )
        out.append("")
        rows = []
        for name, c in conv.items():
            for t, turn in enumerate(c["turns"], 1):
                rows.append([
                    name, str(t), str(turn["prompt_tokens"]), str(turn["cached_tokens"]), fmt(turn["ours"], 0),
                    fmt(turn["nocache"], 0), fmt(turn["mlx_lm"], 0), ratio(turn["ours"], turn["nocache"]),
                    ratio(turn["ours"], turn["mlx_lm"]),
                ])  # fmt: skip
        out.append(table(["model", "turn", "prompt tok", "cached tok", "ours", "ours, no cache", "mlx_lm.server", "ours/no cache", "ours/mlx_lm"], rows))
        out.append("")
        if results.get("checkpoint"):
            out.append("Prompt-cache operations (in-process, per model): " + "; ".join(
                f"{name}: snapshot {v['snapshot_ms']:.2f} ms, fetch {v['fetch_ms']:.2f} ms, "
                f"first step after a snapshot {v['step_shared_ms']:.2f} ms vs {v['step_ms']:.2f} ms "
                f"({v['tokens']} tokens, {v['mib']:.1f} MiB)"
                for name, v in results["checkpoint"].items()
            ))  # fmt: skip
            out.append("")

    conc = results["concurrency"]
    if conc:
        out.append(
            "### Concurrent streaming clients (ours with queue_limit 4; agg tok/s = all clients' tokens per "
            "second while all of them decode; raw batch = mlx-lm's `BatchGenerator` in-process on the same "
            "prompts, batch size 4: what batching gets out of this machine without a server)"
        )
        out.append("")
        rows = []
        for name, c in conc.items():
            base = c["1"]["ours"]["tps"] if "1" in c else float("nan")
            raw_base = c["1"].get("raw", {}).get("tps", float("nan")) if "1" in c else float("nan")
            for n, fig in c.items():
                o, p = fig["ours"], fig["mlx_lm"]
                r = fig.get("raw", {}).get("tps", float("nan"))
                rows.append([
                    name, n, fmt(r), fmt(o["tps"]), fmt(p["tps"]), ratio(o["tps"], r), ratio(o["tps"], p["tps"]),
                    ratio(r, raw_base), ratio(o["tps"], base),
                    f"{fmt(o['ttft_ms'], 0)} / {fmt(o['ttft_max_ms'], 0)}", f"{fmt(p['ttft_ms'], 0)} / {fmt(p['ttft_max_ms'], 0)}",
                ])  # fmt: skip
        out.append(table(["model", "clients", "raw batch agg tok/s", "ours agg tok/s", "mlx_lm agg tok/s", "ours/raw batch",
                          "ours/mlx_lm", "raw batch vs 1", "ours vs 1 client", "ours TTFT med/max ms",
                          "mlx_lm TTFT med/max ms"], rows))  # fmt: skip
        out.append("")
    return "\n".join(out)


def merge(paths: list[Path]) -> dict[str, Any]:
    """One run's results from several ``--json`` files of the same plan (a family benched in
    parts, to fit time-limited machines): later files add their models' tables."""
    import json

    merged: dict[str, Any] = {}
    for path in paths:
        part = json.loads(Path(path).read_text())
        if not merged:
            merged = part
            continue
        for key in ("single", "conversation", "concurrency", "checkpoint"):
            merged[key].update(part.get(key, {}))
        merged["machine"] = [*part["machine"][:1], *merged["machine"][1:]]
    return merged


if __name__ == "__main__":  # python -m bench.report OUT.md KEY part1.json part2.json ...
    out, key, *parts = sys.argv[1:]
    write_section(Path(out), key, report(merge([Path(p) for p in parts])))
