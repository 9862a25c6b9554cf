"""What the load config asks of a model's memory and speed, checked and built once at load:
KV-cache quantization (``kv_quant``), the prompt cache on disk (``disk_cache``) and speculative
decoding (``speculative``). The engine is handed the result; nothing here runs per token."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import InvalidConfigError, ModelLoadError
from .disk_cache import CacheIdentity, DiskPromptCache, model_identity, text_digest
from .kv_quant import KVQuantization, check_model, plan
from .speculative import Speculation

if TYPE_CHECKING:
    from ..config import MlxModelConfig
    from .loader import LoadedModel

log = logging.getLogger("lib_mlx.engine")


@dataclass
class EngineOptions:
    kv: KVQuantization | None = None
    disk: DiskPromptCache | None = None
    speculation: Speculation | None = None
    kv_plan: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        if self.disk is not None:
            self.disk.flush(10)
            self.disk.close()
        if self.speculation is not None:
            self.speculation.draft_model = None

    def status(self) -> dict[str, Any]:
        """Plain values for ``server_status`` (read from any thread)."""
        disk = self.disk
        spec = self.speculation
        return {
            "kv_quantization": self.kv_plan or None,
            "disk_cache": None
            if disk is None
            else {
                "directory": str(disk.directory),
                "max_bytes": disk.max_bytes,
                "bytes": disk.stats.nbytes,
                "entries": disk.stats.entries,
                "writes": disk.stats.writes,
                "hits": disk.stats.hits,
                "rejected": disk.stats.rejected,
                "corrupt": disk.stats.corrupt,
            },
            "speculative": None
            if spec is None
            else {
                "mode": spec.mode,
                "num_draft_tokens": spec.num_draft_tokens,
                "drafted": spec.stats.drafted,
                "accepted": spec.stats.accepted,
                "acceptance": round(spec.stats.acceptance, 4),
            },
        }


def build_options(config: "MlxModelConfig", loaded: "LoadedModel") -> EngineOptions:
    """Check the config's memory and speed fields against the loaded model and build them;
    a field this model cannot honour is refused by name (``InvalidConfigError``)."""
    options = EngineOptions()
    if getattr(config, "distributed", None):
        for name in ("prompt_cache_dir", "draft_model_path", "prompt_lookup"):
            if getattr(config, name, None):
                raise InvalidConfigError(f"{name} is not supported with distributed serving", param=name)
    kv_bits = getattr(config, "kv_bits", None)
    if kv_bits is not None:
        try:
            options.kv = KVQuantization(kv_bits, config.kv_group_size, config.quantized_kv_start)
            check_model(loaded.model, options.kv)
        except ValueError as exc:
            raise InvalidConfigError(str(exc), param="kv_bits") from None
    options.kv_plan = plan(loaded.model, options.kv)
    if options.kv is not None and options.kv_plan["full_precision_kinds"]:
        log.info(
            "kv_bits=%d: %d of %d cache layers quantized; %s stay full precision (no quantized form)",
            options.kv.bits,
            options.kv_plan["quantized_layers"],
            options.kv_plan["layers"],
            ", ".join(options.kv_plan["full_precision_kinds"]),
        )

    directory = getattr(config, "prompt_cache_dir", None)
    if directory:
        options.disk = DiskPromptCache(directory, config.prompt_cache_disk_bytes, identity(loaded, options.kv))

    if getattr(config, "draft_model_path", None) and getattr(config, "prompt_lookup", False):
        raise InvalidConfigError("draft_model_path and prompt_lookup are two kinds of speculation: choose one", param="prompt_lookup")
    if getattr(config, "draft_model_path", None) or getattr(config, "prompt_lookup", False):
        _check_trimmable(loaded)
        options.speculation = Speculation(
            mode="draft" if config.draft_model_path else "prompt_lookup",
            num_draft_tokens=config.num_draft_tokens,
            ngram=config.prompt_lookup_ngram,
        )
        if config.draft_model_path:
            options.speculation.draft_model = _load_draft(config.draft_model_path, loaded)
    return options


def identity(loaded: "LoadedModel", kv: KVQuantization | None) -> CacheIdentity:
    cfg = loaded.config or {}
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "")
    quant = cfg.get("quantization") or {}
    if quant:
        dtype += f"+q{quant.get('bits')}g{quant.get('group_size')}"
    return CacheIdentity(
        model=model_identity(loaded.model_path),
        dtype=dtype,
        kv_bits=kv.bits if kv else None,
        kv_group_size=kv.group_size if kv else None,
        template=text_digest(getattr(loaded.tokenizer, "chat_template", None)),
    )


def _check_trimmable(loaded: "LoadedModel") -> None:
    from mlx_lm.models.cache import make_prompt_cache

    from .prompt_cache import needs_checkpoints

    if loaded.vlm is not None or needs_checkpoints(make_prompt_cache(loaded.model)):
        raise InvalidConfigError(
            "speculative decoding needs KV caches that can be trimmed back; this model's "
            "sliding-window or recurrent caches cannot (draft_model_path / prompt_lookup)",
            param="draft_model_path" if loaded.vlm is None else "prompt_lookup",
        )


def _load_draft(path: str, loaded: "LoadedModel") -> Any:
    import mlx_lm

    try:
        draft, tokenizer = mlx_lm.load(path)
    except Exception as exc:  # noqa: BLE001 - the load error names the field
        raise ModelLoadError(f"could not load draft_model_path {path}: {type(exc).__name__}: {exc}") from None
    if tokenizer.vocab_size != loaded.tokenizer.vocab_size:
        raise InvalidConfigError(
            f"draft_model_path: the draft's vocabulary ({tokenizer.vocab_size}) differs from the model's ({loaded.tokenizer.vocab_size})",
            param="draft_model_path",
        )
    return draft


__all__ = ["EngineOptions", "build_options", "identity"]
