"""Prompt rendering quirks the families' templates need (through the real templates)."""

from __future__ import annotations

from lib_mlx import MlxModelConfig
from lib_mlx.core import ChatPrompt, MlxCore

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "add",
            "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}},
        },
    }
]


def _tool_loop(preamble: str) -> list[dict]:
    return [
        {"role": "user", "content": "2+3?"},
        {
            "role": "assistant",
            "content": preamble,
            "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "5"},
    ]


def test_gemma4_tool_results_leave_the_turn_open_for_the_answer(make_model) -> None:
    core = MlxCore.load(MlxModelConfig(str(make_model("gemma4_text"))))
    try:
        bare = core.render(ChatPrompt(messages=_tool_loop(""), tools=TOOLS)).text
        with_preamble = core.render(ChatPrompt(messages=_tool_loop("Let me add."), tools=TOOLS)).text
    finally:
        core.close()
    assert bare.endswith("<tool_response|>")  # the model continues its own turn after the result
    assert with_preamble == bare
    assert "Let me add." not in with_preamble


def test_qwen3_keeps_the_preamble(make_model) -> None:
    core = MlxCore.load(MlxModelConfig(str(make_model("qwen3"))))
    try:
        text = core.render(ChatPrompt(messages=_tool_loop("Let me add."), tools=TOOLS)).text
    finally:
        core.close()
    assert "Let me add." in text and text.endswith("<|im_start|>assistant\n")


def test_prompt_module_names_no_family() -> None:
    """Family rules live in ``core.parsers`` (one module a family), not in the prompt code."""
    import inspect

    from lib_mlx.core import prompt

    source = inspect.getsource(prompt).lower()
    assert not [name for name in ("qwen", "gemma", "llama", "mistral", "harmony", "granite") if name in source]


def test_forced_call_opening_is_family_data() -> None:
    from lib_mlx.core.parsers import get_family

    qwen, gemma = get_family("qwen3"), get_family("gemma4")
    assert qwen.forced_call("required") == "<tool_call>\n"
    assert qwen.forced_call({"type": "function", "function": {"name": "add"}}) == (
        '<tool_call>\n{"name": "add", "arguments": '
    )
    assert gemma.forced_call({"type": "function", "function": {"name": "add"}}) == "<|tool_call>call:add"
    assert qwen.forced_call("auto") == qwen.forced_call("none") == ""
    assert (gemma.syntax.end, gemma.syntax.arguments) == ("<tool_call|>", "gemma4")


def test_load_config_family_overrides_detection(make_model) -> None:
    import pytest

    from lib_mlx.errors import InvalidConfigError

    path = str(make_model("qwen3"))
    core = MlxCore.load(MlxModelConfig(path, family="plain"))
    try:
        assert core.loaded.family.name == "plain"
        assert core.render(ChatPrompt(messages=_tool_loop(""), tools=TOOLS, tool_choice="required")).assistant_prefix == ""
    finally:
        core.close()
    with pytest.raises(InvalidConfigError):
        MlxCore.load(MlxModelConfig(path, family="no_such_family"))


def test_templates_that_mutate_lists_render_in_a_sandbox_that_still_guards_internals(make_model) -> None:
    """Kimi K2's templates call ``list.append``/``pop`` (transformers' immutable sandbox refuses
    them): they render; reaching Python internals still fails; output is bounded."""
    import jinja2
    import pytest
    from transformers import AutoTokenizer

    from lib_mlx.core import template as tpl
    from lib_mlx.errors import InvalidRequestError

    hf = AutoTokenizer.from_pretrained(str(make_model("qwen3")))
    messages = [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    hf.chat_template = (
        "{%- set q = namespace(ids=[]) -%}{%- for m in messages -%}{%- set _ = q.ids.append(m.content) -%}"
        "{%- endfor -%}{{ q.ids | join(',') }}|{{ q.ids.pop(0) }}"
    )
    with pytest.raises(jinja2.exceptions.SecurityError):  # what transformers alone does
        hf.apply_chat_template(messages, tokenize=False)
    assert tpl.apply_chat_template(hf, messages, None) == "a,b|a"
    hf.chat_template = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(jinja2.exceptions.SecurityError):
        tpl.apply_chat_template(hf, messages, None)
    hf.chat_template = "{%- set q = [] -%}{%- set _ = q.append(1) -%}{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"
    with pytest.raises(InvalidRequestError):
        tpl.render_mutable(hf, messages, None)
