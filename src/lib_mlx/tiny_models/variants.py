"""Other architectures made from a built tiny model, where mlx-lm supports something only for
them (mlx-lm pipelines Qwen2, not Qwen3)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def as_qwen2(src: str | Path, dst: str | Path) -> Path:
    """A Qwen3 model directory rewritten as a Qwen2 checkpoint: the q/k norms dropped, zero
    q/k/v biases added, the rest (tokenizer, template, scripted chains) unchanged. In a scripted
    model the attention output projections are zero, so it writes the same text."""
    import mlx.core as mx

    src, dst = Path(src), Path(dst)
    shutil.copytree(src, dst, dirs_exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    config.update(model_type="qwen2", architectures=["Qwen2ForCausalLM"])
    (dst / "config.json").write_text(json.dumps(config, indent=2))
    for stale in dst.glob("model*.safetensors"):
        stale.unlink()
    weights: dict[str, mx.array] = {}
    for part in sorted(src.glob("model*.safetensors")):
        weights.update(mx.load(str(part)))
    out = {k: v for k, v in weights.items() if not k.endswith(("q_norm.weight", "k_norm.weight"))}
    for key, value in weights.items():
        for proj in ("q_proj", "k_proj", "v_proj"):
            if key.endswith(f"self_attn.{proj}.weight"):
                dtype = mx.bfloat16 if value.dtype == mx.uint32 else value.dtype  # 4-bit: packed rows
                out[key[: -len("weight")] + "bias"] = mx.zeros((value.shape[0],), dtype=dtype)
    mx.save_safetensors(str(dst / "model.safetensors"), out, metadata={"format": "mlx"})
    index = {"metadata": {}, "weight_map": {k: "model.safetensors" for k in out}}
    (dst / "model.safetensors.index.json").write_text(json.dumps(index))
    return dst


__all__ = ["as_qwen2"]
