"""The language half of an mlx-vlm model, shaped like an mlx-lm model.

``LanguageModel(inputs, cache=None, input_embeddings=None) -> logits`` with ``layers`` and
``make_cache()``: exactly what ``mlx_lm.generate.generate_step`` calls, so the engine drives a
multimodal model the way it drives a text one. A prompt with media arrives as token ids plus
the merged input embeddings (text embeddings with the towers' features scattered over the
placeholder tokens); mlx-lm slices both per prefill chunk.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import mlx.nn as nn


class LanguageModel(nn.Module):
    def __init__(self, vlm_model: Any, media_token_ids: tuple[int, ...]) -> None:
        super().__init__()
        self.language_model = vlm_model.language_model
        config = vlm_model.config
        text_config = getattr(self.language_model, "config", None)
        # Plain settings live in a namespace: nn.Module would file tuples and dicts among its
        # parameters.
        self._meta = SimpleNamespace(
            media_token_ids=frozenset(i for i in media_token_ids if i is not None),
            bidirectional_vision=getattr(text_config, "use_bidirectional_attention", None) == "vision",
            # mm_token_type_ids: 1 image, 2 video, 3 audio (mlx-vlm's Gemma processors).
            token_types=[
                (token_id, kind)
                for token_id, kind in (
                    (getattr(config, "image_token_id", None), 1),
                    (getattr(config, "video_token_id", None), 2),
                    (getattr(config, "audio_token_id", None), 3),
                )
                if token_id is not None
            ],
        )
        self.model_type = getattr(config, "model_type", "unknown")

    def _media_mask(self, inputs: mx.array) -> mx.array:
        mask = mx.zeros(inputs.shape, dtype=mx.bool_)
        for token_id in self._meta.media_token_ids:
            mask = mask | (inputs == token_id)
        return mask

    def __call__(self, inputs: mx.array, cache: Any = None, input_embeddings: mx.array | None = None) -> mx.array:
        if input_embeddings is None:
            return self.language_model(inputs, cache=cache).logits
        kwargs: dict[str, Any] = {}
        inner = getattr(self.language_model, "model", None)
        if getattr(inner, "hidden_size_per_layer_input", None):
            # Gemma 3n/4 per-layer embeddings come from the text tokens; media positions use
            # the padding id, as the full model's get_input_embeddings does.
            text_ids = mx.where(self._media_mask(inputs), mx.zeros_like(inputs), inputs)
            kwargs["per_layer_inputs"] = inner.get_per_layer_inputs(text_ids)
        if self._meta.bidirectional_vision:
            types = mx.zeros_like(inputs)
            for token_id, kind in self._meta.token_types:
                types = mx.where(inputs == token_id, kind, types)
            kwargs["mm_token_type_ids"] = types
        return self.language_model(None, inputs_embeds=input_embeddings, cache=cache, **kwargs).logits

    @property
    def bidirectional_vision(self) -> bool:
        """Image tokens attend to each other both ways: an image must not straddle two
        prefill chunks."""
        return self._meta.bidirectional_vision

    @property
    def layers(self) -> Any:
        return self.language_model.layers

    def make_cache(self) -> Any:
        return self.language_model.make_cache()
