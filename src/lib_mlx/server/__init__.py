"""The OpenAI-compatible HTTP server. Imports no MLX itself: it talks to core through events."""

from __future__ import annotations

from .listener import ServerHandle

__all__ = ["ServerHandle"]
