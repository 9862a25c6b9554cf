"""Text that can travel: JSON's ``\\ud800``-style escapes decode to lone surrogates, which no
UTF-8 text can hold. Found at the door (the ABI's config, an HTTP body), they are refused with
the field's path instead of failing later in a tokenizer, a stored response or an encoder."""

from __future__ import annotations

import re
from typing import Any


def lone_surrogate_at(value: Any, where: str = "") -> str | None:
    """The path (``messages[0].content``) of the first string -- key or value -- in ``value``
    that holds a lone surrogate, or None. Iterative: a deeply nested body cannot overflow it."""
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            if not _encodable(item):
                return path or "body"
        elif isinstance(item, dict):
            entries = list(item.items())
            for key, child in reversed(entries):
                child_path = f"{path}.{key}" if path else str(key)
                if isinstance(key, str) and not _encodable(key):
                    return path or "body"
                stack.append((child, child_path))
        elif isinstance(item, list):
            for i in range(len(item) - 1, -1, -1):
                stack.append((item[i], f"{path}[{i}]"))
    return None


_SURROGATE = re.compile("[\ud800-\udfff]")


def _encodable(text: str) -> bool:
    return _SURROGATE.search(text) is None  # no copy of a large string, unlike encode()


__all__ = ["lone_surrogate_at"]
