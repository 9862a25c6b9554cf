"""A hub id -> a local model directory, through ``huggingface_hub``, with byte progress.

Order: the local cache first (no request at all); then, where the hub is reachable, one
listing of the revision (sizes of the files the model needs, so that the memory guard can
refuse a model too big *before* downloading it), then each missing file, then a final
``snapshot_download`` that finds everything in place and records the revision and its file list
in the cache (so the next load, even offline, resolves from the cache alone).

Resumable: huggingface_hub 2.4's ``hf_hub_download`` resumes within one call but deletes its
partial file when the call fails. We keep a partial blob at ``blobs/<etag>.incomplete`` in the
cache itself (the name older huggingface_hub releases used for the same purpose) and continue it
with a ``Range`` request through huggingface_hub's own ``http_get``, so a load cancelled by
``unload_model`` -- or a process killed mid-download -- continues where it stopped. The
finished blob is moved into place under the lock huggingface_hub uses for it; ``hf_hub_download``
then sees it and only links it into the snapshot.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import LibMlxError, ModelNotFoundError
from .progress import LoadCancelled, LoadProgress

log = logging.getLogger("lib_mlx.hub")

# The files a model needs: weights, configs, tokenizer files, chat templates (and custom code
# some tokenizers ship). Never ``*.bin``/``*.pt``/``*.gguf``/``*.onnx`` duplicates of the weights.
ALLOW_PATTERNS = [
    "*.safetensors",
    "*.json",
    "*.jinja",
    "*.model",
    "*.tiktoken",
    "*.txt",
    "*.py",
]
# How long the listing of a revision may take before we call the hub unreachable.
METADATA_TIMEOUT_S = 10.0


def resolve(
    model_id: str,
    revision: str | None,
    progress: LoadProgress | None = None,
    *,
    before_download: Callable[[int], None] | None = None,
) -> tuple[Path, dict[str, int]]:
    """The local snapshot directory of ``model_id`` at ``revision``, downloading what is
    missing. Returns the directory and the byte size of each needed file. ``before_download``
    gets the weight bytes first (the memory guard: it raises to refuse the model).

    Raises ``model_not_found`` naming the id when it is neither cached nor downloadable (offline,
    unknown repo or revision), ``LoadCancelled`` when ``progress`` is cancelled."""
    progress = progress or LoadProgress()
    progress.enter("resolve")
    cached = _from_cache(model_id, revision)
    if cached is not None:
        sizes = _local_sizes(cached)
        progress.set_totals(bytes_total=sum(sizes.values()), files_total=len(sizes))
        progress.finish_files()
        if before_download is not None:
            before_download(weight_bytes(sizes))
        return cached, sizes

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise _not_cached(model_id, revision, "offline mode is on (HF_HUB_OFFLINE)")
    sha, sizes = _list_revision(model_id, revision)
    if before_download is not None:
        before_download(weight_bytes(sizes))
    return _download(model_id, revision, sha, sizes, progress), sizes


def weight_bytes(sizes: dict[str, int]) -> int:
    return sum(size for name, size in sizes.items() if name.endswith(".safetensors"))


# --- the cache ---------------------------------------------------------------------------------


def _from_cache(model_id: str, revision: str | None) -> Path | None:
    from huggingface_hub import snapshot_download

    try:
        path = Path(
            snapshot_download(model_id, revision=revision, allow_patterns=ALLOW_PATTERNS, local_files_only=True)
        )
    except Exception:  # noqa: BLE001 - not cached (or only partly): go on to the hub
        return None
    return path if (path / "config.json").is_file() else None


def _local_sizes(path: Path) -> dict[str, int]:
    from huggingface_hub.utils import filter_repo_objects

    names = [p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()]
    return {name: (path / name).stat().st_size for name in filter_repo_objects(names, allow_patterns=ALLOW_PATTERNS)}


def _not_cached(model_id: str, revision: str | None, why: str) -> ModelNotFoundError:
    at = f" at revision {revision!r}" if revision else ""
    return ModelNotFoundError(
        f"model {model_id!r}{at} is not in the local Hugging Face cache and cannot be downloaded: {why}",
        param="model_id",
    )


# --- the hub -----------------------------------------------------------------------------------


def _list_revision(model_id: str, revision: str | None) -> tuple[str, dict[str, int]]:
    """The revision's commit and the sizes of the files we need (one request)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )
    from huggingface_hub.utils import filter_repo_objects

    try:
        info = HfApi().model_info(model_id, revision=revision, files_metadata=True, timeout=METADATA_TIMEOUT_S)
    except RevisionNotFoundError:
        raise ModelNotFoundError(f"model {model_id!r} has no revision {revision!r} on the hub", param="revision") from None
    except GatedRepoError:
        raise _not_cached(model_id, revision, "the repository is gated (log in with a token that has access)") from None
    except RepositoryNotFoundError:
        raise _not_cached(model_id, revision, "no such repository on the hub (or it is private)") from None
    except OfflineModeIsEnabled:
        raise _not_cached(model_id, revision, "offline mode is on (HF_HUB_OFFLINE)") from None
    except HfHubHTTPError as exc:
        raise _not_cached(model_id, revision, f"the hub answered {exc}") from None
    except Exception as exc:  # noqa: BLE001 - huggingface_hub's HTTP client's connection errors
        raise _not_cached(model_id, revision, f"the hub cannot be reached ({type(exc).__name__}: {exc})") from None
    siblings = {s.rfilename: int(s.size or 0) for s in info.siblings or []}
    needed = list(filter_repo_objects(sorted(siblings), allow_patterns=ALLOW_PATTERNS))
    if "config.json" not in needed:
        raise ModelNotFoundError(f"{model_id!r} on the hub is not a model directory (no config.json)", param="model_id")
    assert info.sha
    return info.sha, {name: siblings[name] for name in needed}


