"""lib_mlx: run a local MLX language model and hand it to apps.

Lifecycle over a tiny JSON ABI (``LibMlxRuntime`` in-process, ``lib_mlx.abi`` as JSON, and the C
library declared in ``lib_mlx.h``); inference over an OpenAI-compatible HTTP server on loopback.
"""

from __future__ import annotations

from .config import MlxModelConfig, MlxServerConfig, ServerInfo
from .errors import LibMlxError
from .runtime import LibMlxRuntime

__all__ = ["LibMlxError", "LibMlxRuntime", "MlxModelConfig", "MlxServerConfig", "ServerInfo"]
__version__ = "0.1.0"
