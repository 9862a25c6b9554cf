"""Family conformance on real chat templates and real vocabularies (llama.cpp's collection, from
the llama-cpp-python sdist; see ``family_kit``).

For each family: detection picks it with no flag; the prompt the server renders (``/apply-template``,
``/tokenize``) equals the template's own rendering through transformers (or jinja2 directly
where transformers refuses the template) over the scenarios the template accepts -- system,
multi-turn, tools, a tool loop with the server's own call ids and the turn's reasoning, thinking
off; a tiny model scripted to write the family's real output syntax gives the right reasoning,
content and tool calls in chat and responses, streamed and not; and sending the calls back
renders (``usage.prompt_tokens`` equals ``/tokenize``'s count of the same body). Further
outputs of each family's syntax are parsed token by token through the real vocabulary.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import serving

family_kit = pytest.importorskip("family_kit")

try:
    family_kit.sdist()
except Exception as exc:  # no network and no cache: the suite cannot run here
    pytest.skip(f"llama-cpp-python sdist unavailable: {exc}", allow_module_level=True)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "Get the local time in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    },
]
ASK = "What is the weather and the time in Paris?"
REASON = "The user wants the weather and the time."
CALLS = [("get_weather", {"city": "Paris"}), ("get_time", {"city": "Paris"})]

QWEN_RENAME = {
    151646 + i: t
    for i, t in enumerate(
        "<|object_ref_start|> <|object_ref_end|> <|box_start|> <|box_end|> <|quad_start|> <|quad_end|> "
        "<|vision_start|> <|vision_end|> <|vision_pad|> <|image_pad|> <|video_pad|> <tool_call> </tool_call> "
        "<|fim_prefix|> <|fim_middle|> <|fim_suffix|> <|fim_pad|> <|repo_name|> <|file_sep|> <tool_response> "
        "</tool_response> <think> </think>".split()
    )
}
QWEN_PLAIN = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<think>", "</think>")
LLAMA31_RENAME = {128004: "<|finetune_right_pad_id|>", 128008: "<|eom_id|>", 128010: "<|python_tag|>"}
MISTRAL_SPECIALS = [
    (t, True)
    for t in "<s> </s> [INST] [/INST] [AVAILABLE_TOOLS] [/AVAILABLE_TOOLS] [TOOL_RESULTS] [/TOOL_RESULTS] "
    "[TOOL_CALLS] [CALL_ID] [ARGS] [TOOL_CONTENT] [SYSTEM_PROMPT] [/SYSTEM_PROMPT] [THINK] [/THINK] [IMG]".split()
]
HARMONY_SPECIALS = [(t, True) for t in "<|start|> <|end|> <|message|> <|channel|> <|constrain|> <|return|> <|call|>".split()]
DEEPSEEK_SPECIALS = [
    (t, True)
    for t in "<｜begin▁of▁sentence｜> <｜end▁of▁sentence｜> <｜User｜> <｜Assistant｜> <｜tool▁calls▁begin｜> "
    "<｜tool▁calls▁end｜> <｜tool▁call▁begin｜> <｜tool▁call▁end｜> <｜tool▁outputs▁begin｜> <｜tool▁outputs▁end｜> "
    "<｜tool▁output▁begin｜> <｜tool▁output▁end｜> <｜tool▁sep｜>".split()
]
KIMI_SPECIALS = [
    (t, True)
    for t in "[BOS] [EOS] <|im_user|> <|im_assistant|> <|im_system|> <|im_middle|> <|im_end|> "
    "<|tool_calls_section_begin|> <|tool_calls_section_end|> <|tool_call_begin|> <|tool_call_argument_begin|> "
    "<|tool_call_end|> <|media_start|> <|media_content|> <|media_end|> <|media_pad|>".split()
]
GRANITE_SPECIALS = [(t, True) for t in "<|start_of_role|> <|end_of_role|> <|end_of_text|> <|tool_call|>".split()]
HERMES_DEFAULT = (
    "{{bos_token}}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _json(args: dict[str, Any]) -> str:
    return json.dumps(args)


@dataclass
class Case:
    name: str
    family: str
    template: str | tuple[str, ...]  # sdist template name(s); a tuple: named templates (default, tool_use)
    vocab: str
    output: str  # what the scripted model writes after the generation prompt (tools given)
    reasoning: str = ""  # expected
    content: str = ""
    calls: list[tuple[str, dict]] = field(default_factory=lambda: list(CALLS))
    rename: dict[int, str] = field(default_factory=dict)
    specials: list[tuple[str, bool]] = field(default_factory=list)
    plain: tuple[str, ...] = ()
    bos: str | None = None
    eos: str = "<|im_end|>"
    stops: tuple[str, ...] = ()
    # How the template wants a kept reasoning: a message field, "chunks" (Mistral's thinking
    # chunk), or None (not kept by this family's rules).
    reasoning_field: str | None = "reasoning_content"
    thinking_off: dict[str, Any] | None = None  # the template's own switch for "thinking off"
    thinking_on: dict[str, Any] = field(default_factory=dict)  # ... and for on (the server's default)
    sandbox: bool = False  # transformers refuses the template; the reference is jinja2 directly
    calls_in_history: int = 2
    one_call_per_message: bool = False
    extra: list[tuple[str, str, list, str]] = field(default_factory=list)  # (text, reasoning, calls, content)
    starts_in_reasoning: bool = False
    served: bool = True  # False: a template variant checked through core.render (no model built)


CASES = [
    Case(
        "qwen3",
        "qwen3",
        "Qwen-Qwen3-0.6B",
        "qwen2",
        f"<think>\n{REASON}\n</think>\n\n"
        + "\n".join(f'<tool_call>\n{{"name": "{n}", "arguments": {_json(a)}}}\n</tool_call>' for n, a in CALLS),
        reasoning=REASON,
        rename=QWEN_RENAME,
        plain=QWEN_PLAIN,
        stops=("<|im_end|>", "<|endoftext|>"),
        thinking_off={"enable_thinking": False},
        thinking_on={"enable_thinking": True},
    ),
    Case(
        "llama3.1",
        "llama3",
        "meta-llama-Llama-3.1-8B-Instruct",
        "llama-bpe",
        "; ".join(f'{{"name": "{n}", "parameters": {_json(a)}}}' for n, a in CALLS),
        rename=LLAMA31_RENAME,
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        stops=("<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"),
        reasoning_field=None,
        one_call_per_message=True,
        extra=[
            ('<|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}', "", CALLS[:1], ""),
            ("It is sunny in Paris.", "", [], "It is sunny in Paris."),
            ('Use {"name": "x"} in JSON.', "", [], 'Use {"name": "x"} in JSON.'),
        ],
    ),
    Case(
        "mistral-small-3.2",
        "mistral",
        "Mistral-Small-3.2-24B-Instruct-2506",
        "llama-bpe",
        "".join(f"[TOOL_CALLS]{n}[CALL_ID]{i}[ARGS]{_json(a)}" for (n, a), i in zip(CALLS, ("a1b2c3d4e", "f5g6h7i8j"))),
        specials=MISTRAL_SPECIALS,
        bos="<s>",
        eos="</s>",
        stops=("</s>",),
        reasoning_field=None,
    ),
    Case(
        "mistral-nemo",
        "mistral",
        "mistralai-Mistral-Nemo-Instruct-2407",
        "llama-bpe",
        "[TOOL_CALLS]"
        + json.dumps([{"name": n, "arguments": a, "id": i} for (n, a), i in zip(CALLS, ("a1b2c3d4e", "f5g6h7i8j"))]),
        specials=MISTRAL_SPECIALS,
        bos="<s>",
        eos="</s>",
        stops=("</s>",),
        reasoning_field=None,
    ),
    Case(
        "ministral-3-reasoning",
        "mistral",
        "mistralai-Ministral-3-14B-Reasoning-2512",
        "llama-bpe",
        f"[THINK]{REASON}[/THINK]" + "".join(f"[TOOL_CALLS]{n}[ARGS]{_json(a)}" for n, a in CALLS),
        reasoning=REASON,
        specials=MISTRAL_SPECIALS,
        bos="<s>",
        eos="</s>",
        stops=("</s>",),
        reasoning_field="chunks",
    ),
    Case(
        "gpt-oss",
        "harmony",
        "openai-gpt-oss-120b",
        "llama-bpe",
        f"<|channel|>analysis<|message|>{REASON}<|end|><|start|>assistant<|channel|>commentary "
        f'to=functions.get_weather <|constrain|>json<|message|>{{"city": "Paris"}}',
        reasoning=REASON,
        calls=CALLS[:1],
        specials=HARMONY_SPECIALS,
        eos="<|return|>",
        stops=("<|call|>", "<|return|>"),
        reasoning_field="thinking",
        calls_in_history=1,
        one_call_per_message=True,
        extra=[
            (
                "<|channel|>analysis<|message|>Easy.<|end|><|start|>assistant<|channel|>final<|message|>Sunny.",
                "Easy.",
                [],
                "Sunny.",
            )
        ],
    ),
    Case(
        "deepseek-r1-distill-qwen",
        "deepseek",
        "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B",
        "qwen2",
        f"{REASON}\n</think>\n\n<｜tool▁calls▁begin｜>"
        + "\n".join(
            f"<｜tool▁call▁begin｜>function<｜tool▁sep｜>{n}\n```json\n{_json(a)}\n```<｜tool▁call▁end｜>" for n, a in CALLS
        )
        + "<｜tool▁calls▁end｜>",
        reasoning=REASON,
        rename=QWEN_RENAME,
        plain=QWEN_PLAIN,
        specials=DEEPSEEK_SPECIALS,
        bos="<｜begin▁of▁sentence｜>",
        eos="<｜end▁of▁sentence｜>",
        stops=("<｜end▁of▁sentence｜>",),
        reasoning_field=None,
        thinking_off={"enable_thinking": False},
        thinking_on={"enable_thinking": True},
        starts_in_reasoning=True,
    ),
    Case(
        "hermes-3",
        "qwen3",
        ("default", "NousResearch-Hermes-3-Llama-3.1-8B-tool_use"),
        "llama-bpe",
        "\n".join(f'<tool_call>\n{{"name": "{n}", "arguments": {_json(a)}}}\n</tool_call>' for n, a in CALLS),
        rename={128002: "<|im_start|>", 128003: "<|im_end|>"},
        bos="<|begin_of_text|>",
        stops=("<|im_end|>",),
        reasoning_field=None,
    ),
    Case(
        "granite-3.3",
        "granite",
        "ibm-granite-granite-3.3-2B-Instruct",
        "starcoder",
        "<|tool_call|>" + json.dumps([{"name": n, "arguments": a} for n, a in CALLS]),
        specials=GRANITE_SPECIALS,
        eos="<|end_of_text|>",
        stops=("<|end_of_text|>",),
        reasoning_field=None,
        thinking_off={"thinking": False},
        thinking_on={"thinking": True},
        extra=[
            ("<think>Short thought.</think><response>Sunny.</response>", "Short thought.", [], "Sunny."),
        ],
    ),
    Case(
        "kimi-k2",
        "kimi",
        "Kimi-K2-Instruct",
        "qwen2",
        "<|tool_calls_section_begin|>"
        + "".join(
            f"<|tool_call_begin|>functions.{n}:{i}<|tool_call_argument_begin|>{_json(a)}<|tool_call_end|>"
            for i, (n, a) in enumerate(CALLS)
        )
        + "<|tool_calls_section_end|>",
        specials=KIMI_SPECIALS,
        eos="<|im_end|>",
        stops=("<|im_end|>", "[EOS]"),
        reasoning_field=None,
        sandbox=True,
    ),
]
BY_NAME = {case.name: case for case in CASES}

GEMMA_SPECIALS = [
    (t, True)
    for t in '<bos> <eos> <|turn> <turn|> <|channel> <channel|> <|tool_call> <tool_call|> <|tool_response> '
    '<tool_response|> <|tool> <tool|> <|think|> <|"|> <|image|> <|audio|> <|video|>'.split()
]
GLM_SPECIALS = [
    (t, True) for t in "[gMASK] <sop> <|system|> <|user|> <|assistant|> <|observation|> <|endoftext|>".split()
] + [(t, False) for t in "<arg_key> </arg_key> <arg_value> </arg_value>".split()]
IM = [("<|im_start|>", True), ("<|im_end|>", True)]
QWEN_CALLS = "\n".join(f'<tool_call>\n{{"name": "{n}", "arguments": {_json(a)}}}\n</tool_call>' for n, a in CALLS)


def _variant(name: str, family: str, template: str | tuple[str, ...], vocab: str, output: str, **kw: Any) -> Case:
    return Case(name, family, template, vocab, output, served=False, **kw)


_QWEN = dict(rename=QWEN_RENAME, plain=QWEN_PLAIN, stops=("<|im_end|>",))
_LLAMA = dict(rename=LLAMA31_RENAME, bos="<|begin_of_text|>", eos="<|eot_id|>", one_call_per_message=True, reasoning_field=None)
_MISTRAL = dict(specials=MISTRAL_SPECIALS, bos="<s>", eos="</s>", reasoning_field=None)
_DEEPSEEK = dict(specials=DEEPSEEK_SPECIALS, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", reasoning_field=None)
LLAMA_OUT = "; ".join(f'{{"name": "{n}", "parameters": {_json(a)}}}' for n, a in CALLS)

VARIANTS = [
    _variant("llama3.2", "llama3", "meta-llama-Llama-3.2-3B-Instruct", "llama-bpe", LLAMA_OUT, **_LLAMA),
    _variant("llama3.3", "llama3", "meta-llama-Llama-3.3-70B-Instruct", "llama-bpe", LLAMA_OUT, **_LLAMA),
    _variant(
        "deepseek-r1-distill-llama", "deepseek", "deepseek-ai-DeepSeek-R1-Distill-Llama-8B", "llama-bpe",
        BY_NAME["deepseek-r1-distill-qwen"].output, reasoning=REASON, plain=("<think>", "</think>"),
        specials=[*DEEPSEEK_SPECIALS, ("<think>", False), ("</think>", False)],
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", reasoning_field=None,
        thinking_on={"enable_thinking": True}, thinking_off={"enable_thinking": False}, starts_in_reasoning=True,
    ),
    _variant(
        "deepseek-v3.1", "deepseek", "deepseek-ai-DeepSeek-V3.1", "llama-bpe",
        "<｜tool▁calls▁begin｜>" + "".join(f"<｜tool▁call▁begin｜>{n}<｜tool▁sep｜>{_json(a)}<｜tool▁call▁end｜>" for n, a in CALLS) + "<｜tool▁calls▁end｜>",
        specials=[*DEEPSEEK_SPECIALS, ("<think>", False), ("</think>", False)], plain=("<think>", "</think>"),
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", reasoning_field=None,
        thinking_on={"thinking": True}, thinking_off={"thinking": False},
    ),
    _variant(
        "devstral", "mistral", "unsloth-mistral-Devstral-Small-2507", "llama-bpe",
        "".join(f"[TOOL_CALLS]{n}[ARGS]{_json(a)}" for n, a in CALLS), **_MISTRAL,
    ),
    _variant("qwen2.5", "qwen3", "Qwen-Qwen2.5-7B-Instruct", "qwen2", QWEN_CALLS, reasoning_field=None, **_QWEN),
    _variant(
        "qwq", "qwen3", "Qwen-QwQ-32B", "qwen2", f"<think>\n{REASON}\n</think>\n\n" + QWEN_CALLS, reasoning=REASON,
        reasoning_field=None, thinking_on={"enable_thinking": True}, thinking_off={"enable_thinking": False},
        extra=[("\n\nSunny.", "", [], "Sunny.")], starts_in_reasoning=False, **_QWEN,
    ),
    _variant(
        "qwen3-coder", "mlx_lm", "Qwen3-Coder", "qwen2",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        calls=CALLS[:1], reasoning_field=None, **_QWEN,
    ),
    _variant(
        "qwen3.5", "mlx_lm", "Qwen3.5-4B", "qwen35",
        "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>",
        calls=CALLS[:1], thinking_on={"enable_thinking": True}, thinking_off={"enable_thinking": False},
        stops=("<|im_end|>",), plain=QWEN_PLAIN,
    ),
    _variant(
        "glm-4.6", "mlx_lm", "GLM-4.6", "qwen2",
        "\n<think>Hm.</think>\nSunny.", reasoning="Hm.", content="Sunny.", calls=[], specials=GLM_SPECIALS, eos="<|endoftext|>", reasoning_field=None,
        thinking_on={"enable_thinking": True}, thinking_off={"enable_thinking": False}, rename=QWEN_RENAME, plain=QWEN_PLAIN,
        extra=[("\n<think>Hm.</think>\nSunny.", "Hm.", [], "Sunny."), ("\nSunny.", "", [], "Sunny.")],
    ),
    _variant(
        "glm-4.7-flash", "mlx_lm", "GLM-4.7-Flash", "qwen2", "Sunny.", content="Sunny.", calls=[], specials=GLM_SPECIALS,
        eos="<|endoftext|>", reasoning_field=None, rename=QWEN_RENAME, plain=QWEN_PLAIN,
        thinking_on={"enable_thinking": True}, thinking_off={"enable_thinking": False},
    ),
    _variant(
        "minimax-m2", "mlx_lm", "MiniMax-M2", "qwen2", "Sunny.", content="Sunny.", calls=[], reasoning_field=None,
        specials=[("]~b]", True), ("]~!b[", True), ("[e~[", True), ("<minimax:tool_call>", False), ("</minimax:tool_call>", False)],
        rename=QWEN_RENAME, plain=QWEN_PLAIN, eos="[e~[",
    ),
    _variant(
        "lfm2.5", "mlx_lm", "LFM2.5-8B-A1B", "llama-bpe", "Sunny.", content="Sunny.", calls=[], reasoning_field=None,
        specials=[("<|startoftext|>", True), *IM, ("<|tool_call_start|>", True), ("<|tool_call_end|>", True)],
        bos="<|startoftext|>",
    ),
    _variant(
        "granite-4.0", "qwen3", "ibm-granite-granite-4.0", "starcoder", QWEN_CALLS, reasoning_field=None,
        specials=[*GRANITE_SPECIALS[:3], ("<tool_call>", False), ("</tool_call>", False)], eos="<|end_of_text|>",
    ),
    _variant(
        "smollm3", "qwen3", "HuggingFaceTB-SmolLM3-3B", "llama-bpe", "Sunny.", content="Sunny.", calls=[], reasoning_field=None,
        specials=[*IM, ("<think>", False), ("</think>", False)],
        thinking_on={"enable_thinking": True}, thinking_off={"enable_thinking": False},
    ),
    _variant(
        "phi-3.5", "plain", "microsoft-Phi-3.5-mini-instruct", "llama-bpe", "Sunny.", content="Sunny.", calls=[], reasoning_field=None,
        specials=[(t, True) for t in ("<|user|>", "<|assistant|>", "<|end|>", "<|system|>")], eos="<|end|>",
    ),
    _variant(
        "hermes-2-pro", "qwen3", ("default", "NousResearch-Hermes-2-Pro-Llama-3-8B-tool_use"), "llama-bpe", QWEN_CALLS,
        rename={128002: "<|im_start|>", 128003: "<|im_end|>"}, bos="<|begin_of_text|>", reasoning_field=None,
    ),
    _variant(
        "kimi-k2-thinking", "kimi", "Kimi-K2-Thinking", "qwen2", BY_NAME["kimi-k2"].output, reasoning_field=None,
        specials=KIMI_SPECIALS, rename=QWEN_RENAME, plain=QWEN_PLAIN, sandbox=True,
    ),
    _variant(
        "gemma-4", "gemma4", "google-gemma-4-31B-it", "qwen2",
        "<|tool_call>call:get_weather{city:<|\"|>Paris<|\"|>}<tool_call|>", calls=CALLS[:1], specials=GEMMA_SPECIALS,
        bos="<bos>", eos="<turn|>", reasoning_field=None,
        thinking_on={"enable_thinking": True}, thinking_off={"enable_thinking": False},
    ),
]
BY_NAME.update({case.name: case for case in VARIANTS})



# -- building -----------------------------------------------------------------------------------


def _template(case: Case) -> str | dict[str, str]:
    if isinstance(case.template, tuple):
        default, tool_use = case.template
        return {"default": HERMES_DEFAULT if default == "default" else family_kit.template(default), "tool_use": family_kit.template(tool_use)}
    return family_kit.template(case.template)


_TOKENIZERS: dict[str, Any] = {}


def _tokenizer(case: Case, scratch: Path):
    """The case's real vocabulary (plus its family's tokens), rebuilt once and cached on disk."""
    from tokenizers import Tokenizer

    key = json.dumps([case.vocab, sorted(case.rename.items()), case.specials, case.plain, inspect.getsource(family_kit)])
    if key not in _TOKENIZERS:
        path = family_kit.CACHE / "tokenizers" / f"{case.vocab}-{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"
        if path.is_file():
            tok = Tokenizer.from_file(str(path))
        else:
            tok, _ = family_kit.real_tokenizer(
                case.vocab, scratch, rename=case.rename, extra=case.specials, plain=case.plain
            )
            family_kit.check_fixture(tok, case.vocab)
            path.parent.mkdir(parents=True, exist_ok=True)
            tok.save(str(path.with_suffix(".partial")))
            path.with_suffix(".partial").replace(path)
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def _trigger(case: Case, tok) -> str:
    """The text of the last token of the tools prompt (what the scripted output follows)."""
    text = _render(case, _first_turn(), tools=TOOLS, **case.thinking_on)
    ids = tok.encode(text, add_special_tokens=False).ids
    return tok.decode(ids[-1:], skip_special_tokens=False)


def _render(case: Case, messages: list[dict], tools: list | None = None, **kwargs: Any) -> str:
    """transformers' own rendering of the case's template (a named template chosen as
    transformers chooses it: ``tool_use`` when tools are given)."""
    from transformers.utils.chat_template_utils import render_jinja_template

    template = _template(case)
    if isinstance(template, dict):
        template = template["tool_use" if tools is not None and "tool_use" in template else "default"]
    specials = {"bos_token": case.bos, "eos_token": case.eos}
    rendered, _ = render_jinja_template(
        conversations=[messages], tools=tools, chat_template=template, add_generation_prompt=True,
        **{k: v for k, v in specials.items() if v is not None}, **kwargs
    )
    return rendered[0]


@pytest.fixture(scope="session")
def family_model(tmp_path_factory):
    """``family_model(case)``: the case's model directory, built once per run (and cached across
    runs under the sdist cache, keyed by everything that goes into it)."""
    scratch = tmp_path_factory.mktemp("family_vocab")
    built: dict[str, Path] = {}
    source = "".join(inspect.getsource(f) for f in (family_kit, Case, _trigger, _render, _template)) + HERMES_DEFAULT

    def get(case: Case) -> Path:
        if case.name in built:
            return built[case.name]
        key = hashlib.sha256(json.dumps([source, repr(case), _template(case)], default=str).encode()).hexdigest()[:16]
        out = family_kit.CACHE / "family-models" / f"{case.name}-{key}"
        if not (out / "config.json").is_file():
            for stale in out.parent.glob(f"{case.name}-*"):  # earlier builds of this case
                shutil.rmtree(stale, ignore_errors=True)
            tok = _tokenizer(case, scratch)
            tmp = out.with_suffix(".partial")
            shutil.rmtree(tmp, ignore_errors=True)
            family_kit.build_real_model(
                tmp,
                tok,
                chat_template=_template(case),
                bos=case.bos,
                eos=case.eos,
                stop_tokens=case.stops or (case.eos,),
                chains={_trigger(case, tok): case.output},
            )
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)
        built[case.name] = out
        return out

    return get


# -- scenarios ----------------------------------------------------------------------------------


def _first_turn() -> list[dict[str, Any]]:
    return [{"role": "user", "content": ASK}]


def _scenarios(case: Case) -> dict[str, tuple[list[dict], dict[str, Any]]]:
    return {
        "system": ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi!"}], {}),
        "multi_turn": (
            [
                {"role": "user", "content": "Hi!"},
                {"role": "assistant", "content": "Hello! How can I help?"},
                {"role": "user", "content": "Tell me a joke."},
            ],
            {},
        ),
        "tools": (_first_turn(), {"tools": TOOLS}),
    }


def _reference_history(case: Case, assistant: dict[str, Any], results: list[dict[str, Any]]) -> list[dict]:
    """The tool loop as the template's own documentation writes it: arguments as objects, the
    turn's reasoning where the family keeps it, one call per message where the template renders
    only one."""
    calls = [
        {"id": c["id"], "type": "function", "function": {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}}
        for c in assistant["tool_calls"]
    ]
    reasoning = assistant.get("reasoning_content") or ""
    message: dict[str, Any] = {"role": "assistant", "content": assistant.get("content") or ""}
    if reasoning and case.reasoning_field == "chunks":
        message["content"] = [{"type": "thinking", "thinking": reasoning}]
    elif reasoning and case.reasoning_field:
        message[case.reasoning_field] = reasoning
    if case.one_call_per_message:
        out: list[dict] = [_first_turn()[0]]
        for n, (call, result) in enumerate(zip(calls, results)):
            out += [{**message, **({"content": ""} if n else {}), "tool_calls": [call]}, result]
        return out
    return [_first_turn()[0], {**message, "tool_calls": calls}, *results]


def _reference(case: Case, tok, messages: list[dict], **kwargs: Any) -> str:
    kwargs = {**case.thinking_on, **kwargs}
    if case.sandbox:
        return _jinja_direct(case, messages, **kwargs)
    return _render(case, messages, **kwargs)


def _jinja_direct(case: Case, messages: list[dict], tools=None, **kwargs: Any) -> str:
    import jinja2

    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(x, ensure_ascii=False, indent=indent)
    return env.from_string(_template(case)).render(
        messages=messages, tools=tools, add_generation_prompt=True, bos_token=case.bos, eos_token=case.eos, **kwargs
    )


# -- the suite ----------------------------------------------------------------------------------


def _post(s, path: str, body: dict) -> httpx.Response:
    return httpx.post(f"{s.info.base_url}{path}", json=body, headers=s.headers, timeout=60)


def _collect_chat_stream(s, body: dict) -> dict[str, Any]:
    reasoning, content, calls = "", "", {}
    with httpx.stream("POST", f"{s.info.base_url}/v1/chat/completions", json={**body, "stream": True}, headers=s.headers, timeout=60) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"] if json.loads(line[6:])["choices"] else {}
            reasoning += delta.get("reasoning_content") or ""
            content += delta.get("content") or ""
            for call in delta.get("tool_calls") or []:
                slot = calls.setdefault(call["index"], {"id": None, "name": None, "arguments": ""})
                fn = call.get("function") or {}
                slot["id"] = call.get("id") or slot["id"]
                slot["name"] = fn.get("name") or slot["name"]
                slot["arguments"] += fn.get("arguments") or ""
    return {"reasoning": reasoning, "content": content, "calls": [calls[i] for i in sorted(calls)]}


def _check_output(case: Case, reasoning: str, content: str, calls: list[tuple[str, dict]], where: str) -> None:
    assert reasoning.strip() == case.reasoning, (where, reasoning)
    assert content.strip() == case.content, (where, content)
    assert calls == case.calls, (where, calls)


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_family_conformance(name: str, family_model, runtime, tmp_path) -> None:
    case = BY_NAME[name]
    path = family_model(case)
    tok = _tokenizer(case, tmp_path)
    with serving(runtime, path) as s:
        assert s.status()["model"]["family"] == case.family  # detected: no flag needed

        # 1. rendering equals the template's own
        for label, (messages, kwargs) in _scenarios(case).items():
            _same_rendering(case, tok, s, label, messages, kwargs)
        if case.thinking_off is not None:
            _same_rendering(case, tok, s, "thinking_off", _first_turn(), dict(case.thinking_off), thinking=False)
        if case.family == "harmony":  # the request's effort reaches the template
            _same_rendering(case, tok, s, "effort", _first_turn(), {"reasoning_effort": "high"}, reasoning_effort="high")
            assert "Reasoning: high" in _post(s, "/apply-template", {"messages": _first_turn(), "reasoning_effort": "high"}).json()["prompt"]

        # text tokenize / detokenize round trip, in vLLM's shapes
        got = _post(s, "/tokenize", {"prompt": ASK, "add_special_tokens": False}).json()
        assert got["tokens"] == tok.encode(ASK, add_special_tokens=False).ids and got["count"] == len(got["tokens"])
        assert got["max_model_len"] > 0
        assert _post(s, "/detokenize", {"tokens": got["tokens"]}).json() == {"prompt": ASK}
        bad = _post(s, "/detokenize", {"tokens": [10**9]})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens[0]"

        # 2. the scripted output, four ways
        body = {"model": s.info.model_id, "messages": _first_turn(), "tools": TOOLS, "temperature": 0, "max_tokens": 200}
        r = _post(s, "/v1/chat/completions", body)
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        message = choice["message"]
        got_calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls") or []]
        _check_output(case, message.get("reasoning_content") or "", message.get("content") or "", got_calls, "chat")
        assert choice["finish_reason"] == ("tool_calls" if case.calls else "stop")

        streamed = _collect_chat_stream(s, body)
        _check_output(
            case,
            streamed["reasoning"],
            streamed["content"],
            [(c["name"], json.loads(c["arguments"])) for c in streamed["calls"]],
            "chat stream",
        )

        rbody = {"model": s.info.model_id, "input": ASK, "tools": [{"type": "function", **t["function"]} for t in TOOLS], "temperature": 0, "max_output_tokens": 200}
        r = _post(s, "/v1/responses", rbody)
        assert r.status_code == 200, r.text
        items = r.json()["output"]
        _check_output(
            case,
            "".join(p["text"] for i in items if i["type"] == "reasoning" for p in i.get("content") or []),
            "".join(p["text"] for i in items if i["type"] == "message" for p in i["content"]),
            [(i["name"], json.loads(i["arguments"])) for i in items if i["type"] == "function_call"],
            "responses",
        )
        with httpx.stream("POST", f"{s.info.base_url}/v1/responses", json={**rbody, "stream": True}, headers=s.headers, timeout=60) as r:
            events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: ")]
        done = next(e for e in events if e["type"] == "response.completed")["response"]["output"]
        assert [(i["name"], json.loads(i["arguments"])) for i in done if i["type"] == "function_call"] == case.calls
        arg_deltas = [e for e in events if e["type"] == "response.function_call_arguments.delta"]
        assert arg_deltas or not case.calls

        # 3. the calls go back with the server's ids and render as the template's own tool loop
        if case.calls:
            assistant = {"role": "assistant", "content": message.get("content") or "", "tool_calls": message["tool_calls"]}
            if message.get("reasoning_content"):
                assistant["reasoning_content"] = message["reasoning_content"]
            results = [
                {"role": "tool", "tool_call_id": c["id"], "name": c["function"]["name"], "content": json.dumps({"ok": n})}
                for n, c in enumerate(message["tool_calls"][: case.calls_in_history])
            ]
            loop = [_first_turn()[0], assistant, *results]
            body = {"model": s.info.model_id, "messages": loop, "tools": TOOLS, "temperature": 0, "max_tokens": 4}
            r = _post(s, "/v1/chat/completions", body)
            assert r.status_code == 200, r.text
            used = r.json()["usage"]["prompt_tokens"]
            tokens = _post(s, "/tokenize", body).json()
            assert tokens["count"] == used == len(tokens["tokens"])
            prompt = _post(s, "/apply-template", body).json()["prompt"]
            expected = _reference(case, tok, _reference_history(case, assistant, results), tools=TOOLS)
            assert prompt == expected
            assert tokens["tokens"] == tok.encode(expected, add_special_tokens=False).ids


def _same_rendering(case: Case, tok, s, label: str, messages: list[dict], kwargs: dict, **request: Any) -> None:
    body = {"messages": messages, **request}
    if "tools" in kwargs:
        body["tools"] = kwargs["tools"]
    try:
        expected = _reference(case, tok, messages, **kwargs)
    except Exception as exc:  # the template refuses this scenario: so must the server
        r = _post(s, "/apply-template", body)
        assert r.status_code == 400, (label, exc, r.text)
        return
    r = _post(s, "/apply-template", body)
    assert r.status_code == 200, (label, r.text)
    assert r.json()["prompt"] == expected, label
    tokens = _post(s, "/tokenize", body).json()["tokens"]
    assert tokens == tok.encode(expected, add_special_tokens=False).ids, label


def _parse_tokens(case: Case, tok, text: str, spec=None):
    """``text`` parsed token by token as the real tokenizer splits it (the streamed view), and
    whole; both must agree. ``spec``: the loaded model's (default: the family's own markers)."""
    from lib_mlx.core.parsers import ParsedOutput, ParserSpec, make_parser, parse_text

    spec = spec or ParserSpec(case.family)
    parser = make_parser(spec, starts_in_reasoning=case.starts_in_reasoning)
    ids = tok.encode(text, add_special_tokens=False).ids
    events, seen = [], ""
    for k in range(1, len(ids) + 1):  # each token's text, as a streaming detokenizer gives it
        now = tok.decode(ids[:k], skip_special_tokens=False)
        events += parser.feed(now[len(seen) :])
        seen = now
    events += parser.finish()
    streamed = ParsedOutput().add(events)
    whole = parse_text(text, spec, starts_in_reasoning=case.starts_in_reasoning)
    assert (streamed.reasoning, streamed.content) == (whole.reasoning, whole.content), text
    assert [(c.name, c.arguments) for c in streamed.tool_calls] == [(c.name, c.arguments) for c in whole.tool_calls]
    return streamed


@pytest.mark.parametrize("name", [c.name for c in [*CASES, *VARIANTS] if c.extra])
def test_family_outputs_through_the_real_vocabulary(name: str, tmp_path) -> None:
    """More of each family's syntax, token by token as the real tokenizer splits it."""
    case = BY_NAME[name]
    tok = _tokenizer(case, tmp_path)
    spec = None if case.served else _loaded(case, tok).parser_spec
    for text, reasoning, calls, content in case.extra:
        out = _parse_tokens(case, tok, text, spec)
        assert out.reasoning == reasoning, (text, out)
        assert out.content == content, (text, out)
        assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == calls, (text, out)


