"""The OpenAI Responses API: request model, item conversion, event encoder, store, routes."""

from __future__ import annotations

from .encoder import ResponseEncoder
from .serving import create_response, delete_response, get_response
from .store import ResponseStore

__all__ = ["ResponseEncoder", "ResponseStore", "create_response", "delete_response", "get_response"]
