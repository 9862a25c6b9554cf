"""Test support for issue 21: tiny models whose answers depend on attention.

The tiny models (``lib_mlx.tiny_models``) zero every layer's output projections, so the next
token depends on the current one only and a KV cache's contents never change an answer. Tests
of KV quantization, cache reuse and speculative drafts need the opposite: ``attentive`` fills
those projections with random weights in the loaded model (the files stay as they are)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

_ZEROED = re.compile(r"layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj|per_layer_projection)\.weight$")


def attentive(model: Any, std: float = 0.08, seed: int = 1) -> Any:
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    rng = np.random.default_rng(seed)
    updates = [
        (name, mx.array(rng.standard_normal(p.shape, dtype=np.float32) * std).astype(p.dtype))
        for name, p in tree_flatten(model.parameters())
        if _ZEROED.search(name)
    ]
    model.update(tree_unflatten(updates))
    mx.eval(model.parameters())
    return model