def _download(model_id: str, revision: str | None, sha: str, sizes: dict[str, int], progress: LoadProgress) -> Path:
    from huggingface_hub import hf_hub_download, snapshot_download

    progress.enter("download")
    progress.set_totals(bytes_total=sum(sizes.values()), files_total=len(sizes))
    # Small files first: a model whose config or tokenizer is broken fails before the weights.
    for name in sorted(sizes, key=lambda n: (sizes[n], n)):
        progress.check()
        counted = _fetch_blob(model_id, sha, name, progress)
        try:
            hf_hub_download(model_id, name, revision=sha)  # links the blob into the snapshot
        except LoadCancelled:
            raise
        except Exception as exc:  # noqa: BLE001
            raise _download_failed(model_id, name, exc) from None
        progress.file_done(sizes[name], counted_bytes=counted)
    try:
        path = Path(
            snapshot_download(model_id, revision=revision, allow_patterns=ALLOW_PATTERNS, tqdm_class=_silent_tqdm())
        )
    except Exception as exc:  # noqa: BLE001
        raise _download_failed(model_id, "(snapshot)", exc) from None
    progress.finish_files()
    return path


def _fetch_blob(model_id: str, sha: str, name: str, progress: LoadProgress) -> int:
    """Download one file's blob into the cache, continuing a partial one. Returns the bytes
    reported to ``progress`` (resumed bytes included)."""
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url
    from huggingface_hub.file_download import http_get, repo_folder_name
    from huggingface_hub.utils import WeakFileLock, build_hf_headers

    url = hf_hub_url(model_id, name, revision=sha)
    try:
        meta = get_hf_file_metadata(url, timeout=METADATA_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001
        raise _download_failed(model_id, name, exc) from None
    headers = build_hf_headers()
    if urlsplit(meta.location).netloc != urlsplit(url).netloc:
        headers.pop("authorization", None)  # a signed CDN address: no token to a third party
    if not meta.etag:
        return 0
    folder = repo_folder_name(repo_id=model_id, repo_type="model")
    storage = Path(constants.HF_HUB_CACHE) / folder
    blob = storage / "blobs" / meta.etag
    if blob.exists():
        return 0
    blob.parent.mkdir(parents=True, exist_ok=True)
    partial = blob.with_name(blob.name + ".incomplete")
    lock = Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{meta.etag}.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with WeakFileLock(lock):
        if blob.exists():
            return 0
        resume = partial.stat().st_size if partial.exists() else 0
        if meta.size is not None and resume > meta.size:
            partial.unlink()
            resume = 0
        counted = 0
        if resume:
            progress.add_bytes(resume)
            counted = resume

        class _Bar(_ProgressBar):
            sink = progress

        try:
            with partial.open("ab") as f:
                http_get(
                    meta.location,
                    f,
                    resume_size=resume,
                    headers=headers,
                    expected_size=meta.size,
                    tqdm_class=_Bar,  # type: ignore[arg-type]
                )
        except LoadCancelled:
            raise
        except Exception as exc:  # noqa: BLE001 - the partial file stays for the next try
            raise _download_failed(model_id, name, exc) from None
        counted += _Bar.reported
        os.replace(partial, blob)
    return counted


class _ProgressBar:
    """The ``tqdm_class`` handed to ``http_get``: forwards byte counts to a ``LoadProgress``
    (whose ``add_bytes`` raises ``LoadCancelled`` to stop the download). ``initial`` (resumed
    bytes) was reported already."""

    sink: LoadProgress
    reported = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __enter__(self) -> "_ProgressBar":
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def update(self, n: int | float | None = 1) -> None:
        n = int(n or 0)
        type(self).reported += n
        self.sink.add_bytes(n)

    def close(self) -> None:
        pass


def _silent_tqdm() -> Any:
    """A tqdm that draws nothing: our own progress already counted these files."""
    from tqdm import tqdm

    class _Silent(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return _Silent


def _download_failed(model_id: str, name: str, exc: BaseException) -> LibMlxError:
    from ..errors import ModelLoadError

    return ModelLoadError(f"downloading {name} of {model_id!r} failed: {type(exc).__name__}: {exc}")
