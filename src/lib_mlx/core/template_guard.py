"""Guards around the model's chat template: which request kwargs it may see, and cheap bounds
on what a request may make it render.

A request's ``chat_template_kwargs`` reach the template's Jinja context. Only a name the
template itself reads (a toggle such as ``enable_thinking`` or ``reasoning_effort``) with a
plain scalar value is accepted; ``chat_template`` (a request's own Jinja), the arguments
``apply_chat_template`` sets itself and anything the template never reads are refused by name.
The template itself renders in transformers' ``ImmutableSandboxedEnvironment`` (Jinja's
sandbox: no attribute access to Python internals, no mutation of the values passed in).

Rendering and tokenizing cost time and memory in proportion to the prompt, so a prompt that
cannot fit the context is refused before either: ``MAX_CHARS_PER_TOKEN`` characters per token
of context is more than any tokenizer packs into one token, so text longer than
``context_length * MAX_CHARS_PER_TOKEN`` can never fit.
"""

from __future__ import annotations

import functools
from typing import Any

from ..errors import ContextLengthExceededError, InvalidRequestError

# No tokenizer in use packs more characters than this into one token (long runs of spaces or
# repeated punctuation reach ~16); the bound only needs to be safe, not tight.
MAX_CHARS_PER_TOKEN = 32

# Names ``apply_chat_template`` passes itself, the special tokens it fills in, and functions it
# provides: never a request's to set.
_RESERVED = frozenset(
    {
        "chat_template",
        "messages",
        "tools",
        "documents",
        "add_generation_prompt",
        "continue_final_message",
        "tokenize",
        "tokenizer",
        "padding",
        "truncation",
        "max_length",
        "return_tensors",
        "return_dict",
        "return_assistant_tokens_mask",
        "tokenizer_kwargs",
        "raise_exception",
        "strftime_now",
        "bos_token",
        "eos_token",
        "pad_token",
        "unk_token",
        "sep_token",
        "cls_token",
        "mask_token",
        "additional_special_tokens",
        "loop",
        "range",
        "namespace",
        "dict",
        "lipsum",
        "cycler",
        "joiner",
    }
)
_SCALARS = (bool, int, float, str, type(None))


def template_toggles(source: str | dict[str, str] | None) -> frozenset[str]:
    """The names a chat template reads from its context that a request may set (for a
    repository's named templates, such as Hermes' ``default`` and ``tool_use``, any of them)."""
    if isinstance(source, dict):
        return frozenset().union(*(_toggles(text) for text in source.values() if isinstance(text, str)))
    return _toggles(source)


@functools.lru_cache(maxsize=8)
def _toggles(source: str | None) -> frozenset[str]:
    if not source:
        return frozenset()
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    try:
        names = meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(source))
    except Exception:  # noqa: BLE001 - a template Jinja cannot parse declares nothing
        return frozenset()
    return frozenset(names) - _RESERVED


def check_template_kwargs(kwargs: dict[str, Any], source: str | None, *, param: str = "chat_template_kwargs") -> None:
    """Refuse (400, naming the key) template overrides and kwargs the template does not read."""
    if not kwargs:
        return
    toggles = template_toggles(source)
    for key, value in kwargs.items():
        where = f"{param}.{key}"
        if key == "chat_template":
            raise InvalidRequestError(
                f"{where}: a request cannot replace the model's chat template", param=where, code="unsupported_parameter"
            )
        if key not in toggles:
            known = ", ".join(sorted(toggles)) or "none"
            raise InvalidRequestError(
                f"{where}: this model's chat template has no toggle {key!r} (its toggles: {known})",
                param=where,
                code="unsupported_parameter",
            )
        if not isinstance(value, _SCALARS):
            raise InvalidRequestError(
                f"{where}: a template toggle takes a boolean, number or string", param=where, code="invalid_type"
            )


def max_prompt_chars(context_length: int) -> int:
    return max(int(context_length), 1) * MAX_CHARS_PER_TOKEN


def check_prompt_size(messages: list[dict[str, Any]], tools: Any, context_length: int, *, param: str = "messages") -> None:
    """A cheap bound before rendering: the characters of every string in the messages and tools
    (media excluded), against what the context could ever hold."""
    limit = max_prompt_chars(context_length)
    total = _chars(messages, limit) + _chars(tools, limit)
    if total > limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context_length} tokens; the prompt has over {limit} "
            f"characters, more than that context can hold (at most {MAX_CHARS_PER_TOKEN} characters per token).",
            param=param,
        )


def check_rendered_size(text: str, context_length: int) -> None:
    """The rendered text must fit the same bound before it is tokenized."""
    limit = max_prompt_chars(context_length)
    if len(text) > limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {context_length} tokens; the rendered prompt has "
            f"{len(text)} characters, more than that context can hold.",
            param="messages",
        )


def _chars(node: Any, limit: int) -> int:
    """Characters of the strings in ``node``, stopping early once over ``limit``."""
    total = 0
    stack = [node]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            for key, value in item.items():
                if key in ("image", "audio"):  # decoded media: counted by their own budget
                    continue
                if isinstance(key, str):
                    total += len(key)
                stack.append(value)
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
    return total


__all__ = [
    "MAX_CHARS_PER_TOKEN",
    "check_prompt_size",
    "check_rendered_size",
    "check_template_kwargs",
    "max_prompt_chars",
    "template_toggles",
]
