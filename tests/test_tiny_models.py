"""The tiny test models: real architectures that mlx-lm loads, and scripted greedy output.

Every model here goes through ``mlx_lm.load`` and ``mlx_lm.stream_generate`` (the path a user's
model takes); the expected texts come from the chains the weights were scripted with.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import mlx.core as mx
import mlx_lm
import pytest
from mlx_lm.sample_utils import make_sampler

from lib_mlx.tiny_models import (
    CHAT_TEMPLATES,
    DEMO_ANSWER,
    DEMO_CHAINS,
    DEMO_NAME,
    DEMO_REASONING,
    DEMO_THINKING_TEXT,
    END_OF_TURN,
    TRIGGERS,
    build_large_model,
    build_model,
    default_demo_model,
    model_bytes,
    trigger_for,
)

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the weather",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city"}},
            "required": ["city"],
        },
    },
}
TOOL_TURNS = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
]

QWEN3_CHAINS = DEMO_CHAINS  # "\n" (thinking on) and "\n\n" (thinking off) merging into one answer
QWEN3_TOOL_CHAINS = {  # two parallel calls: the repeated markers are fused with their neighbours
    TRIGGERS["qwen3"]["thinking"]: [
        "<think>", "\nI need", " the weather", ".\n", "</think>", "\n\n",
        "<tool_call>", '\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n', "</tool_call>",
        '\n<tool_call>\n{"name": "get_time", "arguments": ', '{"tz": "CET"}}', "\n</tool_call>",
    ],
}  # fmt: skip
GEMMA4_CHAINS = {  # the thinking chain runs into the no-thinking one after "<channel|>"
    TRIGGERS["gemma4_text"]["thinking"]: ["<|channel>", "thought", "\nThe user", " says hi", ".", "<channel|>", "Hi", " there", "!"],
    TRIGGERS["gemma4_text"]["no_thinking"]: ["Hi", " there", "!"],
}
GEMMA4_CALL = ["<|tool_call>", "call:get_weather{", "city:", '<|"|>', 'Paris<|"|>', "}", "<tool_call|>", "<|tool_response>"]
GEMMA4_TOOL_CHAINS = {  # a turn that calls a tool ends at <|tool_response> (a stop token of Gemma 4)
    TRIGGERS["gemma4_text"]["thinking"]: ["<|channel>", "thought", "\nThe user", " wants", " the weather", ".", "<channel|>", *GEMMA4_CALL],
    TRIGGERS["gemma4_text"]["no_thinking"]: GEMMA4_CALL,
    TRIGGERS["gemma4_text"]["after_tool"]: ["It", " is", " 21", " degrees", " in Paris"],
}  # fmt: skip
LLAMA_CHAINS = {TRIGGERS["llama"]["default"]: ["Hello", " from", " a tiny", " llama", "."]}


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    specs = {
        "qwen3": ("qwen3", QWEN3_CHAINS, None),
        "qwen3-4bit": ("qwen3", QWEN3_CHAINS, 4),
        "qwen3-tools": ("qwen3", QWEN3_TOOL_CHAINS, None),
        "gemma4": ("gemma4_text", GEMMA4_CHAINS, None),
        "gemma4-4bit": ("gemma4_text", GEMMA4_CHAINS, 4),
        "gemma4-tools": ("gemma4_text", GEMMA4_TOOL_CHAINS, None),
        "llama": ("llama", LLAMA_CHAINS, None),
        "llama-4bit": ("llama", LLAMA_CHAINS, 4),
    }
    return {
        name: build_model(family, root / name, chains=chains, quantize_bits=bits)
        for name, (family, chains, bits) in specs.items()
    }


_loaded: dict[Path, tuple] = {}


def load(path: Path):
    if path not in _loaded:
        _loaded[path] = mlx_lm.load(str(path))
    return _loaded[path]


def generate(path: Path, messages, *, sampler=None, max_tokens: int = 64, **template_kwargs) -> tuple[str, list[int]]:
    """Render through the tokenizer's chat template and decode greedily; (text, tokens)."""
    model, tokenizer = load(path)
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
    text, tokens = "", []
    for response in mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=max_tokens, sampler=sampler):
        text += response.text
        tokens.append(response.token)
    return text, tokens


