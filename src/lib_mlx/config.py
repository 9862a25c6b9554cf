"""Lifecycle configuration and results: the JSON schemas of README's "Lifecycle JSON schemas".

The config classes are pydantic dataclasses: positional construction from Python
(``MlxModelConfig("/path/to/model")``) and strict validation of JSON from the ABI alike.
Unknown keys in JSON are ignored so that older libraries accept newer hosts' configs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Annotated, Any, Literal, TypeVar

import pydantic
from pydantic import BeforeValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from ._text import lone_surrogate_at
from .errors import InvalidConfigError, InvalidJsonError

log = logging.getLogger("lib_mlx")

_STRICT = ConfigDict(strict=True, extra="ignore")

DEFAULT_PROMPT_CACHE_BYTES = 1 << 30
PROMPT_CACHE_BYTES_ENV = "LIB_MLX_PROMPT_CACHE_BYTES"


def _list_to_tuple(value: Any) -> Any:
    """JSON has lists, not tuples: a strict tuple field takes a JSON array too."""
    return tuple(value) if isinstance(value, list) else value


# A tuple of strings from Python, or a JSON array of strings from the ABI.
StrTuple = Annotated[tuple[str, ...], BeforeValidator(_list_to_tuple)]


def check_api_key(value: str | None) -> str | None:
    """A bearer token travels in an HTTP header: printable ASCII without surrounding spaces
    (anything else is accepted here but could never authenticate)."""
    if value is None:
        return None
    if not value or value != value.strip():
        raise ValueError("api_key must not be empty or have leading/trailing whitespace")
    if not all(0x21 <= ord(c) <= 0x7E for c in value):
        raise ValueError("api_key must be printable ASCII without spaces (it is sent in an HTTP header)")
    return value


@pydantic_dataclass(config=_STRICT, frozen=True)
class MlxModelConfig:
    """What to load. ``model_path`` is a local MLX model directory; with only ``model_id`` the
    Hugging Face cache (or a download, where a network exists) resolves it."""

    model_path: str | None = None
    model_id: str | None = None
    revision: str | None = None
    thinking_enabled: bool = True
    lazy_encoders: bool = True
    # KV-cache quantization (``core.kv_quant``): 4 or 8 bits in groups along the head dimension,
    # from the ``quantized_kv_start``-th token a cache holds; sliding-window layers stay full
    # precision. None keeps full-precision caches.
    kv_bits: Literal[4, 8] | None = None
    kv_group_size: Literal[32, 64, 128] = 64
    quantized_kv_start: int = Field(default=0, ge=0)
    # A prompt cache on disk that survives restarts (``core.disk_cache``): off unless a
    # directory is given; least recently used entries go past ``prompt_cache_disk_bytes``.
    prompt_cache_dir: str | None = None
    prompt_cache_disk_bytes: int = Field(default=8 << 30, ge=0)
    # Speculative decoding for single streams (``core.speculative``): a draft model sharing
    # the vocabulary, or prompt lookup (n-gram drafts from the prompt and output, no model).
    draft_model_path: str | None = None
    num_draft_tokens: int = Field(default=4, ge=1, le=32)
    prompt_lookup: bool = False
    prompt_lookup_ngram: int = Field(default=3, ge=1, le=8)
    # The KV caches of earlier prompts kept for reuse, in bytes (0 turns reuse off). The
    # environment variable LIB_MLX_PROMPT_CACHE_BYTES overrides it (``with_env_overrides``).
    prompt_cache_bytes: int = Field(default=DEFAULT_PROMPT_CACHE_BYTES, ge=0)
    # Sharded over the ranks that ``mlx.launch`` started (``core.sharding``): "tensor",
    # "pipeline", or "auto" (what the architecture supports, tensor first); None: one process.
    distributed: Literal["auto", "tensor", "pipeline"] | None = None
    distributed_backend: Literal["any", "ring", "mpi", "nccl", "jaccl"] = "any"
    # A step that the other ranks do not finish within this many seconds fails the open
    # requests and the model (a rank that hangs), instead of hanging rank 0 with it.
    distributed_timeout_s: float = Field(default=60.0, gt=0)
    # The model family (``core.parsers``: "qwen3", "gemma4", ...) for a repository that
    # detection misses; None detects it from the template and vocabulary.
    family: str | None = None
    # How ``load_model`` behaves: False returns at once with status "loading"; the load runs in
    # the background and ``server_status`` reports its progress.
    wait: bool = True
    # Memory guard (README "Memory"): the memory this model may count on (default: what MLX can
    # use on this device) and the KV-cache bytes one request may take (default: what is left
    # after the load, less a margin).
    memory_budget_bytes: int | None = Field(default=None, ge=1)
    max_request_kv_bytes: int | None = Field(default=None, ge=1)

    def __post_init__(self) -> None:
        if not self.model_path and not self.model_id:
            raise ValueError("one of model_path or model_id is required")


@pydantic_dataclass(config=_STRICT, frozen=True)
class MlxServerConfig:
    """How to serve a loaded model over HTTP."""

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535)
    model_id: str | None = None
    queue_limit: int = Field(default=1, ge=1, le=1024)
    # Access control: a random bearer token per server unless api_key is given or auth="none".
    api_key: str | None = None
    auth: Literal["bearer", "none"] = "bearer"
    allowed_origins: StrTuple = ()
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    # One medium (a decoded image/audio payload, or a multipart file part); never above
    # max_body_bytes.
    max_media_part_bytes: int = Field(default=20 * 1024 * 1024, ge=1024)
    allow_remote_media: bool = False
    chat_page: bool = True
    # On a handle still loading: True waits for the model; False starts listening at once and
    # answers 503 (Retry-After) until the model is ready.
    wait: bool = True
    # Free the model's weights and caches after this many seconds without a request (status
    # "sleeping"); the next request loads it again. None: never.
    idle_unload_s: float | None = Field(default=None, gt=0)

    @pydantic.field_validator("api_key")
    @classmethod
    def _api_key(cls, value: str | None) -> str | None:
        return check_api_key(value)


@dataclass(frozen=True)
class ServerInfo:
    host: str
    port: int
    base_url: str
    model_id: str
    status: str
    api_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class MemoryInfo:
    active_bytes: int
    peak_bytes: int
    cache_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_C = TypeVar("_C")


def with_env_overrides(config: MlxModelConfig, environ: Mapping[str, str] | None = None) -> MlxModelConfig:
    """``config`` with the operator's environment applied: ``LIB_MLX_PROMPT_CACHE_BYTES`` (an
    integer) replaces ``prompt_cache_bytes``. Read once, where a model is loaded
    (``LibMlxRuntime.load_model``); an unusable value is ignored with a warning."""
    env = os.environ if environ is None else environ
    value = env.get(PROMPT_CACHE_BYTES_ENV, "").strip()
    if not value:
        return config
    try:
        size = int(value)
        if size < 0:
            raise ValueError(value)
    except ValueError:
        log.warning("ignoring %s=%r: not a byte count", PROMPT_CACHE_BYTES_ENV, value)
        return config
    return dataclasses.replace(config, prompt_cache_bytes=size)


def parse_config(cls: type[_C], config_json: str | bytes | None, *, required: bool = True) -> _C:
    """Parse a JSON config string into ``cls``, raising ``invalid_json``/``invalid_config``."""
    if config_json is None or (isinstance(config_json, (str, bytes)) and not config_json.strip()):
        if required:
            raise InvalidConfigError("a JSON config object is required")
        return cls()
    try:
        data = json.loads(config_json)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidJsonError(f"config is not valid JSON: {exc}") from None
    except RecursionError:
        raise InvalidJsonError("config is nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidConfigError(f"config must be a JSON object, not {type(data).__name__}")
    where = lone_surrogate_at(data)
    if where is not None:
        raise InvalidJsonError(f"{where}: the string holds a lone surrogate escape (not valid UTF-8)", param=where)
    return config_from_dict(cls, data)



def config_from_dict(cls: type[_C], data: dict[str, Any]) -> _C:
    try:
        return cls(**data)  # type: ignore[call-arg]
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "config"
        raise InvalidConfigError(f"{where}: {first.get('msg')}", param=where) from None
    except (TypeError, ValueError) as exc:
        raise InvalidConfigError(str(exc)) from None
