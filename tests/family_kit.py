"""Real chat templates and vocabularies for the family conformance suite.

They come from the llama-cpp-python sdist on PyPI (it vendors llama.cpp's collection of real
chat templates, ``models/templates/*.jinja``, and real vocabularies, ``models/ggml-vocab-*.gguf``,
with ``.inp``/``.out`` fixtures: texts and the token ids llama.cpp expects). The sdist is fetched
once with pip, checked against its sha256, cached under ``~/.cache/lib_mlx`` and read at test
time; nothing from it is committed.

``real_tokenizer(vocab)`` rebuilds a ``tokenizers`` tokenizer from a gguf vocabulary (byte-level
BPE from the tokens and merges, with the split regex of the vocabulary's ``pre`` type; control
tokens become special added tokens, user-defined ones plain added tokens) and checks it against
the vocabulary's fixture. ``build_real_model`` puts a tiny scripted model under it: the model's
greedy output after a trigger token is an exact text, tokenized as the real tokenizer would
(a token that would have to repeat with another successor is fused with its neighbour into an
extra vocabulary entry that no merge produces, so prompts tokenize exactly as before).
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SDIST_VERSION = "0.3.36"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
CACHE = Path(os.environ.get("LIB_MLX_CACHE", Path.home() / ".cache" / "lib_mlx"))
_MODELS = "vendor/llama.cpp/models/"

# llama.cpp's split regexes by ``tokenizer.ggml.pre`` (src/llama-vocab.cpp).
_CONTRACTIONS = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
_GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
PRE_REGEX: dict[str, list[str]] = {
    "llama-bpe": [
        _CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "qwen2": [_CONTRACTIONS + r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"],
    "qwen35": [
        _CONTRACTIONS
        + r"|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
    ],
    "gpt-2": [_GPT2],
    "starcoder": [r"\p{N}", _GPT2],
}


class SdistUnavailable(RuntimeError):
    pass


def sdist() -> Path:
    """The cached sdist, fetched with pip on first use and checked against its sha256."""
    path = CACHE / f"llama-cpp-python-{SDIST_VERSION}.tar.gz"
    if not path.is_file():
        CACHE.mkdir(parents=True, exist_ok=True)
        download = CACHE / "download"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        cmd += [f"llama-cpp-python=={SDIST_VERSION}", "-d", str(download), "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        found = sorted(download.glob(f"llama_cpp_python-{SDIST_VERSION}.tar.gz"))
        if done.returncode or not found:
            raise SdistUnavailable(f"pip download failed: {done.stderr[-500:]}")
        found[0].replace(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        path.unlink()
        raise SdistUnavailable(f"{path.name}: sha256 {digest}, expected {SDIST_SHA256}")
    return path


@functools.lru_cache(maxsize=1)
def _members() -> dict[str, bytes]:
    """Every template and vocabulary file of the sdist, read in one pass."""
    out: dict[str, bytes] = {}
    with tarfile.open(sdist(), "r:gz") as tar:
        for member in tar:
            _, _, rel = member.name.partition(_MODELS)
            if member.isfile() and (rel.startswith("templates/") or rel.startswith("ggml-vocab-")):
                out[rel] = tar.extractfile(member).read()
    return out


def template(name: str) -> str:
    """``models/templates/<name>.jinja``."""
    return _members()[f"templates/{name}.jinja"].decode()


def vocab_file(name: str, directory: Path) -> Path:
    """``ggml-vocab-<name>.gguf`` written into ``directory`` (gguf reads files)."""
    path = directory / f"ggml-vocab-{name}.gguf"
    if not path.is_file():
        path.write_bytes(_members()[f"ggml-vocab-{name}.gguf"])
    return path


def fixture(name: str) -> list[tuple[str, list[int]]]:
    """The vocabulary's test texts and the ids llama.cpp gives them."""
    members = _members()
    texts = members[f"ggml-vocab-{name}.gguf.inp"].decode().split("\n__ggml_vocab_test__\n")
    ids = members[f"ggml-vocab-{name}.gguf.out"].decode().split("\n")
    return [(t, [int(i) for i in line.split()]) for t, line in zip(texts, ids)]