def chain_text(chains, trigger: str) -> str:
    return "".join(chains[trigger])


GENERATION_CASES = [
    # model, messages, template kwargs, expected text
    ("qwen3", HELLO, {}, DEMO_THINKING_TEXT),
    ("qwen3", HELLO, {"enable_thinking": False}, DEMO_ANSWER),
    ("qwen3-4bit", HELLO, {}, DEMO_THINKING_TEXT),
    ("qwen3-4bit", HELLO, {"enable_thinking": False}, DEMO_ANSWER),
    ("qwen3-tools", HELLO, {"tools": [WEATHER_TOOL]}, chain_text(QWEN3_TOOL_CHAINS, "\n")),
    ("gemma4", HELLO, {}, chain_text(GEMMA4_CHAINS, "\n")),
    ("gemma4", HELLO, {"enable_thinking": False}, "Hi there!"),
    ("gemma4-tools", HELLO, {"tools": [WEATHER_TOOL]}, "".join(GEMMA4_TOOL_CHAINS["\n"][:-1])),
    ("gemma4-tools", HELLO, {"tools": [WEATHER_TOOL], "enable_thinking": False}, "".join(GEMMA4_CALL[:-1])),
    ("gemma4-tools", TOOL_TURNS, {"tools": [WEATHER_TOOL]}, "It is 21 degrees in Paris"),
    ("gemma4-4bit", HELLO, {}, chain_text(GEMMA4_CHAINS, "\n")),
    ("gemma4-4bit", HELLO, {"enable_thinking": False}, "Hi there!"),
    ("llama", HELLO, {}, "Hello from a tiny llama."),
    ("llama-4bit", [{"role": "system", "content": "Be brief."}, *HELLO], {}, "Hello from a tiny llama."),
]


@pytest.mark.parametrize(
    ("name", "messages", "kwargs", "expected"),
    GENERATION_CASES,
    ids=[f"{c[0]}-{'-'.join(f'{k}={v}' for k, v in c[2].items() if k != 'tools') or 'default'}" for c in GENERATION_CASES],
)
def test_greedy_generation_emits_the_scripted_chain(models, name, messages, kwargs, expected):
    text, tokens = generate(models[name], messages, **kwargs)
    assert text == expected
    _, tokenizer = load(models[name])
    assert tokens[-1] in tokenizer.eos_token_ids  # the chain ends the turn itself
    assert tokenizer.decode(tokens[:-1]) == expected  # the HF decoder agrees with the stream


def test_chain_survives_the_familys_default_sampling(models):
    """Sampling at Gemma's generation_config temperature (1.0) still follows the chain."""
    mx.random.seed(0)
    for _ in range(3):
        text, _ = generate(models["gemma4-4bit"], HELLO, sampler=make_sampler(temp=1.0, top_p=0.95, top_k=64))
        assert text == chain_text(GEMMA4_CHAINS, "\n")


def test_scripted_tool_calls_parse_with_mlx_lm_parsers(models):
    _, qwen = load(models["qwen3-tools"])
    text, _ = generate(models["qwen3-tools"], HELLO, tools=[WEATHER_TOOL])
    calls = [qwen.tool_parser(body) for body in re.findall(r"<tool_call>(.*?)</tool_call>", text, re.S)]
    assert calls == [
        {"name": "get_weather", "arguments": {"city": "Paris"}},
        {"name": "get_time", "arguments": {"tz": "CET"}},
    ]
    _, gemma = load(models["gemma4-tools"])
    text, tokens = generate(models["gemma4-tools"], HELLO, tools=[WEATHER_TOOL])
    body = text.split(gemma.tool_call_start)[1].split(gemma.tool_call_end)[0]
    assert gemma.tool_parser(body) == {"name": "get_weather", "arguments": {"city": "Paris"}}
    assert gemma.convert_ids_to_tokens(tokens[-1]) == "<|tool_response>"  # the turn stops there