def _loaded(case: Case, tok):
    """What ``core.loader`` makes of the case's tokenizer and template (no model needed to render)."""
    import importlib

    from mlx_lm.tokenizer_utils import TokenizerWrapper, _infer_tool_parser
    from transformers import PreTrainedTokenizerFast

    from lib_mlx.core.loader import LoadedModel
    from lib_mlx.core.parsers import parser_spec_from_tokenizer

    hf = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=case.bos, eos_token=case.eos)
    hf.chat_template = _template(case)
    tools: dict[str, Any] = {}
    if (kind := _infer_tool_parser(hf)) is not None:  # as mlx_lm's tokenizer loader does
        module = importlib.import_module(f"mlx_lm.tool_parsers.{kind}")
        tools = dict(tool_parser=module.parse_tool_call, tool_call_start=module.tool_call_start, tool_call_end=module.tool_call_end)
    wrapper = TokenizerWrapper(hf, **tools)
    return LoadedModel(
        model=None, tokenizer=wrapper, model_path=Path("."), model_id=case.name, config={},
        context_length=8192, parser_spec=parser_spec_from_tokenizer(wrapper),
    )


def _core_render(loaded, body: dict[str, Any]):
    """The chat endpoint's rendering of ``body``: its validation, then core's render."""
    from lib_mlx.core.prompt import render
    from lib_mlx.server.chat.protocol import ChatCompletionRequest
    from lib_mlx.server.chat.serving import to_chat_prompt

    return render(loaded, to_chat_prompt(ChatCompletionRequest.model_validate(body)))


