"""Random weights, and the scripted-chain trick that makes greedy decoding deterministic.

With every layer's output projections zeroed (``o_proj``, ``down_proj`` and Gemma 4's
``per_layer_projection``), each layer adds nothing to the residual stream, so the final hidden
state at a position is ``sqrt(d) * embed[token] / |embed[token]|`` (times the final norm's unit
weight): the next-token logits depend only on the current token. Each scripted token ``c`` gets a
code vector ``u_c`` (a standard basis vector when there are at most ``hidden_size`` of them,
otherwise a sparse 0/1 code whose pairwise overlap is at most one entry) as its embedding, and its
successor's ``lm_head`` row is ``target / sqrt(d) * u_c``: the successor's logit is ``target``
(``TARGET_LOGIT``, or the softcap when lower: past it tanh flattens the gap), a scripted row
scores 0 with basis codes (a third or half of ``target`` per shared index with sparse codes),
random rows about ``0.02 * sqrt(d) * 3``. Codes and rows hold only 0 and one constant per row
(unless a token follows several scripted tokens), which affine 4-bit quantization represents
exactly.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

TARGET_LOGIT = 48.0  # capped at the final logit softcap (Gemma: 30 -> 22.8 after capping)
MIN_MARGIN = 4.0  # checked on the real forward pass, after softcap and quantization
INIT_STD = 0.02

_ZEROED = re.compile(r"layers\.\d+\.(self_attn\.o_proj|mlp\.down_proj|per_layer_projection)\.weight$")
_KEPT = re.compile(r"(norm|layer_scalar|\.scale$|per_expert_scale)")


def randomize(model, rng: np.random.Generator) -> None:
    """Normal(0, 0.02) weights from ``rng`` (norm scales stay at their init, ones)."""
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    updates = []
    for name, param in tree_flatten(model.parameters()):
        if _KEPT.search(name):
            continue
        if _ZEROED.search(name):
            value = np.zeros(param.shape, dtype=np.float32)
        else:
            value = rng.standard_normal(param.shape, dtype=np.float32) * INIT_STD
        updates.append((name, mx.array(value)))
    model.update(tree_unflatten(updates))


def _codes(count: int, dim: int) -> list[tuple[int, ...]]:
    """``count`` index sets over ``range(dim)``, pairwise sharing at most one index."""
    if count <= dim:
        return [(i,) for i in range(count)]
    used: set[tuple[int, int]] = set()
    triples = []
    for triple in itertools.combinations(range(dim), 3):
        pairs = list(itertools.combinations(triple, 2))
        if not used.intersection(pairs):
            used.update(pairs)
            triples.append(triple)
            if len(triples) == count:
                return triples
    pairs = list(itertools.combinations(range(dim), 2))
    if count <= len(pairs):
        return pairs[:count]
    raise ValueError(f"{count} scripted tokens need a larger hidden_size than {dim}")


def script(model, successors: Mapping[int, int], target: float = TARGET_LOGIT) -> None:
    """Point each token's output at its successor (see module doc)."""
    import mlx.core as mx

    embed = np.array(model.model.embed_tokens.weight, dtype=np.float32)
    head = np.array(model.lm_head.weight, dtype=np.float32)
    dim = embed.shape[1]
    currents = sorted(successors)
    rows: dict[int, np.ndarray] = {}
    for token, code in zip(currents, _codes(len(currents), dim)):
        u = np.zeros(dim, dtype=np.float32)
        u[list(code)] = 1.0 / math.sqrt(len(code))
        embed[token] = u
        succ = successors[token]
        rows[succ] = rows.get(succ, 0.0) + (target / math.sqrt(dim)) * u
    for succ, row in rows.items():
        head[succ] = row
    model.model.embed_tokens.weight = mx.array(embed)
    model.lm_head.weight = mx.array(head)


def verify(model, successors: Mapping[int, int], describe) -> None:
    """Run the real forward pass on every scripted token and check its successor wins."""
    import mlx.core as mx

    currents = sorted(successors)
    if not currents:
        return
    # Positions are independent (the layers add nothing), so one sequence checks them all.
    logits = model(mx.array([currents]))[0].astype(mx.float32)
    top2 = np.array(mx.topk(logits, 2, axis=-1))
    best = np.array(mx.argmax(logits, axis=-1))
    for i, token in enumerate(currents):
        low, high = sorted(top2[i])
        if best[i] != successors[token] or high - low < MIN_MARGIN:
            raise AssertionError(
                f"scripted step {describe(token)!r} -> {describe(successors[token])!r} is not safe: "
                f"argmax {describe(int(best[i]))!r}, margin {high - low:.2f}; with more scripted tokens "
                f"({len(currents)}) than hidden_size, raise hidden_size"
            )


def successor_map(chains: Sequence[Sequence[int]], describe) -> dict[int, int]:
    """``{token: next token}`` over all chains; raises on a token with two successors or a repeat
    within a chain (together these rule out loops: every chain ends at a stop token)."""
    successors: dict[int, int] = {}
    for chain in chains:
        seen: set[int] = set()
        for token in chain:
            if token in seen:
                raise ValueError(f"the chain for {describe(chain[0])!r} repeats {describe(token)!r}")
            seen.add(token)
        for current, nxt in zip(chain, chain[1:]):
            if successors.setdefault(current, nxt) != nxt:
                raise ValueError(
                    f"{describe(current)!r} is followed by both {describe(successors[current])!r} and "
                    f"{describe(nxt)!r}; make the pieces distinct (or fuse one with its neighbour)"
                )
    return successors


def cast(model, dtype: str) -> None:
    import mlx.core as mx
    from mlx.utils import tree_map

    target = getattr(mx, dtype)

    def convert(p):
        return p.astype(target) if mx.issubdtype(p.dtype, mx.floating) else p

    model.update(tree_map(convert, model.parameters()))


def quantize(model, config: dict[str, Any], bits: int) -> dict[str, Any]:
    import contextlib
    import io

    from mlx_lm.utils import quantize_model

    group_size = 64 if config["hidden_size"] % 64 == 0 else 32
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "[INFO] Quantized model with ..."
        _, config = quantize_model(model, config, group_size=group_size, bits=bits)
    return config
