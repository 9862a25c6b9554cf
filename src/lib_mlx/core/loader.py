"""Model loading: a local MLX model directory (or a hub id) -> model, tokenizer, family."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import MlxModelConfig
from ..errors import LibMlxError, ModelLoadError, ModelNotFoundError
from .parsers import Family, ParserSpec, family_of, parser_spec_from_tokenizer

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


def resolve_model_path(config: MlxModelConfig) -> Path:
    """A local directory as given, else the hub id through the local cache (then a download,
    where a network exists). Anything that cannot be found is ``model_not_found``."""
    if config.model_path:
        path = Path(config.model_path).expanduser()
        if not _is_dir(path):
            raise ModelNotFoundError(f"model directory not found: {config.model_path}", param="model_path")
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(
                f"not an MLX model directory (no config.json): {config.model_path}", param="model_path"
            )
        return path
    assert config.model_id
    try:
        from huggingface_hub import snapshot_download

        patterns = ["*.json", "*.safetensors", "*.py", "*.model", "*.tiktoken", "*.txt", "*.jinja"]
        try:
            return Path(
                snapshot_download(
                    config.model_id, revision=config.revision, allow_patterns=patterns, local_files_only=True
                )
            )
        except Exception:
            return Path(snapshot_download(config.model_id, revision=config.revision, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotFoundError(
            f"model {config.model_id!r} is not in the local cache and could not be downloaded "
            f"({type(exc).__name__})",
            param="model_id",
        ) from None


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


def load(config: MlxModelConfig) -> LoadedModel:
    """Load the model and tokenizer with mlx-lm (the path a user's own model takes), or this
    rank's shard of it when ``config.distributed`` is set."""
    path = resolve_model_path(config)
    vlm = distributed = None
    try:
        if config.distributed:
            model, tokenizer, distributed = _load_sharded(path, config)
        else:
            vlm = _load_multimodal(path, config)
            import mlx_lm

            model, tokenizer = (vlm.language, vlm.tokenizer) if vlm is not None else mlx_lm.load(str(path))
    except LibMlxError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"could not load model from {path}: {type(exc).__name__}: {exc}") from None
    model_config = json.loads((path / "config.json").read_text())
    spec = parser_spec_from_tokenizer(tokenizer, config.family, model_config)
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_path=path,
        model_id=config.model_id or path.name,
        config=model_config,
        context_length=_context_length(model_config, tokenizer),
        parser_spec=spec,
        generation_defaults=_generation_defaults(path),
        thinking_enabled=config.thinking_enabled,
        vlm=vlm,
        distributed=distributed,
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
