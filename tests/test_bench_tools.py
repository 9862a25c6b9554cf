"""The benchmark's profiling tools still run (on the tiny Qwen3 shape; the figures are not
checked here, the bench is judged by its own runs)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_burst_lists_each_burst_and_the_steps_behind_it(tmp_path) -> None:
    argv = [sys.executable, "-m", "bench.burst", "--size", "tiny", "--trials", "2", "--max-tokens", "3",
            "--prompt-tokens", "24", "--steps", "3", "--models-dir", str(tmp_path)]  # fmt: skip
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    for n in (1, 2, 4):
        heads = [line for line in lines if line.startswith(f"{n} at once, trial ")]
        assert len(heads) == 2
        assert all(len(line.split("after ")[1].split(",")) == n for line in heads)
    assert any("batch step: 4 prompt pieces" in line for line in lines)  # the burst prefills together
    assert any("alone, to the end" in line for line in lines)  # a lone request runs alone
