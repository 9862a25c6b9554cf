"""Shared fixtures: tiny real-architecture models built once per run, runtimes, served models.

Models come from ``lib_mlx.tiny_models`` (random weights, offline tokenizer, real chat
template); scripted chains make greedy decoding emit an exact text through the real path.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hardening_support import Served

from lib_mlx import LibMlxRuntime, MlxModelConfig, MlxServerConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class ModelFactory:
    """Builds each distinct model once per test session and reuses its directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._built: dict[str, Path] = {}

    def __call__(
        self, family: str, *, chains: Mapping[str, Sequence[str]] | None = None, **kwargs: Any
    ) -> Path:
        from lib_mlx.tiny_models import build_model

        key_src = json.dumps([family, chains or {}, kwargs], sort_keys=True, default=str)
        key = hashlib.sha1(key_src.encode()).hexdigest()[:12]
        if key not in self._built:
            out = self.root / f"{family}-{key}"
            self._built[key] = Path(build_model(family, out, chains=chains, **kwargs))
        return self._built[key]


@pytest.fixture(scope="session")
def make_model(tmp_path_factory: pytest.TempPathFactory) -> ModelFactory:
    return ModelFactory(tmp_path_factory.mktemp("models"))


@pytest.fixture
def runtime() -> Iterator[LibMlxRuntime]:
    rt = LibMlxRuntime()
    yield rt
    rt.close()


@contextlib.contextmanager
def serving(
    runtime: LibMlxRuntime, model_dir: Path, *, thinking_enabled: bool = True, **server: Any
) -> Iterator[Served]:
    handle = runtime.load_model(MlxModelConfig(str(model_dir), thinking_enabled=thinking_enabled))
    try:
        info = runtime.start_server(handle, MlxServerConfig(**server))
        yield Served(runtime, handle, info)
    finally:
        with contextlib.suppress(Exception):
            runtime.unload_model(handle)


@pytest.fixture
def serve(runtime: LibMlxRuntime):
    """``with serve(model_dir, queue_limit=2) as s: s.client()...``"""

    def _serve(model_dir: Path, **kwargs: Any):
        return serving(runtime, model_dir, **kwargs)

    return _serve
