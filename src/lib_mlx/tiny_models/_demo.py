"""The built-in demo model: a Qwen3-shaped model that thinks briefly, then greets."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from ._build import build_model

DEMO_NAME = "demo-qwen3-v1"  # bump the version whenever the demo's files change

# The answer, shared by both chains: the thinking chain ends in "\n\n", which is also the
# no-thinking trigger, so both lead into the same greeting.
DEMO_ANSWER_PIECES = ("Hello", "!", " I am", " a tiny", " model", " running", " on", " MLX", ".")
DEMO_REASONING_PIECES = ("\nThe user", " says hello", ",", " so", " I should", " greet them", " back", ".\n")
DEMO_CHAINS = {
    "\n": ("<think>", *DEMO_REASONING_PIECES, "</think>", "\n\n", *DEMO_ANSWER_PIECES),
    "\n\n": DEMO_ANSWER_PIECES,
}
# What a reasoning parser should extract (Qwen3 style: the text between <think> and </think>,
# and the answer after "</think>", both without surrounding newlines).
DEMO_REASONING = "".join(DEMO_REASONING_PIECES).strip()
DEMO_ANSWER = "".join(DEMO_ANSWER_PIECES)
# The raw text greedy decoding emits after a thinking-on prompt (the EOS token not included).
DEMO_THINKING_TEXT = "".join(DEMO_CHAINS["\n"])


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lib_mlx"


def default_demo_model(cache_dir: str | Path | None = None) -> Path:
    """The demo model directory, built once into ``cache_dir`` (default ``~/.cache/lib_mlx``,
    honouring ``XDG_CACHE_HOME``) as ``demo-qwen3-v1`` and reused afterwards.

    Greedy decoding after a thinking-on prompt emits ``<think>`` + ``DEMO_REASONING`` +
    ``</think>`` + ``DEMO_ANSWER``; after a thinking-off prompt, ``DEMO_ANSWER``. Safe against
    concurrent callers: each builds into a private directory and renames it into place.
    """
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / DEMO_NAME
    if (target / "config.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{DEMO_NAME}-", dir=root))
    try:
        build_model("qwen3", scratch, chains=DEMO_CHAINS)
        try:
            scratch.rename(target)  # atomic: readers see a complete directory or none
        except OSError:
            if not (target / "config.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target
