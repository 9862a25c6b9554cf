"""Random-initialised model directories of real architectures, built offline for the benchmark.

Each directory has ``config.json``, safetensors weights (bf16, or 4-bit quantized), and a
byte-level BPE tokenizer whose vocabulary is built programmatically to exactly the model's
``vocab_size`` (so any token the random model emits decodes, even at phone-sized vocabularies of
150k-260k), plus the family's control tokens and a faithful-enough chat template.

Generation must run to ``max_tokens`` in every contender without a hook: the EOS token is the
tokenizer's last id, one past the model's ``vocab_size``, so the model can never emit it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Qwen3 (as Qwen3-2507 "thinking" templates do): ChatML turns; with thinking on the generation
# prompt opens <think>, so everything a random model writes is reasoning (reasoning in every
# turn); thinking off writes an empty <think></think> block. Prior turns' reasoning is dropped.
QWEN3_TEMPLATE = r"""
{%- for message in messages -%}
{%- if message['role'] == 'assistant' -%}
{%- set content = message['content'] -%}
{%- if '</think>' in content -%}{%- set content = content.split('</think>')[-1].lstrip('\n') -%}{%- endif -%}
{{- '<|im_start|>assistant\n' + content + '<|im_end|>\n' -}}
{%- else -%}
{{- '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' -}}
{%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|im_start|>assistant\n' -}}
{%- if enable_thinking is defined and not enable_thinking -%}{{- '<think>\n\n</think>\n\n' -}}
{%- else -%}{{- '<think>\n' -}}{%- endif -%}
{%- endif -%}
"""

# Gemma 4: <|turn>role ... <turn|>, thinking switched on by <|think|> in the system turn, the
# model's reasoning in <|channel>thought ... <channel|> (stripped from prior turns); with thinking
# off the generation prompt holds an empty thought channel.
GEMMA4_TEMPLATE = r"""
{{- bos_token -}}
{%- set loop_messages = messages -%}
{%- if (enable_thinking is defined and enable_thinking) or messages[0]['role'] == 'system' -%}
{{- '<|turn>system\n' -}}
{%- if enable_thinking is defined and enable_thinking -%}{{- '<|think|>\n' -}}{%- endif -%}
{%- if messages[0]['role'] == 'system' -%}{{- messages[0]['content'] | trim -}}{%- set loop_messages = messages[1:] -%}{%- endif -%}
{{- '<turn|>\n' -}}
{%- endif -%}
{%- for message in loop_messages -%}
{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}
{%- set content = message['content'] -%}
{%- if role == 'model' and '<channel|>' in content -%}{%- set content = content.split('<channel|>')[-1] -%}{%- endif -%}
{{- '<|turn>' + role + '\n' + (content | trim) + '<turn|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
{{- '<|turn>model\n' -}}
{%- if not (enable_thinking is defined and enable_thinking) -%}{{- '<|channel>thought\n<channel|>' -}}{%- endif -%}
{%- endif -%}
"""

QWEN3_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<tool_call>", "</tool_call>"]
GEMMA4_SPECIALS = [
    "<pad>", "<bos>", "<unk>", "<|turn>", "<turn|>", "<|think|>", "<|channel>", "<channel|>",
    "<|tool_call>", "<tool_call|>", "<|tool>", "<tool|>", "<|tool_response>", "<tool_response|>",
]  # fmt: skip
EOS = "<|unreachable_eos|>"
BUILD_REVISION = 2  # bump when the weights a spec builds change (rebuilds stamped directories)


@dataclass(frozen=True)
class ModelSpec:
    """One benchmark model: a family, a size preset and a weight format."""

    family: str  # "qwen3" | "gemma4_text"
    size: str  # "cpu" | "phone"
    bits: int | None  # None (bf16) or 4

    @property
    def name(self) -> str:
        return f"{self.family}-{self.size}-{'bf16' if self.bits is None else f'{self.bits}bit'}"


def model_config(family: str, size: str) -> dict[str, Any]:
    """The architecture config: ``phone`` is the real Qwen3-0.6B / Gemma-4-E2B text shape,
    ``cpu`` a reduced one that decodes at tens of tokens/s on a CPU, ``tiny`` (Qwen3 only) one
    whose compute is so small that a token's time is mostly the per-token overhead around it."""
    if family == "qwen3":
        cfg: dict[str, Any] = {
            "model_type": "qwen3",
            "rms_norm_eps": 1e-6,
            "rope_theta": 1_000_000.0,
            "max_position_embeddings": 40960,
            "tie_word_embeddings": True,
        }
        if size == "phone":
            cfg.update(hidden_size=1024, num_hidden_layers=28, intermediate_size=3072, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, vocab_size=151936)  # fmt: skip
        elif size == "tiny":  # compute near zero: what is left of a token's time is overhead
            cfg.update(hidden_size=64, num_hidden_layers=1, intermediate_size=128, num_attention_heads=2,
                       num_key_value_heads=1, head_dim=32, vocab_size=4096)  # fmt: skip
        else:
            cfg.update(hidden_size=256, num_hidden_layers=4, intermediate_size=768, num_attention_heads=4,
                       num_key_value_heads=2, head_dim=64, vocab_size=16384)  # fmt: skip
        return cfg
    if family == "gemma4_text":
        cfg = {"model_type": "gemma4_text", "max_position_embeddings": 131072, "tie_word_embeddings": True}
        if size == "phone":
            # Gemma-4-E2B's text model: mlx-lm's ModelArgs defaults are exactly its shape.
            cfg.update(hidden_size=1536, num_hidden_layers=35, intermediate_size=6144, num_attention_heads=8,
                       num_key_value_heads=1, head_dim=256, global_head_dim=512, num_kv_shared_layers=20,
                       hidden_size_per_layer_input=256, vocab_size=262144, vocab_size_per_layer_input=262144,
                       sliding_window=512, sliding_window_pattern=5)  # fmt: skip
        else:
            # Small sliding window so that a ~1,000-token history overflows it (rotating caches
            # stop being trimmable there: the case the prompt-end checkpoint exists for).
            cfg.update(hidden_size=256, num_hidden_layers=5, intermediate_size=512, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=64, global_head_dim=128, num_kv_shared_layers=0,
                       hidden_size_per_layer_input=64, vocab_size=16384, vocab_size_per_layer_input=16384,
                       sliding_window=256, sliding_window_pattern=5, use_double_wide_mlp=False)  # fmt: skip
        return cfg
    raise ValueError(f"unknown family {family!r}")


def _alphabets() -> tuple[list[str], list[str]]:
    """Byte-level symbols: the ASCII bytes (most useful first, so that ordinary text
    compresses into few tokens) and the bytes >= 0x80."""
    from tokenizers import pre_tokenizers

    symbols = sorted(pre_tokenizers.ByteLevel.alphabet(), key=_byte_of)
    ascii_ = [c for c in symbols if _byte_of(c) < 0x80]
    high = [c for c in symbols if _byte_of(c) >= 0x80]
    first = ["Ġ"] + list("etaoinshrdlucmfwypvbgkjqxz") + list("ETAOINSHRDLUCMFWYPVBGKJQXZ")
    first += list(".,!?'\"-:;()0123456789") + ["Ċ"]
    return first + [c for c in ascii_ if c not in first], high


def _byte_of(symbol: str) -> int:
    from mlx_lm.tokenizer_utils import _byte_decoder

    return _byte_decoder()[symbol]


def build_tokenizer(n_regular: int, specials: list[str]) -> Any:
    """A byte-level BPE: ``n_regular`` ordinary tokens built from ASCII bytes (the symbols,
    then pairs, then longer pieces; merges consistent with the vocabulary), the ``specials``,
    then ``EOS``, then the 128 non-ASCII byte symbols.

    The model's ``vocab_size`` is ``n_regular + len(specials)``: it can emit neither EOS nor a
    lone non-ASCII byte (a random model stringing those together would never form valid UTF-8,
    and a streaming detokenizer rightly holds such text back until the end), while any text can
    still be encoded."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    alphabet, high = _alphabets()
    vocab: dict[str, int] = {c: i for i, c in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    letters = alphabet[:54]  # space + lower + upper case
    common = alphabet[:76]

    def add(a: str, b: str) -> bool:
        if len(vocab) >= n_regular:
            return False
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
        return True

    for level in ([(a, b) for a in letters for b in letters], [(a, b) for a in common for b in common],
                  [(a, b) for a in alphabet for b in alphabet]):  # fmt: skip
        for a, b in level:
            if not add(a, b):
                break
    stems = [t for t in list(vocab) if len(t) == 2]
    while len(vocab) < n_regular:  # triples, quadruples, ... until the vocabulary is full
        grown = []
        for stem in stems:
            for c in letters:
                if not add(stem, c):
                    break
                grown.append(stem + c)
            if len(vocab) >= n_regular:
                break
        stems = grown
    for token in [*specials, EOS, *high]:
        vocab[token] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([*specials, EOS])
    return tok


def build(spec: ModelSpec, out_dir: Path) -> Path:
    """Write the model directory (skipped when it already holds this spec)."""
    import mlx.core as mx
    from mlx.utils import tree_map
    from mlx_lm.utils import _get_classes, quantize_model, save_config, save_model

    out_dir = Path(out_dir)
    stamp = out_dir / "bench_spec.json"
    wanted = {**spec.__dict__, "revision": BUILD_REVISION}
    if stamp.is_file() and json.loads(stamp.read_text()) == wanted:
        return out_dir
    out_dir.mkdir(parents=True, exist_ok=True)

    cfg = model_config(spec.family, spec.size)
    specials = QWEN3_SPECIALS if spec.family == "qwen3" else GEMMA4_SPECIALS
    n_regular = cfg["vocab_size"] - len(specials)
    tok = build_tokenizer(n_regular, specials)
    eos_id = tok.token_to_id(EOS)
    assert eos_id == cfg["vocab_size"], (eos_id, cfg["vocab_size"])
    tok.save(str(out_dir / "tokenizer.json"))
    tok_cfg: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "eos_token": EOS,
        "model_max_length": cfg["max_position_embeddings"],
        "chat_template": QWEN3_TEMPLATE if spec.family == "qwen3" else GEMMA4_TEMPLATE,
    }
    if spec.family == "qwen3":
        tok_cfg["pad_token"] = "<|endoftext|>"
    else:
        tok_cfg.update(bos_token="<bos>", pad_token="<pad>", unk_token="<unk>")
    (out_dir / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=1))
    cfg["eos_token_id"] = eos_id

    model_cls, args_cls = _get_classes(cfg)
    mx.random.seed(0)
    model = model_cls(args_cls.from_dict(cfg))
    _mute_invisible(model, tok, cfg["vocab_size"])
    # bf16 weights, as published models are. 4-bit on the GPU quantizes those (bf16 scales, as
    # mlx-community's models have); on the CPU it quantizes fp32 weights (fp32 scales), because
    # MLX's CPU backend runs bf16-scaled 4-bit matmuls ~6x slower than anything else.
    if spec.bits is None or spec.size == "phone":
        model.update(tree_map(lambda p: p.astype(mx.bfloat16) if p.dtype == mx.float32 else p, model.parameters()))
    mx.eval(model.parameters())
    if spec.bits is not None:
        model, cfg = quantize_model(model, cfg, group_size=64, bits=spec.bits)
    save_model(out_dir, model)
    save_config(cfg, out_dir / "config.json")
    stamp.write_text(json.dumps(wanted))
    return out_dir


def _mute_invisible(model: Any, tok: Any, vocab_size: int) -> None:
    """Make the tokens a client never sees (special tokens, whitespace-only pieces) all but
    unreachable for greedy decoding: their output rows shrink to 1% (the input embedding too
    where the two are tied, harmless for a random model). A random model tends to repeat one
    token; when that token was whitespace inside a reasoning block, the server rightly streamed
    nothing (reasoning is trimmed) and the client saw no token to time. Greedy picks the largest
    of ~150k logits, always far above a row scaled to ~0."""
    import mlx.core as mx

    texts = tok.decode_batch([[i] for i in range(vocab_size)], skip_special_tokens=False)
    specials = {tok.token_to_id(t) for t in QWEN3_SPECIALS + GEMMA4_SPECIALS} - {None}
    mute = [i for i, text in enumerate(texts) if i in specials or not text.strip()]
    head = getattr(model, "lm_head", None)
    layer = head if head is not None and hasattr(head, "weight") else model.model.embed_tokens
    scale = mx.ones((vocab_size, 1), dtype=layer.weight.dtype)
    scale[mx.array(mute)] = 0.01
    layer.weight = layer.weight * scale
