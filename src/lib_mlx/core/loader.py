"""Model loading: a local MLX model directory (or a hub id) -> model, tokenizer, family."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import MlxModelConfig
from ..errors import LibMlxError, ModelLoadError, ModelNotFoundError
from . import memory_guard
from .parsers import Family, ParserSpec, family_of, parser_spec_from_tokenizer
from .progress import LoadCancelled, LoadProgress

log = logging.getLogger("lib_mlx.loader")

_DEFAULT_CONTEXT = 4096


@dataclass
class LoadedModel:
    """Everything core needs about one loaded model. Only the engine's worker touches
    ``model`` for computation."""

    model: Any
    tokenizer: Any  # mlx_lm TokenizerWrapper
    model_path: Path
    model_id: str
    config: dict[str, Any]
    context_length: int
    parser_spec: ParserSpec
    generation_defaults: dict[str, Any] = field(default_factory=dict)
    thinking_enabled: bool = True
    # A model with vision/audio towers: the ``core.vlm.VlmModel`` (``model`` is then its
    # mlx-lm-shaped language half and ``tokenizer`` its mlx-lm tokenizer).
    vlm: Any = None
    # A model sharded over several processes: ``core.sharding.DistributedInfo``.
    distributed: Any = None
    # The memory guard's figures for one request's KV cache (``core.memory_guard``).
    kv_bytes_per_token: int = 0
    kv_budget_bytes: int = 0
    # The model's own context length (``context_length`` is the smaller of it and the KV budget).
    declared_context_length: int = 0

    @property
    def capabilities(self) -> frozenset[str]:
        """Media this model accepts: a subset of {"image", "audio"}."""
        return self.vlm.capabilities if self.vlm is not None else frozenset()

    @property
    def family(self) -> Family:
        """The model's family (``core.parsers``): parser, call syntax, history and thinking rules."""
        return family_of(self.parser_spec)

    @property
    def model_type(self) -> str:
        return str(self.config.get("model_type", "unknown"))


def _is_dir(path: Path) -> bool:
    """``Path.is_dir`` that answers False, not OSError, for a name too long or otherwise not a
    path this system can look up."""
    try:
        return path.is_dir()
    except (OSError, ValueError):
        return False


def resolve_model_path(config: MlxModelConfig, progress: LoadProgress | None = None) -> Path:
    """A local directory as given, else the hub id through the local cache (then a download
    with byte progress, where a network exists: ``core.hub``). Anything that cannot be found is
    ``model_not_found``; the memory guard refuses a model too big before it downloads."""
    progress = progress or LoadProgress()
    if config.model_path:
        path = check_model_dir(config.model_path)
        progress.enter("resolve")
        sizes = {p.name: p.stat().st_size for p in path.iterdir() if p.is_file()}
        progress.set_totals(bytes_total=sum(sizes.values()), files_total=len(sizes))
        progress.finish_files()
        return path
    assert config.model_id
    from . import hub

    guard = None if config.distributed else _guard(config)  # each rank holds a part only
    return hub.resolve(config.model_id, config.revision, progress, before_download=guard)[0]


def check_model_dir(model_path: str) -> Path:
    path = Path(model_path).expanduser()
    if not _is_dir(path):
        raise ModelNotFoundError(f"model directory not found: {model_path}", param="model_path")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"not an MLX model directory (no config.json): {model_path}", param="model_path")
    return path


def _guard(config: MlxModelConfig) -> Callable[[int], None]:
    label = repr(config.model_id or config.model_path)
    return lambda weights: memory_guard.check_model_fits(label, weights, config.memory_budget_bytes)


def _context_length(config: dict[str, Any], tokenizer: Any) -> int:
    text_config = config.get("text_config") or {}
    for source in (config, text_config):
        for key in ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length"):
            value = source.get(key)
            if isinstance(value, int) and value > 0:
                return value
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**7:
        return limit
    return _DEFAULT_CONTEXT


def _generation_defaults(path: Path) -> dict[str, Any]:
    gen = path / "generation_config.json"
    if not gen.is_file():
        return {}
    try:
        data = json.loads(gen.read_text())
    except ValueError:
        return {}
    keys = ("temperature", "top_p", "top_k", "min_p")
    return {k: data[k] for k in keys if isinstance(data.get(k), (int, float))}


def load(config: MlxModelConfig, progress: LoadProgress | None = None) -> LoadedModel:
    """Load the model and tokenizer with mlx-lm (the path a user's own model takes), or this
    rank's shard of it when ``config.distributed`` is set, reporting to ``progress`` (whose
    ``cancel()`` stops it between steps and during a download)."""
    progress = progress or LoadProgress()
    path = resolve_model_path(config, progress)
    progress.enter("load")
    if config.model_path and not config.distributed:  # a hub model was checked before its download;
        _guard(config)(memory_guard.weight_bytes_of_dir(path))  # a sharded one holds a part
    vlm = distributed = None
    try:
        if config.distributed:
            model, tokenizer, distributed = _load_sharded(path, config)
        else:
            vlm = _load_multimodal(path, config)
            import mlx_lm

            model, tokenizer = (vlm.language, vlm.tokenizer) if vlm is not None else mlx_lm.load(str(path))
    except (LibMlxError, LoadCancelled):
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load model from {path}: {type(exc).__name__}: {exc}") from None
    progress.check()
    model_config = json.loads((path / "config.json").read_text())
    spec = parser_spec_from_tokenizer(tokenizer, config.family, model_config)
    context_length = _context_length(model_config, tokenizer)
    kv_per_token = memory_guard.kv_bytes_per_token(model_config, memory_guard.activation_bytes(model))
    kv_budget = memory_guard.request_kv_budget(config.max_request_kv_bytes, config.memory_budget_bytes)
    declared_context = context_length
    if kv_per_token > 0 and kv_budget > 0:
        # A request without max_tokens stops where its KV cache would pass the budget.
        context_length = max(1, min(context_length, kv_budget // kv_per_token))
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_path=path,
        model_id=config.model_id or path.name,
        config=model_config,
        context_length=context_length,
        parser_spec=spec,
        generation_defaults=_generation_defaults(path),
        thinking_enabled=config.thinking_enabled,
        vlm=vlm,
        distributed=distributed,
        kv_bytes_per_token=kv_per_token,
        kv_budget_bytes=kv_budget,
        declared_context_length=declared_context,
    )


def _load_sharded(path: Path, config: MlxModelConfig) -> tuple[Any, Any, Any]:
    """This rank's shard of a model served by several processes (``core.sharding``)."""
    from .sharding import load_sharded
    from .vlm import is_multimodal_model_dir

    if is_multimodal_model_dir(path):
        raise ModelLoadError("distributed serving takes text models (mlx-lm's sharded_load); this one has vision/audio towers")
    return load_sharded(path, config.distributed or "auto", config.distributed_backend, config.distributed_timeout_s)


def _load_multimodal(path: Path, config: MlxModelConfig) -> Any:
    """A ``VlmModel`` for a directory with vision/audio towers (through mlx-vlm), else None.
    Without mlx-vlm installed such a model loads text-only through mlx-lm."""
    from .vlm import is_multimodal_model_dir

    if not is_multimodal_model_dir(path):
        return None
    import importlib.util

    if importlib.util.find_spec("mlx_vlm") is None:
        log.warning("%s has vision/audio towers but mlx-vlm is not installed: loading it text-only", path.name)
        return None
    from .vlm import load_vlm

    return load_vlm(path, lazy_encoders=config.lazy_encoders)