@pytest.mark.parametrize(
    ("name", "think", "tool_parser", "tool_markers"),
    [
        ("qwen3", ("<think>", "</think>"), "json_tools", ("<tool_call>", "</tool_call>")),
        ("qwen3-4bit", ("<think>", "</think>"), "json_tools", ("<tool_call>", "</tool_call>")),
        ("gemma4", ("<|channel>thought", "<channel|>"), "gemma4", ("<|tool_call>", "<tool_call|>")),
        ("llama", (None, None), None, (None, None)),
    ],
)
def test_mlx_lm_infers_markers_and_tool_parser(models, name, think, tool_parser, tool_markers):
    _, tokenizer = load(models[name])
    assert (tokenizer.think_start, tokenizer.think_end) == think
    assert tokenizer.has_thinking == (think[0] is not None)
    assert (tokenizer.tool_call_start, tokenizer.tool_call_end) == tool_markers
    module = tokenizer.tool_parser.__module__.rsplit(".", 1)[-1] if tokenizer.tool_parser else None
    assert module == tool_parser
    if name == "qwen3":  # single-token markers, as in the real Qwen3 vocabulary
        assert len(tokenizer.think_start_tokens) == len(tokenizer.think_end_tokens) == 1
    if name == "gemma4":  # "<|channel>" + the plain token "thought"
        assert [tokenizer.decode([t]) for t in tokenizer.think_start_tokens] == ["<|channel>", "thought"]


def test_special_token_flags_match_the_real_tokenizers(models):
    def flags(path):
        added = json.loads((path / "tokenizer.json").read_text())["added_tokens"]
        return {t["content"]: t["special"] for t in added}

    qwen = flags(models["qwen3"])
    assert qwen["<|im_start|>"] and qwen["<|im_end|>"] and qwen["<|endoftext|>"]
    assert not any(qwen[t] for t in ("<think>", "</think>", "<tool_call>", "</tool_call>", "<tool_response>"))
    gemma = flags(models["gemma4"])
    assert all(gemma[t] for t in ("<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|tool_call>", '<|"|>', "<|think|>"))
    assert "thought" not in gemma  # a plain BPE token
    config = json.loads((models["gemma4"] / "tokenizer_config.json").read_text())
    assert (config["bos_token"], config["pad_token"]) == ("<bos>", "<pad>")
    assert json.loads((models["gemma4"] / "config.json").read_text())["pad_token_id"] == 0


