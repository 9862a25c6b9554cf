"""Multimodal models (vision and audio towers) through mlx-vlm.

``is_multimodal_model_dir`` and the media value types import no MLX; ``load_vlm``, ``VlmModel``
and ``PreparedPrompt`` load mlx-vlm on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .detect import is_multimodal_model_dir, multimodal_capabilities
from .generation import PromptInputs, prompt_inputs
from .inputs import AudioClip, MediaInputs, audio_part, collect_media, image_part

if TYPE_CHECKING:
    from .model import PreparedPrompt, VlmModel, load_vlm

_LAZY = {"load_vlm", "VlmModel", "PreparedPrompt"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import model

        return getattr(model, name)
    raise AttributeError(name)


__all__ = [
    "AudioClip",
    "MediaInputs",
    "PreparedPrompt",
    "PromptInputs",
    "VlmModel",
    "audio_part",
    "collect_media",
    "image_part",
    "is_multimodal_model_dir",
    "load_vlm",
    "multimodal_capabilities",
    "prompt_inputs",
]
