"""The seam between the engine and multimodal models: what ``generate_step`` gets for a prompt.

``prompt_inputs(loaded, prompt)`` -> the prompt tokens and the extra keyword arguments for
``mlx_lm.generate.generate_step``. A prompt without media is its tokens as rendered; a prompt
with media runs ``VlmModel.prepare`` (placeholder expansion, tower loading on first use, media
encoding) and generates from the merged input embeddings. Worker thread only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ...errors import ContextLengthExceededError, InvalidRequestError


@dataclass
class PromptInputs:
    tokens: list[int]
    step_kwargs: dict[str, Any] = field(default_factory=dict)
    # A prompt whose media were merged into its embeddings must not share KV caches by token
    # prefix: every image's placeholder tokens are the same ids.
    cacheable: bool = True


def prompt_inputs(loaded: Any, prompt: Any, *, prefill_step_size: int = 2048) -> PromptInputs:
    media = getattr(prompt, "media", None)
    if not media:
        return PromptInputs(list(prompt.tokens))
    vlm = getattr(loaded, "vlm", None)
    if vlm is None:
        raise InvalidRequestError("this model does not accept images or audio", param="messages", code="unsupported_media")
    prepared = vlm.prepare(prompt.text, media)
    limit = getattr(loaded, "context_length", None)
    if isinstance(limit, int) and len(prepared.tokens) >= limit:
        raise ContextLengthExceededError(
            f"This model's maximum context length is {limit} tokens, but the prompt with its media has "
            f"{len(prepared.tokens)} tokens.",
            param="messages",
        )
    kwargs: dict[str, Any] = {"input_embeddings": prepared.input_embeddings}
    if prepared.prefill_step_size and prepared.prefill_step_size > prefill_step_size:
        kwargs["prefill_step_size"] = prepared.prefill_step_size
    return PromptInputs(prepared.tokens, kwargs, cacheable=False)
