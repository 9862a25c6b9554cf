"""What makes each family itself: special tokens, chat template, stop tokens, model config.

Values follow the real checkpoints (``Qwen/Qwen3-*``, ``google/gemma-4-*-it``,
``meta-llama/Meta-Llama-3-*-Instruct``) scaled down: same ``model_type`` and field names, tiny
widths and depths.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import _templates

# The pre-tokenizer split patterns of the real tokenizers (Qwen2/3 and Llama 3). Both keep a run
# of newlines ("\n\n") in one piece, which is why "\n\n" can be a single token.
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


@dataclass(frozen=True)
class FamilySpec:
    """One model family: its tokens, template and config (see module doc)."""

    name: str
    # (content, special) in id order; ``specials_first`` puts them before the BPE vocabulary
    # (Gemma: <pad>=0, <eos>=1, <bos>=2), otherwise after it (Qwen, Llama).
    specials: tuple[tuple[str, bool], ...]
    specials_first: bool
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    end_of_turn: str  # appended to a scripted chain that does not end with a stop token
    stop_tokens: tuple[str, ...]  # generation_config.json eos_token_id
    chat_template: str
    split_regex: str
    add_bos: bool  # the tokenizer's post-processor prepends ``bos`` on encode
    # Typical triggers (the text of a rendered prompt's last token) by situation, and the
    # template text that ends each such prompt (used to check that added pieces leave them be).
    triggers: Mapping[str, str]
    prompt_suffixes: Mapping[str, str]
    sampling: Mapping[str, Any] = field(default_factory=dict)
    make_config: Callable[..., dict[str, Any]] = field(default=lambda **_: {})


def _head_dim(hidden: int) -> int:
    return 16 if hidden <= 128 else 64 if hidden <= 512 else 128


def _qwen3_config(*, hidden: int, layers: int, vocab: int, max_pos: int, ids: dict[str, int]) -> dict[str, Any]:
    hd = _head_dim(hidden)
    heads = max(1, hidden // hd)
    return {
        "architectures": ["Qwen3ForCausalLM"],
        "model_type": "qwen3",
        "hidden_size": hidden,
        "intermediate_size": 3 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "head_dim": hd,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "rms_norm_eps": 1e-6,
        "rope_theta": 1_000_000.0,
        "rope_scaling": None,
        "max_position_embeddings": max_pos,
        "max_window_layers": layers,
        "use_sliding_window": False,
        "sliding_window": None,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": False,
        "vocab_size": vocab,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
    }


def _gemma4_config(*, hidden: int, layers: int, vocab: int, max_pos: int, ids: dict[str, int]) -> dict[str, Any]:
    hd = _head_dim(hidden)
    pattern = min(5, layers)  # the real 4 sliding : 1 full, cut down so 2 layers get one of each
    kinds = ["sliding_attention"] * (pattern - 1) + ["full_attention"]
    return {
        "architectures": ["Gemma4ForCausalLM"],
        "model_type": "gemma4_text",
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // hd),
        "num_key_value_heads": 1,
        "head_dim": hd,
        "global_head_dim": 2 * hd,
        "global_partial_rotary_factor": 0.25,
        "num_kv_shared_layers": 0,  # must stay < num_hidden_layers at tiny depths
        "hidden_size_per_layer_input": min(256, max(8, hidden // 4)),
        "vocab_size_per_layer_input": vocab,
        "sliding_window": 512,
        "sliding_window_pattern": pattern,
        "layer_types": (kinds * layers)[:layers],
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_k_eq_v": False,
        "use_double_wide_mlp": True,
        "enable_moe_block": False,
        "rope_parameters": {
            "full_attention": {"partial_rotary_factor": 0.25, "rope_theta": 1_000_000.0, "rope_type": "proportional"},
            "sliding_attention": {"partial_rotary_factor": 1.0, "rope_theta": 10_000.0, "rope_type": "default"},
        },
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": False,
        "max_position_embeddings": max_pos,
        "vocab_size": vocab,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": [ids["<eos>"], ids["<turn|>"]],
    }


def _llama_config(*, hidden: int, layers: int, vocab: int, max_pos: int, ids: dict[str, int]) -> dict[str, Any]:
    hd = _head_dim(hidden)
    heads = max(1, hidden // hd)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": 3 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": max(1, heads // 2),
        "head_dim": hd,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500_000.0,
        "rope_scaling": None,
        "max_position_embeddings": max_pos,
        "initializer_range": 0.02,
        "use_cache": True,
        "tie_word_embeddings": False,
        "vocab_size": vocab,
        "bos_token_id": ids["<|begin_of_text|>"],
        "eos_token_id": [ids["<|end_of_text|>"], ids["<|eot_id|>"]],
    }


QWEN3 = FamilySpec(
    name="qwen3",
    specials=(
        ("<|endoftext|>", True),
        ("<|im_start|>", True),
        ("<|im_end|>", True),
        ("<tool_call>", False),
        ("</tool_call>", False),
        ("<tool_response>", False),
        ("</tool_response>", False),
        ("<think>", False),
        ("</think>", False),
    ),
    specials_first=False,
    bos=None,
    eos="<|im_end|>",
    pad="<|endoftext|>",
    unk=None,
    end_of_turn="<|im_end|>",
    stop_tokens=("<|im_end|>", "<|endoftext|>"),
    chat_template=_templates.QWEN3,
    split_regex=QWEN_SPLIT,
    add_bos=False,
    triggers={"thinking": "\n", "no_thinking": "\n\n"},
    prompt_suffixes={
        "thinking": "<|im_start|>assistant\n",
        "no_thinking": "<|im_start|>assistant\n<think>\n\n</think>\n\n",
    },
    sampling={"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95},
    make_config=_qwen3_config,
)

GEMMA4_TEXT = FamilySpec(
    name="gemma4_text",
    specials=tuple(
        (token, True)
        for token in (
            "<pad>", "<eos>", "<bos>", "<unk>", "<mask>",
            "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
            "<|tool>", "<tool|>", "<|tool_call>", "<tool_call|>", "<|tool_response>", "<tool_response|>",
            '<|"|>', "<|image>", "<image|>", "<|image|>", "<|audio>", "<audio|>", "<|audio|>", "<|video|>",
        )  # fmt: skip
    ),
    specials_first=True,
    bos="<bos>",
    eos="<eos>",
    pad="<pad>",
    unk="<unk>",
    end_of_turn="<turn|>",
    stop_tokens=("<eos>", "<turn|>", "<|tool_response>"),  # a turn that calls tools ends at <|tool_response>
    chat_template=_templates.GEMMA4,
    split_regex=LLAMA_SPLIT,
    add_bos=True,
    triggers={"thinking": "\n", "no_thinking": "<channel|>", "after_tool": "<tool_response|>"},
    prompt_suffixes={
        "thinking": "<|turn>model\n",
        "no_thinking": "<|turn>model\n<|channel>thought\n<channel|>",
        "after_tool": "<tool_response|>",
    },
    sampling={"do_sample": True, "temperature": 1.0, "top_k": 64, "top_p": 0.95},
    make_config=_gemma4_config,
)

LLAMA = FamilySpec(
    name="llama",
    specials=(
        ("<|begin_of_text|>", True),
        ("<|end_of_text|>", True),
        ("<|reserved_special_token_0|>", True),
        ("<|reserved_special_token_1|>", True),
        ("<|reserved_special_token_2|>", True),
        ("<|reserved_special_token_3|>", True),
        ("<|start_header_id|>", True),
        ("<|end_header_id|>", True),
        ("<|reserved_special_token_4|>", True),
        ("<|eot_id|>", True),
    ),
    specials_first=False,
    bos="<|begin_of_text|>",
    eos="<|eot_id|>",
    pad=None,
    unk=None,
    end_of_turn="<|eot_id|>",
    stop_tokens=("<|end_of_text|>", "<|eot_id|>"),
    chat_template=_templates.LLAMA3,
    split_regex=LLAMA_SPLIT,
    add_bos=True,
    triggers={"default": "\n\n"},
    prompt_suffixes={"default": "<|start_header_id|>assistant<|end_header_id|>\n\n"},
    sampling={"do_sample": True, "temperature": 0.6, "top_p": 0.9},
    make_config=_llama_config,
)

FAMILIES: dict[str, FamilySpec] = {spec.name: spec for spec in (QWEN3, GEMMA4_TEXT, LLAMA)}


def family_spec(family: str) -> FamilySpec:
    try:
        return FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}") from None
