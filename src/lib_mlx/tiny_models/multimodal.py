"""A tiny random-initialised Gemma 4 multimodal model (text + vision + audio towers).

``build_gemma4_multimodal(path)`` writes a complete mlx-vlm model directory offline, in well
under a second: ``config.json`` with ``text_config``/``vision_config``/``audio_config``,
``model.safetensors``, a byte-level BPE tokenizer trained with ``tokenizers`` carrying Gemma 4's
control tokens (turns, thinking channel, tool calls, and the image/audio markers
``<|image>``/``<image|>``/``<|image|>``, ``<|audio>``/``<audio|>``/``<|audio|>``) and its
named special tokens (``image_token``, ``boi_token``… as ``extra_special_tokens``), Gemma 4's
official chat template (it renders ``{"type": "image"}``/``{"type": "audio"}`` content items as
the ``<|image|>``/``<|audio|>`` placeholders), and ``processor_config.json`` (image processor
and audio feature extractor settings) so that ``mlx_vlm.load`` builds a ``Gemma4Processor``.

With ``answer`` (and optionally ``reasoning``) the weights are scripted so that greedy decoding
emits exactly ``<|channel>thought\n{reasoning}<channel|>{answer}<turn|>`` after a thinking
prompt, and ``{answer}<turn|>`` after a non-thinking one (whose prompt already ends in the empty
thought channel). mlx-vlm's Gemma 4 ties its output head to the input embeddings, so the
untied-head trick of ``tiny_models._weights`` does not apply; instead every layer's output projections are
zeroed (the next token depends on the current one only) and the chain is encoded in the
embeddings and the final norm: with ``E`` the embedding rows of the chain's tokens and ``w``
the final norm's weight, the logits after token ``a`` are ``E diag(w) E[a]`` up to a positive
scale, so any symmetric matrix ``M = E diag(w) E^T`` is reachable (``w`` = signs of ``M``'s
eigenvalues). ``M[a, next(a)]`` grows along the chain, so each token's largest logit is its
successor's. The media still flow through the towers into the prompt's embeddings; they just
cannot change the answer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._templates import GEMMA4

# Gemma 4 control tokens (tokenizer_config.json of google/gemma-4-*-it).
BOS, EOS, PAD, UNK, MASK = "<bos>", "<eos>", "<pad>", "<unk>", "<mask>"
TURN_START, TURN_END = "<|turn>", "<turn|>"
THINK = "<|think|>"
CHANNEL_START, CHANNEL_END = "<|channel>", "<channel|>"
TOOL_START, TOOL_END = "<|tool>", "<tool|>"
TOOL_CALL_START, TOOL_CALL_END = "<|tool_call>", "<tool_call|>"
TOOL_RESPONSE_START, TOOL_RESPONSE_END = "<|tool_response>", "<tool_response|>"
STRING_DELIM = '<|"|>'
BOI, EOI, IMAGE_TOKEN = "<|image>", "<image|>", "<|image|>"
BOA, EOA, AUDIO_TOKEN = "<|audio>", "<audio|>", "<|audio|>"
VIDEO_TOKEN = "<|video|>"

SPECIAL_TOKENS = [
    PAD, EOS, BOS, UNK, MASK,
    TURN_START, TURN_END, THINK, CHANNEL_START, CHANNEL_END,
    TOOL_START, TOOL_END, TOOL_CALL_START, TOOL_CALL_END, TOOL_RESPONSE_START, TOOL_RESPONSE_END,
    STRING_DELIM, BOI, EOI, IMAGE_TOKEN, BOA, EOA, AUDIO_TOKEN, VIDEO_TOKEN,
]  # fmt: skip

# The processor's budget per image (soft tokens after pooling) and its audio settings.
IMAGE_SOFT_TOKENS = 16
PATCH_SIZE = 16
POOLING_KERNEL = 3
AUDIO_SAMPLE_RATE = 16_000
AUDIO_MS_PER_TOKEN = 40
AUDIO_SEQ_LENGTH = 750

_CORPUS = [
    "<|turn>user\n", "<|turn>model\n", "<|turn>system\n", "<|channel>thought\n<channel|>",
    "The quick brown fox jumps over the lazy dog.",
    "Describe this image. What do you hear in this audio clip?",
    "I see a red square and a blue circle. I hear a tone.",
    "Hello, how are you today? Fine, thank you very much!",
    "call:get_weather{location:Paris,unit:celsius}",
    "0123456789 + - * / = ( ) [ ] { } < > : ; , . ! ? ' \"",
    "abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]


def _train_tokenizer(vocab_size: int, extra_corpus: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE(unk_token=None))
    # Words keep their leading space and trailing newlines (SentencePiece-like pieces such as
    # "model\n" and "thought\n"), then map to byte-level symbols.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(r"\s?[^\s]+\n*|\s+"), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 4 + extra_corpus * 16, trainer)
    return tokenizer


def _tokenizer_config() -> dict[str, Any]:
    named = {
        "image_token": IMAGE_TOKEN,
        "boi_token": BOI,
        "eoi_token": EOI,
        "audio_token": AUDIO_TOKEN,
        "boa_token": BOA,
        "eoa_token": EOA,
        "sot_token": TURN_START,
        "eot_token": TURN_END,
        "soc_token": CHANNEL_START,
        "eoc_token": CHANNEL_END,
        "stc_token": TOOL_CALL_START,
        "etc_token": TOOL_CALL_END,
        "std_token": TOOL_START,
        "etd_token": TOOL_END,
        "str_token": TOOL_RESPONSE_START,
        "etr_token": TOOL_RESPONSE_END,
        "think_token": THINK,
        "escape_token": STRING_DELIM,
    }
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": UNK,
        "mask_token": MASK,
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 4096,
        "padding_side": "left",
        "processor_class": "Gemma4Processor",
        "extra_special_tokens": named,
        "chat_template": GEMMA4,
    }


def _model_config(vocab: dict[str, int], *, audio: bool) -> dict[str, Any]:
    n_vocab = len(vocab)
    text_config = {
        "model_type": "gemma4_text",
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 32,
        "global_head_dim": 32,
        "vocab_size": n_vocab,
        "vocab_size_per_layer_input": n_vocab,
        "hidden_size_per_layer_input": 16,
        "num_kv_shared_layers": 0,
        "sliding_window": 64,
        "sliding_window_pattern": 2,
        "layer_types": ["sliding_attention", "full_attention"],
        "max_position_embeddings": 4096,
        "final_logit_softcapping": 30.0,
        "use_double_wide_mlp": False,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
    }
    config: dict[str, Any] = {
        "model_type": "gemma4",
        "architectures": ["Gemma4ForConditionalGeneration"],
        "text_config": text_config,
        "vocab_size": n_vocab,
        "hidden_size": 64,
        "image_token_id": vocab[IMAGE_TOKEN],
        "boi_token_id": vocab[BOI],
        "eoi_token_id": vocab[EOI],
        "audio_token_id": vocab[AUDIO_TOKEN],
        "boa_token_id": vocab[BOA],
        "eoa_token_id": vocab[EOA],
        "video_token_id": vocab[VIDEO_TOKEN],
        "pad_token_id": vocab[PAD],
        "eos_token_id": [vocab[EOS], vocab[TURN_END]],
        "vision_soft_tokens_per_image": IMAGE_SOFT_TOKENS,
        "audio_ms_per_token": AUDIO_MS_PER_TOKEN,
        "tie_word_embeddings": True,
    }
    config["vision_config"] = {
        "model_type": "gemma4_vision",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 32,
        "global_head_dim": 32,
        "patch_size": PATCH_SIZE,
        "pooling_kernel_size": POOLING_KERNEL,
        "position_embedding_size": 64,
        "default_output_length": IMAGE_SOFT_TOKENS,
        "rms_norm_eps": 1e-6,
    }
    if audio:
        config["audio_config"] = {
            "model_type": "gemma4_audio",
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "subsampling_conv_channels": [8, 4],
            "conv_kernel_size": 5,
            "attention_chunk_size": 12,
            "attention_context_left": 13,
            "attention_context_right": 0,
            "output_proj_dims": 64,
            "rms_norm_eps": 1e-6,
        }
    return config


def _processor_config() -> dict[str, Any]:
    return {
        "processor_class": "Gemma4Processor",
        "image_seq_length": IMAGE_SOFT_TOKENS,
        "audio_seq_length": AUDIO_SEQ_LENGTH,
        "audio_ms_per_token": AUDIO_MS_PER_TOKEN,
        "image_processor": {
            "image_processor_type": "Gemma4ImageProcessor",
            "patch_size": PATCH_SIZE,
            "max_soft_tokens": IMAGE_SOFT_TOKENS,
            "pooling_kernel_size": POOLING_KERNEL,
            "do_resize": True,
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": False,
        },
        "feature_extractor": {
            "feature_extractor_type": "Gemma4AudioFeatureExtractor",
            "feature_size": 128,
            "sampling_rate": AUDIO_SAMPLE_RATE,
            "frame_length_ms": 20.0,
            "hop_length_ms": 10.0,
        },
    }


_MARGIN = 40.0


def _script_chain(model: Any, chain: list[int]) -> None:
    """Hand-set ``model`` so that greedy decoding after ``chain[i]`` emits ``chain[i + 1]``."""
    import mlx.core as mx
    import numpy as np

    lm = model.language_model.model
    hidden = lm.embed_tokens.weight.shape[1]
    if len(set(chain)) != len(chain):
        raise ValueError(f"a scripted chain needs distinct tokens, got {chain}")
    if len(chain) > hidden:
        raise ValueError(f"a scripted chain may have at most {hidden} tokens, got {len(chain)}")
    for layer in lm.layers:
        layer.self_attn.o_proj.weight = mx.zeros_like(layer.self_attn.o_proj.weight)
        layer.mlp.down_proj.weight = mx.zeros_like(layer.mlp.down_proj.weight)
        if getattr(layer, "per_layer_projection", None) is not None:
            layer.per_layer_projection.weight = mx.zeros_like(layer.per_layer_projection.weight)
    n = len(chain)
    m = np.zeros((n, n))
    for i in range(n - 1):
        m[i, i + 1] = m[i + 1, i] = 1.0 + i  # grows along the chain: successor beats predecessor
    # The logits after token i are m[i] / rms(E[i]); scale m so that every successor wins by
    # at least _MARGIN logits (sampling at temperature 1 then still follows the chain).
    for _ in range(2):
        eigvals, eigvecs = np.linalg.eigh(m)
        rows = eigvecs * np.sqrt(np.abs(eigvals))[None, :]
        rms = np.sqrt((rows**2).sum(axis=1) / hidden)
        logits = m / rms[:, None]
        margins = [logits[i, i + 1] - max(0.0, *np.delete(logits[i], i + 1)) for i in range(n - 1)]
        m = m * (_MARGIN / min(margins)) ** 2
    emb = np.zeros(lm.embed_tokens.weight.shape, dtype=np.float32)
    emb[chain, :n] = rows
    norm = np.zeros((hidden,), dtype=np.float32)
    norm[:n] = np.sign(eigvals)
    dtype = lm.embed_tokens.weight.dtype
    lm.embed_tokens.weight = mx.array(emb).astype(dtype)
    lm.norm.weight = mx.array(norm).astype(lm.norm.weight.dtype)


def _chain_tokens(tokenizer: Any, answer: str, reasoning: str | None) -> list[int]:
    """The prompt's last token, then what the model must write (see the module docstring)."""
    thinking_prompt_end = tokenizer.encode(f"{TURN_START}model\n").ids[-1]
    text = f"{CHANNEL_START}thought\n{reasoning or ''}{CHANNEL_END}{answer}{TURN_END}"
    return [thinking_prompt_end, *tokenizer.encode(text).ids]


