"""The Anthropic Messages API (``/v1/messages``): protocol, converter, encoder, routes."""

from .serving import count_tokens, create_message

__all__ = ["count_tokens", "create_message"]
