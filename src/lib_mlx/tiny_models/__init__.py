"""Tiny random-initialised MLX models of real architectures, built offline in well under a second.

``build_model("qwen3" | "gemma4_text" | "llama", out_dir, chains=...)`` writes a model directory
that ``mlx_lm.load`` loads like any user's model: real ``model_type``, safetensors weights, a
byte-level BPE tokenizer trained offline with the family's special tokens and its real chat
template. ``chains`` hand-set the weights so that greedy decoding after a given prompt ending
emits an exact token sequence through the real generation path (no hooks). The CLI demo uses
``default_demo_model()``; tests and benchmarks use ``build_model``.

    from lib_mlx.tiny_models import TRIGGERS, build_model
    path = build_model("qwen3", "/tmp/m", chains={
        TRIGGERS["qwen3"]["thinking"]: ["<think>", "\\nHmm", ".\\n", "</think>", "\\n\\n", "Hi", "!"],
    })
"""

from __future__ import annotations

from ._build import Family, build_large_model, build_model, model_bytes
from ._demo import (
    DEMO_ANSWER,
    DEMO_CHAINS,
    DEMO_NAME,
    DEMO_REASONING,
    DEMO_THINKING_TEXT,
    default_demo_model,
)
from ._triggers import CHAT_TEMPLATES, END_OF_TURN, TRIGGERS, trigger_for

__all__ = [
    "CHAT_TEMPLATES",
    "DEMO_ANSWER",
    "DEMO_CHAINS",
    "DEMO_NAME",
    "DEMO_REASONING",
    "DEMO_THINKING_TEXT",
    "END_OF_TURN",
    "TRIGGERS",
    "Family",
    "build_large_model",
    "build_model",
    "default_demo_model",
    "model_bytes",
    "trigger_for",
]
