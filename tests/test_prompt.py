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
