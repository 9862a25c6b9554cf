"""An offline byte-level BPE tokenizer per family, and the files ``mlx_lm.load`` reads.

The BPE is trained with the ``tokenizers`` package on a small built-in English corpus (a few
milliseconds, deterministic), then the family's special tokens are registered as added tokens
with the real ``special`` flags. The decoder is ``ByteLevel``, which mlx-lm recognises and
streams with its ``BPEStreamingDetokenizer``.

A scripted piece that is not yet one token becomes an added, non-special token: literally when
it is ASCII (so encoding its text gives the same token back), otherwise in byte-level form (the
``ByteLevel`` decoder would mangle a literal non-ASCII added token), which decodes correctly but
is never produced by encoding.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ._families import FamilySpec

_CORPUS = """\
Hello! How are you today? I am fine, thank you. Hello there, it is nice to meet you.
The user says hello. I should greet them back in a friendly way.
Okay, let me think about this. The user wants to know the weather in Paris.
thought
I will call the weather tool with the city name and then answer.
thought
The assistant answers the question of the user. The model is small and it runs on MLX.

A tiny model running on MLX can still follow a chat template. The system message comes first,
then the user message, then the assistant message. Tools are described in the system turn.

The function returns a response. The tool response contains the temperature and the unit.
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
{"type": "function", "function": {"name": "get_time", "description": "Get the current time"}}
{"type": "object", "properties": {"city": {"type": "string", "description": "The city"}}}
call:get_weather{city:Paris,unit:celsius}
response:get_weather{temperature:21,unit:celsius}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within XML tags. For each function call, return a
json object with function name and arguments within XML tags.

The quick brown fox jumps over the lazy dog. Numbers: 0 1 2 3 4 5 6 7 8 9 10 21 42 100 2024.
Questions? Answers! Lists: one, two, three. Quotes: "yes" and 'no'. Math: (1 + 2) * 3 = 9.
It was a bright cold day in April, and the clocks were striking thirteen.
We choose to go to the moon in this decade and do the other things.
To be, or not to be, that is the question. All that glitters is not gold.
Describe this image. What do you hear in this audio clip? I see a red square.
Sure, here is a short answer. Let me explain step by step. First, second, finally.

system
user
assistant
model
tool
developer
"""


def _byte_encoder() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ``ByteLevel`` alphabet)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def byte_level(text: str) -> str:
    encoder = _byte_encoder()
    return "".join(encoder[b] for b in text.encode("utf-8"))


def train(spec: FamilySpec, vocab_size: int):
    """A trained ``tokenizers.Tokenizer`` carrying ``spec``'s special tokens."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(spec.split_regex), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    added = [AddedToken(content, special=special, normalized=False) for content, special in spec.specials]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=added if spec.specials_first else [],
    )
    tok.train_from_iterator([_CORPUS] * 3, trainer)
    if not spec.specials_first:
        for token in added:  # one at a time keeps the listed id order
            (tok.add_special_tokens if token.special else tok.add_tokens)([token])
    post = [processors.ByteLevel(trim_offsets=False)]
    if spec.add_bos:
        bos_id = tok.token_to_id(spec.bos)
        post.append(
            processors.TemplateProcessing(
                single=f"{spec.bos} $A", pair=f"{spec.bos} $A {spec.bos} $B:1", special_tokens=[(spec.bos, bos_id)]
            )
        )
    tok.post_processor = processors.Sequence(post)
    for text in ("\n", "\n\n", "thought"):
        if len(tok.encode(text, add_special_tokens=False).ids) != 1:
            raise AssertionError(f"the built-in corpus no longer makes {text!r} one token")
    return tok


def token_text(tok, token_id: int) -> str:
    return tok.decode([token_id], skip_special_tokens=False)


def token_id(tok, piece: str, *, add: bool) -> int:
    """The id of the single token whose text is ``piece``; with ``add``, make one if needed."""
    if not piece:
        raise ValueError("a scripted piece must not be empty")
    found = tok.token_to_id(piece)
    if found is not None and token_text(tok, found) == piece:
        return found
    ids = tok.encode(piece, add_special_tokens=False).ids
    if len(ids) == 1 and token_text(tok, ids[0]) == piece:
        return ids[0]
    if not add:
        raise ValueError(
            f"{piece!r} is not a single token of this tokenizer (it encodes to {len(ids)}); "
            "use trigger_for() to find a prompt's last token"
        )
    from tokenizers import AddedToken

    content = piece if piece.isascii() else byte_level(piece)
    tok.add_tokens([AddedToken(content, special=False, normalized=False)])
    new_id = tok.token_to_id(content)
    if new_id is None or token_text(tok, new_id) != piece:
        raise ValueError(f"cannot make {piece!r} a single token")
    return new_id


def tokenizer_config(spec: FamilySpec, max_length: int) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": spec.bos,
        "eos_token": spec.eos,
        "pad_token": spec.pad,
        "unk_token": spec.unk,
        "add_bos_token": spec.add_bos,
        "add_eos_token": False,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "model_max_length": max_length,
        "padding_side": "left",
        "chat_template": spec.chat_template,
    }


def write(tok, spec: FamilySpec, out_dir: Path, max_length: int) -> None:
    tok.save(str(out_dir / "tokenizer.json"))
    config = tokenizer_config(spec, max_length)
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    specials = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token") if config[k]}
    (out_dir / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
