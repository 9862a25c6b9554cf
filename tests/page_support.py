"""Scripted test models and a headless Chromium for the chat page and example tests.

Three tiny Qwen3 models (``lib_mlx.tiny_models``), each scripted through its weights so that
greedy decoding emits an exact text through the real generation path:

* ``chat``: thinking on -> ``<think>`` REASONING ``</think>`` ANSWER; thinking off -> ANSWER.
* ``tool``: a short reasoning, then a ``get_weather`` tool call (also after a tool result).
* ``endless``: "On and on and on ..." forever (its chain loops, so it never emits EOS).

The browser is Debian's ``/usr/bin/chromium`` driven by the Python ``playwright`` package
(``scripts/install-browser.sh`` installs both; Playwright's own browser download is never used).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

REASONING_PIECES = ("\nThe user", " wants", " the capital", " of France", ".\n")
ANSWER_PIECES = ("The capital of France", " is", " Paris", ".")
REASONING = "".join(REASONING_PIECES).strip()
ANSWER = "".join(ANSWER_PIECES)
CHAT_CHAINS = {
    "\n": ("<think>", *REASONING_PIECES, "</think>", "\n\n", *ANSWER_PIECES),
    "\n\n": ANSWER_PIECES,
}

TOOL_REASONING_PIECES = ("\nI should", " look up", " the weather", ".\n")
TOOL_CALL_PIECES = (
    "<tool_call>",
    '\n{"name": "get_weather", "arguments": ',
    '{"city": ',
    '"Paris"}',
    "}\n",
    "</tool_call>",
)
TOOL_REASONING = "".join(TOOL_REASONING_PIECES).strip()
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = {"city": "Paris"}
TOOL_CHAINS = {
    "\n": ("<think>", *TOOL_REASONING_PIECES, "</think>", "\n\n", *TOOL_CALL_PIECES),
    "\n\n": TOOL_CALL_PIECES,
}
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": TOOL_NAME,
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

# "On" " and" " on", then " on" -> " and" again (patched in by make_endless).
ENDLESS_CHAINS = {"\n": ("On", " and", " on"), "\n\n": ("On", " and", " on")}

CHROMIUM = os.environ.get("LIB_MLX_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def make_endless(model_dir: Path, last: str, first: str) -> None:
    """Rewire a scripted model so that ``last`` is followed by ``first`` instead of the end of
    turn: its chain becomes a loop and greedy decoding never stops (tiny_models refuses loops on
    purpose; a stop test needs one). Scripted tokens have basis-vector embeddings ``u``
    (``tiny_models._weights``), so the end-of-turn row's component along ``u`` moves to
    ``first``'s row."""
    import mlx.core as mx
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    eot = tok.token_to_id("<|im_end|>")
    (last_id,) = tok.encode(last, add_special_tokens=False).ids
    (first_id,) = tok.encode(first, add_special_tokens=False).ids
    (weights_file,) = model_dir.glob("*.safetensors")
    weights = {k: np.array(v) for k, v in mx.load(str(weights_file)).items()}
    u = weights["model.embed_tokens.weight"][last_id]
    head = weights["lm_head.weight"]
    moved = (head[eot] @ u) / (u @ u) * u
    head[eot] = head[eot] - moved
    head[first_id] = head[first_id] + moved
    mx.save_safetensors(str(weights_file), {k: mx.array(v) for k, v in weights.items()}, metadata={"format": "mlx"})


def build_page_models(make_model: Any, root: Path) -> dict[str, Path]:
    """The three models; ``make_model`` is the session's ``ModelFactory`` (conftest)."""
    chat = make_model("qwen3", chains=CHAT_CHAINS)
    tool = make_model("qwen3", chains=TOOL_CHAINS)
    base = make_model("qwen3", chains=ENDLESS_CHAINS, max_position_embeddings=1 << 17)  # ~20 minutes of tokens
    endless = root / "endless-qwen3"
    if not endless.exists():
        shutil.copytree(base, endless)
        make_endless(endless, " on", " and")
    return {"chat": chat, "tool": tool, "endless": endless}


def have_browser() -> str | None:
    """Why the browser tests cannot run here, or None when they can."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} is missing (run scripts/install-browser.sh)"
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "the playwright package is missing (run scripts/install-browser.sh)"
    return None


def launch_chromium(playwright: Any, user_data_dir: Path):
    """A headless Chromium context with a fresh profile (Debian's binary, offline-safe flags)."""
    return playwright.chromium.launch_persistent_context(
        str(user_data_dir),
        executable_path=CHROMIUM,
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1100, "height": 820},
        device_scale_factor=1,
    )


def post_json(request: Any) -> dict[str, Any] | None:
    """The JSON body of a recorded Playwright request, if it has one."""
    data = request.post_data
    if not data:
        return None
    try:
        return json.loads(data)
    except ValueError:
        return None