def build_gemma4_multimodal(
    path: str | Path,
    *,
    answer: str | None = None,
    reasoning: str | None = None,
    audio: bool = True,
    seed: int = 0,
    vocab_size: int = 512,
) -> Path:
    """Write a tiny Gemma 4 multimodal model directory to ``path`` and return it.

    ``answer``/``reasoning``: script greedy decoding to write exactly this (tokens of the
    generated text must be distinct). ``audio=False`` leaves the audio tower out."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_vlm.models import gemma4

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    scripted = [t for t in (reasoning, answer) if t]
    tokenizer = _train_tokenizer(vocab_size, scripted)
    tokenizer.save(str(path / "tokenizer.json"))
    vocab = tokenizer.get_vocab()
    (path / "tokenizer_config.json").write_text(json.dumps(_tokenizer_config(), indent=2))
    (path / "chat_template.jinja").write_text(GEMMA4)
    (path / "processor_config.json").write_text(json.dumps(_processor_config(), indent=2))

    config = _model_config(vocab, audio=audio)
    if answer is not None:
        # Logit soft-capping would squash the scripted margins; the chain needs none.
        config["text_config"]["final_logit_softcapping"] = None
    model_config = gemma4.ModelConfig.from_dict(config)
    model_config.text_config = gemma4.TextConfig.from_dict(config["text_config"])
    model_config.vision_config = gemma4.VisionConfig.from_dict(config["vision_config"])
    model_config.audio_config = gemma4.AudioConfig.from_dict(config["audio_config"]) if audio else None
    mx.random.seed(seed)
    model = gemma4.Model(model_config)
    if answer is not None:
        _script_chain(model, _chain_tokens(tokenizer, answer, reasoning))
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    (path / "config.json").write_text(json.dumps(config, indent=2))
    (path / "generation_config.json").write_text(
        json.dumps({"eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"]}, indent=2)
    )
    return path


# --- sample media for tests (no encoders needed) ---------------------------------------------


def tone(seconds: float = 1.0, rate: int = AUDIO_SAMPLE_RATE, freq: float = 440.0) -> Any:
    """A sine tone as float32 samples in [-0.5, 0.5]."""
    import numpy as np

    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def png_bytes(width: int = 64, height: int = 48, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="PNG")
    return buf.getvalue()


def wav_bytes(samples: Any, rate: int = AUDIO_SAMPLE_RATE, channels: int = 1) -> bytes:
    """16-bit PCM WAV (stdlib ``wave``); ``samples`` is (n,) or (n, channels) in [-1, 1]."""
    import io
    import wave

    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _crc16(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x8005) & 0xFFFF if crc & 0x8000 else (crc << 1) & 0xFFFF
    return crc


def flac_bytes(samples: Any, rate: int = AUDIO_SAMPLE_RATE, block: int = 4096) -> bytes:
    """Mono 16-bit FLAC with VERBATIM subframes: a valid (uncompressed) FLAC stream."""
    import numpy as np

    pcm = (np.clip(np.asarray(samples, dtype=np.float32), -1, 1) * 32767).astype(">i2")
    n = len(pcm)
    info = bytearray()
    info += block.to_bytes(2, "big") + block.to_bytes(2, "big") + bytes(6)  # block sizes, frame sizes unknown
    info += ((rate << 44) | (0 << 41) | (15 << 36) | n).to_bytes(8, "big")  # rate, 1 channel, 16 bits
    info += bytes(16)  # MD5 unknown
    out = bytearray(b"fLaC") + bytes([0x80, 0, 0, len(info)]) + info
    for number, start in enumerate(range(0, n, block)):
        chunk = pcm[start : start + block]
        if number >= 128:
            raise ValueError("flac_bytes writes at most 128 frames")
        header = bytearray([0xFF, 0xF8, 0x70, 0x08, number])  # fixed blocks, 16-bit size follows
        header += (len(chunk) - 1).to_bytes(2, "big")
        header.append(_crc8(header))
        frame = header + bytes([0x02]) + chunk.tobytes()  # subframe: VERBATIM
        out += frame + _crc16(frame).to_bytes(2, "big")
    return bytes(out)


def mp3_silence_bytes(frames: int = 40) -> bytes:
    """MPEG-1 Layer III frames (128 kbit/s, 44.1 kHz, joint stereo) whose side information is
    all zero: they decode to silence, about 26 ms a frame."""
    return (bytes([0xFF, 0xFB, 0x90, 0x64]) + bytes(413)) * frames


__all__ = [
    "AUDIO_SAMPLE_RATE",
    "AUDIO_TOKEN",
    "BOA",
    "BOI",
    "EOA",
    "EOI",
    "IMAGE_SOFT_TOKENS",
    "IMAGE_TOKEN",
    "build_gemma4_multimodal",
    "flac_bytes",
    "mp3_silence_bytes",
    "png_bytes",
    "tone",
    "wav_bytes",
]