# Prompts rendered through mlx-lm's wrapper, compared with the official templates' output.
QWEN3_TOOL_PROMPT = (
    "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n"
    + json.dumps(WEATHER_TOOL)
    + "\n</tools>\n\nFor each function call, return a json object with function name and arguments within "
    '<tool_call></tool_call> XML tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n'
    "</tool_call><|im_end|>\n<|im_start|>user\nWeather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>\n'
    "<|im_start|>user\n<tool_response>\n21 C\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
)
GEMMA4_TOOL_PROMPT = (
    "<bos><|turn>system\n<|think|>\n<|tool>declaration:get_weather{description:<|\"|>Get the weather<|\"|>,"
    'parameters:{properties:{city:{description:<|"|>The city<|"|>,type:<|"|>STRING<|"|>}},'
    'required:[<|"|>city<|"|>],type:<|"|>OBJECT<|"|>}}<tool|><turn|>\n'
    "<|turn>user\nWeather in Paris?<turn|>\n<|turn>model\n"
    '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
    '<|tool_response>response:get_weather{value:<|"|>21 C<|"|>}<tool_response|>'
)
PROMPT_CASES = [
    # model, messages, template kwargs, expected prompt, expected trigger
    ("qwen3", HELLO, {}, "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n", "\n"),
    (
        "qwen3",
        HELLO,
        {"enable_thinking": False},
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        "\n\n",
    ),
    (
        "qwen3",
        [{"role": "system", "content": "Be brief."}, *HELLO],
        {},
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
        "\n",
    ),
    (
        "qwen3",  # reasoning of turns before the last user query is dropped
        [*HELLO, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nHi!"}, {"role": "user", "content": "Again"}],
        {},
        "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\nHi!<|im_end|>\n"
        "<|im_start|>user\nAgain<|im_end|>\n<|im_start|>assistant\n",
        "\n",
    ),
    ("qwen3", TOOL_TURNS, {"tools": [WEATHER_TOOL]}, QWEN3_TOOL_PROMPT, "\n"),
    (
        "gemma4",
        HELLO,
        {},  # mlx-lm's wrapper turns thinking on by default for a model with think markers
        "<bos><|turn>system\n<|think|>\n<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\n",
        "\n",
    ),
    (
        "gemma4",
        HELLO,
        {"enable_thinking": False},
        "<bos><|turn>user\nHello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
        "<channel|>",
    ),
    (
        "gemma4",
        [{"role": "system", "content": "Be brief."}, *HELLO],
        {"enable_thinking": False},
        "<bos><|turn>system\nBe brief.<turn|>\n<|turn>user\nHello<turn|>\n<|turn>model\n<|channel>thought\n<channel|>",
        "<channel|>",
    ),
    (
        "gemma4",  # prior reasoning is stripped from model turns
        [*HELLO, {"role": "assistant", "content": "<|channel>thought\nhmm<channel|>Hi!"}, {"role": "user", "content": "Again"}],
        {"enable_thinking": False},
        "<bos><|turn>user\nHello<turn|>\n<|turn>model\nHi!<turn|>\n<|turn>user\nAgain<turn|>\n"
        "<|turn>model\n<|channel>thought\n<channel|>",
        "<channel|>",
    ),
    ("gemma4-tools", TOOL_TURNS, {"tools": [WEATHER_TOOL]}, GEMMA4_TOOL_PROMPT, "<tool_response|>"),
    (
        "llama",
        [{"role": "system", "content": "Be brief."}, *HELLO],
        {},
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n",
        "\n\n",
    ),
]


@pytest.mark.parametrize(("name", "messages", "kwargs", "expected", "trigger"), PROMPT_CASES)
def test_chat_templates_render_like_the_real_families(models, name, messages, kwargs, expected, trigger):
    _, tokenizer = load(models[name])
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False, **kwargs) == expected
    assert trigger_for(tokenizer, messages, **kwargs) == trigger
    assert trigger_for(models[name], messages, **kwargs) == trigger  # from the directory too


def test_documented_triggers_and_end_tokens():
    assert TRIGGERS == {
        "qwen3": {"thinking": "\n", "no_thinking": "\n\n"},
        "gemma4_text": {"thinking": "\n", "no_thinking": "<channel|>", "after_tool": "<tool_response|>"},
        "llama": {"default": "\n\n"},
    }
    assert END_OF_TURN == {"qwen3": "<|im_end|>", "gemma4_text": "<turn|>", "llama": "<|eot_id|>"}


def test_demo_model_is_built_once_into_the_user_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_demo_model()
    assert path == tmp_path / "lib_mlx" / DEMO_NAME
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert default_demo_model() == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir()] == [DEMO_NAME]  # no scratch directory left
    assert default_demo_model(tmp_path / "elsewhere") == tmp_path / "elsewhere" / DEMO_NAME

    assert generate(path, HELLO)[0] == DEMO_THINKING_TEXT == "<think>\n" + DEMO_REASONING + "\n</think>\n\n" + DEMO_ANSWER
    assert generate(path, HELLO, enable_thinking=False)[0] == DEMO_ANSWER
    config = json.loads((path / "config.json").read_text())
    assert (config["model_type"], config["tie_word_embeddings"]) == ("qwen3", False)