def _same_core_rendering(case: Case, tok, loaded, label: str, messages: list[dict], kwargs: dict, **request: Any) -> None:
    from lib_mlx.errors import InvalidRequestError

    body = {"messages": messages, **request, **({"tools": kwargs["tools"]} if "tools" in kwargs else {})}
    try:
        expected = _reference(case, tok, messages, **kwargs)
    except Exception as exc:
        with pytest.raises(InvalidRequestError):
            _core_render(loaded, body)
        del exc
        return
    rendered = _core_render(loaded, body)
    assert rendered.text == expected, label
    assert list(rendered.tokens) == tok.encode(expected, add_special_tokens=False).ids, label


@pytest.mark.parametrize("name", [c.name for c in VARIANTS])
def test_template_variant(name: str, tmp_path) -> None:
    """More real templates: detection, rendering equal to the template's own over the scenarios,
    the family's output parsed through the real vocabulary, and its calls sent back."""
    case = BY_NAME[name]
    tok = _tokenizer(case, tmp_path)
    loaded = _loaded(case, tok)
    assert loaded.parser_spec.family == case.family
    for label, (messages, kwargs) in _scenarios(case).items():
        _same_core_rendering(case, tok, loaded, label, messages, kwargs)
    if case.thinking_off is not None:
        _same_core_rendering(case, tok, loaded, "thinking_off", _first_turn(), dict(case.thinking_off), thinking=False)

    out = _parse_tokens(case, tok, case.output, loaded.parser_spec)
    assert out.reasoning.strip() == case.reasoning and out.content.strip() == case.content, out
    assert [(c.name, json.loads(c.arguments)) for c in out.tool_calls] == case.calls
    if case.calls:
        assistant = {
            "role": "assistant",
            "content": out.content,
            "tool_calls": [
                {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in out.tool_calls
            ],
        }
        results = [
            {"role": "tool", "tool_call_id": c.id, "name": c.name, "content": json.dumps({"ok": n})}
            for n, c in enumerate(out.tool_calls[: case.calls_in_history])
        ]
        rendered = _core_render(loaded, {"messages": [_first_turn()[0], assistant, *results], "tools": TOOLS})
        assert rendered.text == _reference(case, tok, _reference_history(case, assistant, results), tools=TOOLS)
