"""Chat-template rendering: transformers' own rendering, and -- for templates that mutate lists
(Kimi K2's ``list.append``/``pop``), which transformers' immutable sandbox refuses -- the same
rendering in a sandbox that allows mutating lists and dicts (still jinja2's sandbox: no
attribute access to Python internals, bounded ranges) with a bounded output size."""

from __future__ import annotations

from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from ..errors import InvalidRequestError

MAX_OUTPUT_CHARS = 32 * 1024 * 1024  # a rendered prompt bigger than this is a runaway template


def apply_chat_template(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, **kwargs: Any) -> str:
    """The prompt text of ``messages`` through the tokenizer's chat template."""
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, add_generation_prompt=True, tokenize=False, **kwargs)
    except jinja2.exceptions.SecurityError as exc:
        if "mutable" not in str(exc) and "unsafe" not in str(exc):
            raise
    return render_mutable(tokenizer, messages, tools, **kwargs)


def render_mutable(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, **kwargs: Any) -> str:
    """transformers' rendering, in a sandbox that lets templates mutate lists and dicts."""
    from transformers.utils import chat_template_utils as ctu

    # mlx-lm's TokenizerWrapper forwards to the Hugging Face tokenizer it wraps
    inner = tokenizer if hasattr(tokenizer, "get_chat_template") else tokenizer._tokenizer
    template = inner.get_chat_template(None, tools)
    base = ctu._compile_jinja_template(template).environment
    env = SandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters.update(base.filters)
    env.globals.update(base.globals)
    context = {
        **ctu._plain_template_data({**inner.special_tokens_map, **kwargs}),
        "messages": ctu._alias_reasoning_fields(ctu._plain_template_data(messages)),
        "tools": ctu._plain_template_data(tools),
        "documents": None,
        "add_generation_prompt": True,
    }
    out: list[str] = []
    size = 0
    for piece in env.from_string(template).generate(**context):
        size += len(piece)
        if size > MAX_OUTPUT_CHARS:
            raise InvalidRequestError(
                f"the chat template's output exceeds {MAX_OUTPUT_CHARS} characters", param="messages"
            )
        out.append(piece)
    return "".join(out)