def _fields(path: Path) -> dict[str, Any]:
    """The ``tokenizer.*`` key-values of a gguf file (the header only; the ``gguf`` package's
    reader takes ~30 s on a 150k vocabulary, this ~0.3 s)."""
    import struct

    data = path.read_bytes()
    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return value[0]

    def string() -> str:
        nonlocal pos
        n = take("Q")
        text = data[pos : pos + n].decode("utf-8", errors="replace")
        pos += n
        return text

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item, n = take("I"), take("Q")
            if item in scalar:
                nonlocal pos
                fmt = f"<{n}{scalar[item]}"
                items = list(struct.unpack_from(fmt, data, pos))
                pos += struct.calcsize(fmt)
                return items
            return [value(item) for _ in range(n)]
        return take(scalar[kind])

    assert data[:4] == b"GGUF", path
    pos = 8
    _tensors, n_kv = take("Q"), take("Q")
    fields: dict[str, Any] = {}
    for _ in range(n_kv):
        key = string()
        fields[key] = value(take("I"))
    return {k: v for k, v in fields.items() if k.startswith("tokenizer.")}


def real_tokenizer(
    name: str,
    directory: Path,
    *,
    rename: Mapping[int, str] | None = None,
    extra: Sequence[tuple[str, bool]] = (),
    plain: Sequence[str] = (),
):
    """A ``tokenizers.Tokenizer`` rebuilt from ``ggml-vocab-<name>.gguf`` (byte-level BPE vocabs).

    ``rename``: ids whose token a family's real tokenizer names differently (the fixture
    vocabulary is a base model's: Llama 3.1's ``<|python_tag|>`` is a reserved token there).
    ``extra``: (text, special) tokens the family adds after the vocabulary (for families whose
    own vocabulary is not in the sdist). ``plain``: renamed or extra tokens that are added but
    not special (Qwen's ``<tool_call>``)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    fields = _fields(vocab_file(name, directory))
    assert fields["tokenizer.ggml.model"] == "gpt2", "only byte-level BPE vocabularies are rebuilt"
    tokens = list(fields["tokenizer.ggml.tokens"])
    types = list(fields["tokenizer.ggml.token_type"])
    for token_id, text in (rename or {}).items():
        tokens[token_id], types[token_id] = text, 4 if text in plain else 3
    merges = [tuple(m.split(" ", 1)) for m in fields["tokenizer.ggml.merges"]]
    for text, _special in extra:  # the family's own tokens, after the vocabulary
        if text not in tokens:
            tokens.append(text)
            types.append(4 if text in plain or not _special else 3)
    vocab = {text: i for i, text in enumerate(tokens)}
    pre = fields["tokenizer.ggml.pre"]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=pre == "llama-bpe", fuse_unk=False))
    splits = [pre_tokenizers.Split(Regex(r), behavior="isolated") for r in PRE_REGEX[pre]]
    tok.pre_tokenizer = pre_tokenizers.Sequence([*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == 3])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == 4])
    return tok, fields


def check_fixture(tok, name: str) -> None:
    """The rebuilt tokenizer gives llama.cpp's ids for every fixture text."""
    for text, expected in fixture(name):
        got = tok.encode(text, add_special_tokens=False).ids
        assert got == expected, (name, text, got, expected)


# -- tiny scripted models over a real tokenizer -----------------------------------------------


def _byte_level(text: str) -> str:
    from lib_mlx.tiny_models._tokenizer import byte_level

    return byte_level(text)


