"""Which model directories need the multimodal (mlx-vlm) path. Reads JSON and safetensors
headers only: no MLX, no weights."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

# Top-level weight prefixes of each tower across mlx-vlm's model families.
TOWER_PREFIXES: dict[str, tuple[str, ...]] = {
    "vision": ("vision_tower.", "vision_model.", "embed_vision.", "multi_modal_projector.", "mm_projector."),
    "audio": ("audio_tower.", "audio_model.", "embed_audio.", "audio_projector."),
}
_CONFIG_KEYS = {"vision": "vision_config", "audio": "audio_config"}


def _read_config(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def weight_names(path: Path) -> set[str]:
    """Tensor names of a model directory, from the index or the safetensors headers."""
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            return set(json.loads(index.read_text()).get("weight_map", {}))
        except (OSError, ValueError):
            pass
    names: set[str] = set()
    for file in path.glob("*.safetensors"):
        try:
            with file.open("rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(n))
        except (OSError, ValueError, struct.error):
            continue
        names.update(k for k in header if k != "__metadata__")
    return names


def multimodal_capabilities(path: str | Path) -> frozenset[str]:
    """The media a model directory can take: a subset of ``{"image", "audio"}``.

    A tower counts when config.json declares it *and* the weights carry it (text-only
    conversions of multimodal families keep ``vision_config`` but drop the tower)."""
    path = Path(path)
    config = _read_config(path)
    if config is None:
        return frozenset()
    declared = [kind for kind, key in _CONFIG_KEYS.items() if config.get(key)]
    if not declared:
        return frozenset()
    names = weight_names(path)
    found = set()
    for kind in declared:
        prefixes = TOWER_PREFIXES[kind]
        # Checkpoints straight from transformers nest everything under "model.".
        if any(n.startswith(prefixes) or n.removeprefix("model.").startswith(prefixes) for n in names):
            found.add("image" if kind == "vision" else "audio")
    return frozenset(found)


def is_multimodal_model_dir(path: str | Path) -> bool:
    """True when the directory holds a model with a vision and/or audio tower."""
    return bool(multimodal_capabilities(path))
