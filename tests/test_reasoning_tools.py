"""Reasoning kept apart from the answer, and tool calls, in Chat Completions (issue 3).

Everything goes through the real server and the strict ``openai`` client, over ``qwen3`` and
``gemma4_text`` models whose weights script greedy decoding (``tiny_models`` chains keyed on the
prompt's last token). Prompt assertions use the core's own ``render`` (what the server renders).

Reasoning-token rule (``core.parsers.base``): a completion token counts as a reasoning token iff
at least one of its characters belongs to a reasoning block the model wrote, its markers
included -- Qwen3's ``<think>`` and ``</think>``, Gemma 4's ``<|channel>`` + ``thought`` (the
start marker is the whole ``<|channel>thought``) and ``<channel|>`` (issue 17.6: what the model
spent on thinking) -- but not whitespace after the block, nor a start marker the prompt wrote.
So the count is the number of chain pieces from the start marker through the end marker.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import httpx
import pytest
from conftest import Served, serving

from lib_mlx import LibMlxRuntime
from lib_mlx.core import ChatPrompt
from lib_mlx.tiny_models import CHAT_TEMPLATES

FAMILIES = ("qwen3", "gemma4_text")
MARKERS = {
    "qwen3": ("<think>", "</think>", "<tool_call>", "</tool_call>", "<|im_end|>", "<|im_start|>"),
    "gemma4_text": ("<|channel>", "<channel|>", "<|tool_call>", "<tool_call|>", '<|"|>', "<turn|>", "<|tool_response>"),
}
THINK_OFF_SUFFIX = {"qwen3": "<think>\n\n</think>\n\n", "gemma4_text": "<|channel>thought\n<channel|>"}

HELLO = [{"role": "user", "content": "Hello"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "Current time",
        "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
    },
}
TOOLS = [WEATHER, TIME]

# --- scripted models ---------------------------------------------------------------------------
REASONING, ANSWER = "The user greets me.", "Hello there!"
ANSWER_PIECES = ["Hello", " there", "!"]
Q_REASON = ["\nThe user", " greets", " me", ".\n"]  # the pieces inside the block
G_REASON = ["\nThe user", " greets", " me", "."]
G_CALL_WEATHER = ["<|tool_call>", "call:get_weather{", "city:", '<|"|>', "Par", 'is<|"|>']
Q_CALL_WEATHER = ["<tool_call>", '\n{"name": "get_weather", ', '"arguments": {"city": ', '"Par', 'is"']
AFTER_TOOL = ["It", " is", " sunny", "."]
# Gemma 4's template variants: one opens the thought channel in the prompt, one leaves the
# channel out of the thinking-off generation prompt (so the model may still think).
_G_GEN_OFF = (
    "{%- if not enable_thinking | default(false) -%}\n"
    "            {{- '<|channel>thought\\n<channel|>' -}}\n"
    "        {%- endif -%}"
)
assert _G_GEN_OFF in CHAT_TEMPLATES["gemma4_text"]
G_OPEN_TEMPLATE = CHAT_TEMPLATES["gemma4_text"].replace(_G_GEN_OFF, "{{- '<|channel>thought\\n' -}}")
G_NO_EMPTY_CHANNEL_TEMPLATE = CHAT_TEMPLATES["gemma4_text"].replace(_G_GEN_OFF, "")
Q_OPEN_TEMPLATE = CHAT_TEMPLATES["qwen3"].replace(
    "{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}"
)

MODELS: dict[str, dict[str, dict[str, Any]]] = {
    "qwen3": {
        # thinking on ("\n") runs into the thinking-off answer ("\n\n")
        "reason": {
            "chains": {"\n": ["<think>", *Q_REASON, "</think>", "\n\n", *ANSWER_PIECES], "\n\n": ANSWER_PIECES}
        },
        "tools": {
            "chains": {
                "\n": [
                    "<think>", "\nWeather", " and time", ".\n", "</think>",
                    *Q_CALL_WEATHER, ', "days": ', "3", "}}\n", "</tool_call>",
                    '\n<tool_call>\n{"name": "get_time", "arguments": ', '{"tz": "CET"}}', "\n</tool_call>",
                ],
                "\n\n": AFTER_TOOL,  # thinking off: the answer after the tool results
            }
        },
        "one_call": {
            "chains": {
                "\n": [*Q_CALL_WEATHER, "}}\n", "</tool_call>"],
                # thinks anyway; its end marker arrives split over two tokens
                "\n\n": ["<think>", "\nStill", " musing", "</", "think>", "Done", "."],
            }
        },
        "forced": {
            "chains": {
                " ": ['{"city": ', '"Ro', 'me"}', "}\n", "</tool_call>"],  # after '..."arguments": '
                "\n": ['{"name": "get_time", ', '"arguments": {}}\n', "</tool_call>"],  # after '<tool_call>\n'
                "\n\n": ["<tool_call>", "\n{oops", " not json\n", "</tool_call>"],  # malformed
            }
        },
        "open": {
            "chains": {"\n": ["Short", " thought", ".\n", "</think>", "\n\n", "Done", "."]},
            "chat_template": Q_OPEN_TEMPLATE,
        },
        "refuses": {  # does not continue a forced opening
            "chains": {
                " ": ["I", " refuse", "."],  # after '..."arguments": '
                "\n": ["Rather", " not", "."],  # after '<tool_call>\n'
            }
        },
    },
    "gemma4_text": {
        "reason": {
            "chains": {
                "\n": ["<|channel>", "thought", *G_REASON, "<channel|>", *ANSWER_PIECES],
                "<channel|>": ANSWER_PIECES,
            }
        },
        "tools": {
            "chains": {
                "\n": [
                    "<|channel>", "thought", "\nWeather", " and time", "<channel|>",
                    *G_CALL_WEATHER, ",days:", "3", "}<tool_call|>",
                    "<|tool_call>call:get_time{", 'tz:<|"|>CET<|"|>', "}", "<tool_call|>", "<|tool_response>",
                ],
                "<tool_response|>": AFTER_TOOL,
            }
        },
        "one_call": {
            "chains": {
                "\n": [*G_CALL_WEATHER, "}", "<tool_call|>", "<|tool_response>"],
                "<channel|>": ["<|tool_call>oops", " not a call", "<tool_call|>", "<|tool_response>"],  # malformed
            }
        },
        "forced": {
            "chains": {
                # after '<|tool_call>call:get_weather'
                "_weather": ["{city:", '<|"|>Ro', 'me<|"|>', "}", "<tool_call|>", "<|tool_response>"],
                "<|tool_call>": ["call:get_time{", "}", "<tool_call|>", "<|tool_response>"],
            }
        },
        "open": {
            "chains": {"\n": ["Short", " thought", ".\n", "<channel|>", "Done", "."]},
            "chat_template": G_OPEN_TEMPLATE,
        },
        "anyway": {
            "chains": {"\n": ["<|channel>", "thought", "\nStill", " musing", "<channel|>", "Done", "."]},
            "chat_template": G_NO_EMPTY_CHANNEL_TEMPLATE,
        },
    },
}
# Which model shows a model that thinks although thinking is off, and a malformed call.
ANYWAY = {"qwen3": "one_call", "gemma4_text": "anyway"}
MALFORMED = {"qwen3": "forced", "gemma4_text": "one_call"}


@pytest.fixture(scope="module")
def lab(make_model):
    """``lab(family, name, thinking_enabled=True) -> Served``: loaded and started once a module."""
    runtime = LibMlxRuntime()
    stack = contextlib.ExitStack()
    served: dict[tuple, Served] = {}

    def get(family: str, name: str, *, thinking_enabled: bool = True) -> Served:
        key = (family, name, thinking_enabled)
        if key not in served:
            spec = MODELS[family][name]
            path = make_model(family, chains=spec["chains"], chat_template=spec.get("chat_template"))
            served[key] = stack.enter_context(serving(runtime, path, thinking_enabled=thinking_enabled))
        return served[key]

    yield get
    stack.close()
    runtime.close()


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


# --- helpers -----------------------------------------------------------------------------------
def render(s: Served, messages=HELLO, **kwargs: Any):
    return s.runtime._entry(s.handle).core.render(ChatPrompt(messages=messages, **kwargs))


def create(s: Served, messages=HELLO, **kwargs: Any):
    kwargs.setdefault("temperature", 0.0)
    return s.client().chat.completions.create(model=s.info.model_id, messages=messages, **kwargs)


def reasoning_of(message) -> str | None:
    extra = message.model_extra or {}
    assert extra.get("reasoning") == extra.get("reasoning_content")  # the same text under both names
    return extra.get("reasoning_content")


class Streamed:
    """A streamed completion gathered by plain chunk accumulation (what a client without the
    helper does), keeping each delta for the assertions."""

    def __init__(self, chunks: list) -> None:
        self.chunks = chunks
        self.content_deltas: list[str] = []
        self.reasoning_deltas: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.finish: list[str] = []
        self.usage = chunks[-1].usage
        assert len({c.id for c in chunks}) == 1
        for chunk in chunks:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.finish_reason:
                self.finish.append(choice.finish_reason)
            delta = choice.delta
            extra = delta.model_extra or {}
            assert extra.get("reasoning") == extra.get("reasoning_content")
            if extra.get("reasoning_content"):
                assert not self.content_deltas and not self.calls, "reasoning after the answer began"
                self.reasoning_deltas.append(extra["reasoning_content"])
            if delta.content:
                self.content_deltas.append(delta.content)
            for tc in delta.tool_calls or []:
                if tc.index not in self.calls:  # the first delta of a call: id, type and name
                    assert tc.id and tc.id.startswith("call_") and tc.type == "function"
                    assert tc.function.name and tc.function.arguments == ""
                    self.calls[tc.index] = {"id": tc.id, "name": tc.function.name, "arguments": []}
                else:  # then arguments only
                    assert tc.id is None and tc.function.name is None
                    if tc.function.arguments:
                        self.calls[tc.index]["arguments"].append(tc.function.arguments)

    @property
    def content(self) -> str:
        return "".join(self.content_deltas)

    @property
    def reasoning(self) -> str:
        return "".join(self.reasoning_deltas)

    def assert_clean(self, family: str) -> None:
        assert_clean(family, *self.content_deltas, *self.reasoning_deltas)

    def tool_calls(self) -> list[tuple[str, str]]:
        return [(c["name"], "".join(c["arguments"])) for _, c in sorted(self.calls.items())]


def stream(s: Served, messages=HELLO, **kwargs: Any) -> Streamed:
    kwargs.setdefault("temperature", 0.0)
    chunks = list(
        s.client().chat.completions.create(
            model=s.info.model_id, messages=messages, stream=True, stream_options={"include_usage": True}, **kwargs
        )
    )
    return Streamed(chunks)


def assert_clean(family: str, *texts: str | None) -> None:
    for text in texts:
        for marker in MARKERS[family]:
            assert marker not in (text or ""), f"{marker!r} leaked into {text!r}"


def chain_len(family: str, name: str, trigger: str = "\n") -> int:
    return len(MODELS[family][name]["chains"][trigger])


def reasoning_pieces(family: str, name: str, trigger: str = "\n", *, opened: bool = False) -> int:
    """The chain pieces of the reasoning block, its markers included (``opened``: the prompt
    wrote the start marker)."""
    chain = MODELS[family][name]["chains"][trigger]
    start = 0 if opened else chain.index("<think>" if family == "qwen3" else "<|channel>")
    end = next(i for i, piece in enumerate(chain) if piece in ("</think>", "think>", "<channel|>"))
    return end - start + 1


# --- reasoning ---------------------------------------------------------------------------------
def test_reasoning_and_content_are_separated_exactly(lab, family) -> None:
    s = lab(family, "reason")
    reply = create(s)
    message = reply.choices[0].message
    assert message.content == ANSWER
    assert reasoning_of(message) == REASONING
    assert_clean(family, message.content, reasoning_of(message))
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens == chain_len(family, "reason", "\n")
    assert reply.usage.completion_tokens_details.reasoning_tokens == reasoning_pieces(family, "reason")
    assert reasoning_pieces(family, "reason") == {"qwen3": 6, "gemma4_text": 7}[family]

    streamed = stream(s)
    assert (streamed.reasoning, streamed.content) == (REASONING, ANSWER)
    assert len(streamed.reasoning_deltas) > 1 and len(streamed.content_deltas) > 1  # as written, not held back
    assert streamed.finish == ["stop"]
    assert streamed.usage.completion_tokens_details == reply.usage.completion_tokens_details
    streamed.assert_clean(family)


@pytest.mark.parametrize(
    "toggle",
    [{"thinking": False}, {"chat_template_kwargs": {"enable_thinking": False}}, {"reasoning_effort": "none"}],
    ids=["thinking", "chat_template_kwargs", "reasoning_effort"],
)
def test_thinking_off_changes_the_prompt_as_the_template_dictates(lab, family, toggle) -> None:
    s = lab(family, "reason")
    on, off = render(s, thinking=True), render(s, thinking=False)
    assert off.text.endswith(THINK_OFF_SUFFIX[family]) and not on.text.endswith(THINK_OFF_SUFFIX[family])
    if family == "gemma4_text":
        assert "<|think|>" in on.text and "<|think|>" not in off.text
    else:
        assert off.text == on.text + THINK_OFF_SUFFIX[family]
    if "reasoning_effort" in toggle:
        reply = create(s, **toggle)  # a typed parameter of the client
    else:
        reply = create(s, extra_body=toggle)
    assert reply.usage.prompt_tokens == len(off.tokens) != len(on.tokens)  # the server rendered the off prompt
    assert reply.choices[0].message.content == ANSWER
    assert reasoning_of(reply.choices[0].message) is None
    assert reply.usage.completion_tokens_details.reasoning_tokens == 0
    # Any other effort, or thinking on, leaves the default (on).
    low = create(s, reasoning_effort="low")
    assert (reasoning_of(low.choices[0].message), low.usage.prompt_tokens) == (REASONING, len(on.tokens))


def test_load_config_sets_the_default(lab, family) -> None:
    s = lab(family, "reason", thinking_enabled=False)
    reply = create(s)
    assert reply.usage.prompt_tokens == len(render(s, thinking=False).tokens)
    assert (reply.choices[0].message.content, reasoning_of(reply.choices[0].message)) == (ANSWER, None)
    on = create(s, extra_body={"thinking": True})
    assert (on.choices[0].message.content, reasoning_of(on.choices[0].message)) == (ANSWER, REASONING)


def test_reasoning_the_model_emits_anyway_goes_to_reasoning_content(lab, family) -> None:
    s = lab(family, ANYWAY[family])
    assert render(s, thinking=False).text != render(s, thinking=True).text
    reply = create(s, extra_body={"thinking": False})
    message = reply.choices[0].message
    assert (message.content, reasoning_of(message)) == ("Done.", "Still musing")
    spent = reasoning_pieces(family, ANYWAY[family], "\n\n" if family == "qwen3" else "\n")
    assert reply.usage.completion_tokens_details.reasoning_tokens == spent == 5
    streamed = stream(s, extra_body={"thinking": False})
    assert (streamed.content, streamed.reasoning) == ("Done.", "Still musing")
    streamed.assert_clean(family)


def test_a_template_that_opens_reasoning_in_the_prompt(lab, family) -> None:
    s = lab(family, "open")
    rendered = render(s)
    assert rendered.text.endswith("<think>\n" if family == "qwen3" else "<|channel>thought\n")
    assert rendered.starts_in_reasoning
    reply = create(s)
    message = reply.choices[0].message
    assert (message.content, reasoning_of(message)) == ("Done.", "Short thought.")
    spent = reasoning_pieces(family, "open", opened=True)
    assert reply.usage.completion_tokens_details.reasoning_tokens == spent == 4  # the end marker included
    streamed = stream(s)
    assert (streamed.content, streamed.reasoning) == ("Done.", "Short thought.")
    streamed.assert_clean(family)


def test_prior_turn_reasoning_is_stripped_from_the_next_prompt(lab, family) -> None:
    s = lab(family, "reason")
    inline = (
        "<think>\nsecret inline\n</think>\n\nHello there!"
        if family == "qwen3"
        else "<|channel>thought\nsecret inline<channel|>Hello there!"
    )
    history = [
        *HELLO,
        {"role": "assistant", "content": inline, "reasoning_content": "secret field"},
        {"role": "assistant", "content": "Fine.", "reasoning": "secret too"},
        {"role": "user", "content": "Again"},
    ]
    rendered = render(s, history)
    assert "secret" not in rendered.text
    assert "Hello there!" in rendered.text and "Fine." in rendered.text
    reply = create(s, history)
    assert reply.usage.prompt_tokens == len(rendered.tokens)
    assert (reply.choices[0].message.content, reasoning_of(reply.choices[0].message)) == (ANSWER, REASONING)

    # Within the tool loop now running (after the last user message), the template decides:
    # Qwen3 and Gemma 4 render the model's own reasoning back.
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
    loop = [
        *HELLO,
        {"role": "assistant", "content": None, "reasoning_content": "need weather", "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "21 C"},
    ]
    kept = render(s, loop, tools=TOOLS).text
    block = "<think>\nneed weather\n</think>" if family == "qwen3" else "<|channel>thought\nneed weather\n<channel|>"
    assert block in kept


# --- tool calls --------------------------------------------------------------------------------
TWO_CALLS = [("get_weather", {"city": "Paris", "days": 3}), ("get_time", {"tz": "CET"})]


def _calls(message) -> list[tuple[str, dict]]:
    for call in message.tool_calls:
        assert call.id.startswith("call_") and call.type == "function"
    return [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]


def test_two_parallel_tool_calls(lab, family) -> None:
    s = lab(family, "tools")
    reply = create(s, tools=TOOLS)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert _calls(choice.message) == TWO_CALLS
    assert len({c.id for c in choice.message.tool_calls}) == 2
    assert choice.message.content is None
    assert reasoning_of(choice.message) == {"qwen3": "Weather and time.", "gemma4_text": "Weather and time"}[family]
    assert reply.usage.completion_tokens_details.reasoning_tokens == reasoning_pieces(family, "tools")

    # plain chunk accumulation
    streamed = stream(s, tools=TOOLS)
    assert streamed.finish == ["tool_calls"]
    assert streamed.content == ""
    assert streamed.tool_calls() == [(c.function.name, c.function.arguments) for c in choice.message.tool_calls]
    assert [json.loads(args) for _, args in streamed.tool_calls()] == [args for _, args in TWO_CALLS]
    assert len(streamed.calls[0]["arguments"]) > 1  # the arguments span several tokens and deltas
    assert streamed.reasoning == reasoning_of(choice.message)
    streamed.assert_clean(family)

    # the openai streaming helper
    with s.client().chat.completions.stream(
        model=s.info.model_id, messages=HELLO, tools=TOOLS, temperature=0.0
    ) as helper:
        events = [event.type for event in helper]
        final = helper.get_final_completion()
    assert events.count("tool_calls.function.arguments.done") == 2
    assert final.choices[0].finish_reason == "tool_calls"
    assert _calls(final.choices[0].message) == TWO_CALLS


def test_parallel_tool_calls_false_stops_after_the_first_call(lab, family) -> None:
    s = lab(family, "tools")  # this model writes two calls
    reply = create(s, tools=TOOLS, parallel_tool_calls=False)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert _calls(reply.choices[0].message) == TWO_CALLS[:1]
    streamed = stream(s, tools=TOOLS, parallel_tool_calls=False)
    assert [(n, json.loads(a)) for n, a in streamed.tool_calls()] == TWO_CALLS[:1]
    assert streamed.finish == ["tool_calls"]


def test_tool_choice_none_leaves_calls_the_model_writes_as_text(lab, family) -> None:
    s = lab(family, "tools")
    reply = create(s, tools=TOOLS, tool_choice="none")
    message = reply.choices[0].message
    assert not message.tool_calls and reply.choices[0].finish_reason == "stop"
    assert "get_weather" in message.content and "get_time" in message.content


def test_one_tool_call(lab, family) -> None:
    s = lab(family, "one_call")
    reply = create(s, tools=TOOLS)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert _calls(reply.choices[0].message) == [("get_weather", {"city": "Paris"})]
    arguments = reply.choices[0].message.tool_calls[0].function.arguments

    streamed = stream(s, tools=TOOLS)
    assert streamed.finish == ["tool_calls"] and streamed.content == "" and streamed.reasoning == ""
    assert streamed.tool_calls() == [("get_weather", arguments)]
    assert len(streamed.calls[0]["arguments"]) > 1

    with s.client().chat.completions.stream(model=s.info.model_id, messages=HELLO, tools=TOOLS) as helper:
        final = helper.get_final_completion()
    assert _calls(final.choices[0].message) == [("get_weather", {"city": "Paris"})]
    assert final.choices[0].message.tool_calls[0].function.arguments == arguments


def test_tool_choice_named_required_and_none(lab, family) -> None:
    s = lab(family, "forced")
    named = {"type": "function", "function": {"name": "get_weather"}}
    trigger = "_weather" if family == "gemma4_text" else " "
    forced = render(s, tools=TOOLS, tool_choice=named)
    tokenizer = s.runtime._entry(s.handle).core.loaded.tokenizer
    assert tokenizer.decode(forced.tokens[-1:]) == trigger  # the forced opening ends the prompt
    opening = '<tool_call>\n{"name": "get_weather", "arguments": ' if family == "qwen3" else "<|tool_call>call:get_weather"
    assert forced.text.endswith(opening)

    reply = create(s, tools=TOOLS, tool_choice=named)
    assert reply.choices[0].finish_reason == "tool_calls"
    assert _calls(reply.choices[0].message) == [("get_weather", {"city": "Rome"})]
    streamed = stream(s, tools=TOOLS, tool_choice=named)
    assert [(n, json.loads(a)) for n, a in streamed.tool_calls()] == [("get_weather", {"city": "Rome"})]
    assert streamed.finish == ["tool_calls"]
    assert len(streamed.calls[0]["arguments"]) > 1

    required = create(s, tools=TOOLS, tool_choice="required")
    assert _calls(required.choices[0].message) == [("get_time", {})]
    assert required.choices[0].finish_reason == "tool_calls"

    none = render(s, tools=TOOLS, tool_choice="none")
    assert none.text == render(s).text  # no tools in the prompt at all
    assert "get_weather" not in none.text and "get_weather" in render(s, tools=TOOLS).text
    reply = create(s, tools=TOOLS, tool_choice="none", max_tokens=3)
    assert reply.usage.prompt_tokens == len(none.tokens)


def test_tool_result_round_trip(lab, family) -> None:
    s = lab(family, "tools")
    first = create(s, tools=TOOLS).choices[0].message
    results = {"get_weather": "21 C and sunny", "get_time": "10:00"}
    history = [
        *HELLO,
        first.model_dump(exclude_none=True),
        *({"role": "tool", "tool_call_id": c.id, "content": results[c.function.name]} for c in first.tool_calls),
    ]
    # Qwen3's prompt after a tool result ends like the first turn's; thinking off gives it its own trigger.
    extra = {"thinking": False} if family == "qwen3" else {}
    rendered = render(s, history, tools=TOOLS, thinking=False if extra else None)
    for text in results.values():
        assert text in rendered.text
    if family == "qwen3":
        assert '<tool_response>\n21 C and sunny\n</tool_response>' in rendered.text
        assert '{"name": "get_time", "arguments": {"tz": "CET"}}' in rendered.text
    else:  # tool_call_id resolves the function's name
        assert '<|tool_response>response:get_time{value:<|"|>10:00<|"|>}<tool_response|>' in rendered.text
        assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>,days:3}<tool_call|>' in rendered.text
    reply = create(s, history, tools=TOOLS, extra_body=extra or None)
    assert reply.usage.prompt_tokens == len(rendered.tokens)
    assert reply.choices[0].message.content == "It is sunny."
    assert reply.choices[0].finish_reason == "stop" and not reply.choices[0].message.tool_calls


def test_a_malformed_tool_call_comes_back_as_content(lab, family) -> None:
    s = lab(family, MALFORMED[family])
    reply = create(s, tools=TOOLS, extra_body={"thinking": False})
    message = reply.choices[0].message
    assert not message.tool_calls and reply.choices[0].finish_reason == "stop"
    raw = "<tool_call>\n{oops not json\n</tool_call>" if family == "qwen3" else "<|tool_call>oops not a call<tool_call|>"
    assert message.content == raw
    streamed = stream(s, tools=TOOLS, extra_body={"thinking": False})
    assert (streamed.content, streamed.calls, streamed.finish) == (raw, {}, ["stop"])
    # and over plain HTTP: a 200, never a 500
    r = httpx.post(
        f"{s.info.base_url}/v1/chat/completions",
        json={"messages": HELLO, "tools": TOOLS, "thinking": False},
        headers=s.headers,
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == raw


# --- issue 17.4: forced openings and functions never offered ------------------------------------
def test_forced_tool_choice_that_the_model_ignores(lab) -> None:
    # A forced call is enforced while decoding (core.tool_grammar): a model that would refuse
    # ("Rather not.", "I refuse.") cannot -- it writes a call to one of the tools, or runs out
    # of budget inside one; its refusal never becomes the answer.
    s = lab("qwen3", "refuses")
    names = {t["function"]["name"] for t in TOOLS}
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        reply = create(s, tools=TOOLS, tool_choice=choice, max_tokens=96)
        message, finish = reply.choices[0].message, reply.choices[0].finish_reason
        assert finish in ("tool_calls", "length")
        assert not (message.content or "").startswith(("Rather", "I refuse"))
        if finish == "tool_calls":
            assert message.tool_calls and {c.function.name for c in message.tool_calls} <= names
            assert not message.content
    streamed = stream(s, tools=TOOLS, tool_choice="required", max_tokens=96)
    assert not streamed.content.startswith("Rather")


def test_a_call_to_a_function_not_offered_is_not_a_tool_call(lab, family) -> None:
    s = lab(family, "tools")  # writes get_weather, then get_time
    reply = create(s, tools=[TIME])
    message = reply.choices[0].message
    assert _calls(message) == [("get_time", {"tz": "CET"})]
    assert "get_weather" in message.content and "Paris" in message.content  # the model's text, as text
    streamed = stream(s, tools=[TIME])
    assert [name for name, _ in streamed.tool_calls()] == ["get_time"] and "get_weather" in streamed.content
    none_offered = create(s)  # no tools at all: no call is a call
    assert none_offered.choices[0].message.tool_calls is None
    assert none_offered.choices[0].finish_reason == "stop"
