"""A bounded in-memory store of finished responses (``store: true``), least recently used
out first, for ``GET``/``DELETE /v1/responses/{id}``, ``previous_response_id`` and
``{"type": "item_reference", "id": ...}`` input items (the AI SDK sends earlier output items
that way when ``store`` is on)."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidRequestError


@dataclass(frozen=True)
class StoredResponse:
    response: dict[str, Any]
    # The conversation items this response answered (earlier turns included), without its
    # ``instructions``, which do not carry over to a continuation.
    input_items: list[dict[str, Any]]
    size: int

    def conversation(self) -> list[dict[str, Any]]:
        """Input and output items: what a continuation prepends to its own input."""
        return [*self.input_items, *self.response.get("output", [])]


class ResponseStore:
    def __init__(self, max_entries: int = 256, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, StoredResponse] = OrderedDict()
        self._items: dict[str, str] = {}  # output item id -> id of the response holding it
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, response: dict[str, Any], input_items: list[dict[str, Any]]) -> bool:
        """Keep ``response``; returns False when it alone is over the byte limit."""
        size = len(json.dumps(response, ensure_ascii=False)) + len(json.dumps(input_items, ensure_ascii=False))
        if size > self.max_bytes:
            return False
        entry = StoredResponse(response, input_items, size)
        with self._lock:
            self._drop(response["id"])
            self._entries[response["id"]] = entry
            self._bytes += size
            for item in response.get("output", []):
                if item.get("id"):
                    self._items[item["id"]] = response["id"]
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._drop(next(iter(self._entries)))
        return True

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            entry = self._entries.get(response_id)
            if entry is not None:
                self._entries.move_to_end(response_id)
            return entry

    def item(self, item_id: str) -> dict[str, Any] | None:
        """A stored output item (``msg_``, ``rs_``, ``fc_`` ids) by its id."""
        with self._lock:
            entry = self._entries.get(self._items.get(item_id, ""))
        if entry is None:
            return None
        return next((item for item in entry.response.get("output", []) if item.get("id") == item_id), None)

    def resolve(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """``items`` with each ``item_reference`` replaced by the stored item it names; an
        unknown id is a 400 naming ``input[i].id``."""
        out = []
        for i, item in enumerate(items):
            if item.get("type") == "item_reference":
                found = self.item(item["id"])
                if found is None:
                    raise InvalidRequestError(
                        f"input[{i}].id: no stored item with id '{item['id']}'", param=f"input[{i}].id"
                    )
                item = found
            out.append(item)
        return out

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._drop(response_id)

    def _drop(self, response_id: str) -> bool:
        entry = self._entries.pop(response_id, None)
        if entry is None:
            return False
        self._bytes -= entry.size
        for item in entry.response.get("output", []):
            if self._items.get(item.get("id", "")) == response_id:
                del self._items[item["id"]]
        return True