def _fuse_chains(tok, chains: Mapping[int, list[int]]) -> tuple[dict[int, list[int]], list[str]]:
    """Rewrite chains so that every token has one successor: a token that repeats is fused with
    its successor into a new vocabulary entry (text only, no merge makes it). Returns the chains
    and the fused texts (added to the BPE vocabulary, in id order)."""
    base = tok.get_vocab_size()
    fused: list[str] = []
    texts: dict[int, str] = {}

    def text_of(token: int) -> str:
        return texts.get(token) or tok.decode([token], skip_special_tokens=False)

    def new_token(text: str) -> int:
        for i, existing in enumerate(fused):
            if existing == text:
                return base + i
        fused.append(text)
        texts[base + len(fused) - 1] = text
        return base + len(fused) - 1

    out = {trigger: list(chain) for trigger, chain in chains.items()}
    for _ in range(10_000):
        successor: dict[int, int] = {}
        conflict = None
        for trigger, chain in out.items():
            seq = [trigger, *chain]
            for i in range(len(seq) - 1):
                here, nxt = seq[i], seq[i + 1]
                if successor.setdefault(here, nxt) != nxt:
                    conflict = (trigger, i)
                    break
            if conflict:
                break
        if conflict is None:
            return out, fused
        trigger, i = conflict
        chain = out[trigger]
        j = i - 1  # index in chain of seq[i] (seq[0] is the trigger)
        if j < 0:
            j = 0  # the trigger itself repeats: fuse the chain's first two tokens instead
        if j + 1 >= len(chain) - 1:
            j = len(chain) - 3  # never fuse the final stop token
        if j < 0:
            raise ValueError("a chain too short to de-duplicate")
        merged = new_token(text_of(chain[j]) + text_of(chain[j + 1]))
        chain[j : j + 2] = [merged]
    raise ValueError("could not de-duplicate the chains")


def build_real_model(
    out: Path,
    tok,
    *,
    chat_template: str | dict[str, str],
    bos: str | None,
    eos: str,
    stop_tokens: Sequence[str],
    chains: Mapping[str, str],
    hidden_size: int = 64,
    tokenizer_extra: Mapping[str, Any] | None = None,
) -> Path:
    """A tiny llama-architecture model over ``tok`` whose greedy output after each trigger (the
    text of a prompt's last token) is the chain's text, then ``stop_tokens[0]``."""
    from mlx_lm.utils import save_config, save_model

    from lib_mlx.tiny_models import _build, _weights

    out.mkdir(parents=True, exist_ok=True)
    stop = tok.token_to_id(stop_tokens[0])
    ids: dict[int, list[int]] = {}
    for trigger, text in chains.items():
        trigger_ids = tok.encode(trigger, add_special_tokens=False).ids
        assert len(trigger_ids) == 1, f"trigger {trigger!r} is not one token"
        ids[trigger_ids[0]] = [*tok.encode(text, add_special_tokens=False).ids, stop]
    ids, fused = _fuse_chains(tok, ids)
    data = json.loads(tok.to_str())
    vocab = data["model"]["vocab"]
    next_id = tok.get_vocab_size()
    for text in fused:
        vocab[_byte_level(text)] = next_id
        next_id += 1
    tokenizer_json = out / "tokenizer.json"
    tokenizer_json.write_text(json.dumps(data, ensure_ascii=False))
    from tokenizers import Tokenizer

    rebuilt = Tokenizer.from_file(str(tokenizer_json))
    for trigger, chain in ids.items():
        text = rebuilt.decode(chain[:-1], skip_special_tokens=False)
        assert text in {t for t in chains.values()}, (text, list(chains.values()))

    n_vocab = rebuilt.get_vocab_size()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 1,
        "num_attention_heads": max(1, hidden_size // 16),
        "num_key_value_heads": max(1, hidden_size // 32),
        "head_dim": 16,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0,
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "vocab_size": n_vocab,
        "torch_dtype": "bfloat16",
    }
    model = _build._make_model(config, seed=0)
    successors = _weights.successor_map([[t, *c] for t, c in ids.items()], lambda i: repr(i))
    _weights.script(model, successors, target=_weights.TARGET_LOGIT)
    _weights.cast(model, "bfloat16")
    _weights.verify(model, successors, lambda i: repr(i))
    save_model(out, model)
    save_config(config, out / "config.json")
    tk_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": bos,
        "eos_token": eos,
        "pad_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 8192,
        "chat_template": chat_template,
        **(tokenizer_extra or {}),
    }
    if isinstance(chat_template, dict):
        tk_config["chat_template"] = [{"name": k, "template": v} for k, v in chat_template.items()]
    (out / "tokenizer_config.json").write_text(json.dumps(tk_config, indent=1, ensure_ascii=False))
    stop_ids = [rebuilt.token_to_id(t) for t in stop_tokens]
    (out / "generation_config.json").write_text(json.dumps({"eos_token_id": stop_ids, "temperature": 0.0}))
    return out