def test_large_model_for_memory_tests(tmp_path):
    path = build_large_model(tmp_path / "large")
    assert model_bytes(path) >= 50 * 1024 * 1024
    model, tokenizer = mlx_lm.load(str(path))
    prompt = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True)
    assert len(list(mlx_lm.stream_generate(model, tokenizer, prompt, max_tokens=2))) >= 1


def test_builds_are_fast_and_deterministic(tmp_path):
    build_model("qwen3", tmp_path / "warm")  # imports
    start = time.perf_counter()
    a = build_model("gemma4_text", tmp_path / "a", chains=GEMMA4_CHAINS, quantize_bits=4)
    elapsed = time.perf_counter() - start
    assert elapsed < 5  # ~0.05 s alone; generous for a busy shared machine
    b = build_model("gemma4_text", tmp_path / "b", chains=GEMMA4_CHAINS, quantize_bits=4)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "tokenizer_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_config_knobs(tmp_path):
    path = build_model(
        "qwen3", tmp_path / "m", hidden_size=128, num_layers=3, dtype="bfloat16", vocab_extra=["<|custom|>"],
        max_position_embeddings=2048, rope_theta=10_000.0,
    )  # fmt: skip
    config = json.loads((path / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["torch_dtype"]) == (128, 3, "bfloat16")
    assert (config["max_position_embeddings"], config["rope_theta"]) == (2048, 10_000.0)
    model, tokenizer = mlx_lm.load(str(path))
    assert model.model.embed_tokens.weight.dtype == mx.bfloat16
    assert len(tokenizer.encode("<|custom|>", add_special_tokens=False)) == 1


def test_more_scripted_tokens_than_hidden_size_and_non_ascii_pieces(tmp_path):
    """Past ``hidden_size`` scripted tokens the codes overlap; the build checks the margins."""
    pieces = ["Caf\u00e9", " na\u00efve", " \u2014", " \U0001f642", *[f" w{i}" for i in range(90)]]
    path = build_model("gemma4_text", tmp_path / "m", chains={"<channel|>": pieces}, quantize_bits=4)
    assert generate(path, HELLO, max_tokens=120, enable_thinking=False)[0] == "".join(pieces)


def test_a_template_that_opens_the_reasoning_block_in_the_prompt(tmp_path):
    """Like Qwen3-*-Thinking-2507: the generation prompt ends in "<think>\n", so the model's
    output starts inside the reasoning block."""
    template = CHAT_TEMPLATES["qwen3"].replace(
        "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}"
    )
    assert template != CHAT_TEMPLATES["qwen3"]
    chains = {"\n": ["Short", " thought", ".\n", "</think>", "\n\n", "Done", "."]}
    path = build_model("qwen3", tmp_path / "m", chains=chains, chat_template=template)
    _, tokenizer = load(path)
    prompt = tokenizer.apply_chat_template(HELLO, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<|im_start|>assistant\n<think>\n")
    assert trigger_for(tokenizer, HELLO) == "\n"
    assert generate(path, HELLO)[0] == "Short thought.\n</think>\n\nDone."


@pytest.mark.parametrize(
    ("family", "chains", "message"),
    [
        ("qwen3", {"\n": ["a", "b", "a"]}, "repeats"),
        ("qwen3", {"\n": ["<think>", "x"], "\n\n": ["<think>", "y"]}, "followed by both"),
        ("qwen3", {"\n": ["x", "<|im_end|>", "y"]}, "may only end a chain"),
        ("gemma4_text", {"\n": ["<|channel>", "thought", "<channel|>", "x"], "<channel|>": ["y"]}, "followed by both"),
        ("qwen3", {"assistant\n": ["x"]}, "not a single token"),
        ("gemma4_text", {"\n": ["model\n"]}, "changes how the 'thinking' generation prompt tokenizes"),
    ],
)
def test_invalid_chains_are_refused(tmp_path, family, chains, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        build_model(family, tmp_path / "bad", chains=chains)
