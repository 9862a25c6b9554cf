"""Decoded media as plain values: what the server hands to core. No MLX here.

Chat messages carry media as content items in the shape chat templates expect:
``{"type": "image", "image": PIL.Image.Image}`` and ``{"type": "audio", "audio": AudioClip}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, eq=False)
class AudioClip:
    """Mono float32 samples in [-1, 1] at ``sample_rate`` Hz."""

    samples: np.ndarray
    sample_rate: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / float(self.sample_rate)


@dataclass(eq=False)
class MediaInputs:
    """A prompt's media in the order their placeholders appear in the rendered text."""

    images: list[Any] = field(default_factory=list)  # PIL.Image.Image, RGB
    audios: list[AudioClip] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.images or self.audios)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset(k for k, v in (("image", self.images), ("audio", self.audios)) if v)


def image_part(image: Any) -> dict[str, Any]:
    return {"type": "image", "image": image}


def audio_part(clip: AudioClip) -> dict[str, Any]:
    return {"type": "audio", "audio": clip}


def collect_media(messages: list[dict[str, Any]]) -> MediaInputs:
    """Media items of ``messages`` in document order (the order a chat template renders
    their placeholders)."""
    media = MediaInputs()
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image" and part.get("image") is not None:
                media.images.append(part["image"])
            elif part.get("type") == "audio" and isinstance(part.get("audio"), AudioClip):
                media.audios.append(part["audio"])
    return media
