"""A local stand-in of the Hugging Face Hub's HTTP API, enough for the real ``huggingface_hub``
client's downloads (``model_info``, ``snapshot_download``, ``hf_hub_download``):

- ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true``): the commit and siblings
- ``GET /api/models/{repo}/tree/{rev}``: the file listing ``snapshot_download`` caches
- ``HEAD``/``GET /{repo}/resolve/{rev}/{file}``: ``ETag``, ``X-Repo-Commit``,
  ``Content-Length``, ``Range`` requests (206 + ``Content-Range``)

Unknown repos and revisions answer 404 with the ``X-Error-Code`` the hub sends. Test knobs:
``cut_after`` (send only the first N bytes of a file's next GET, then drop the connection),
``throttle_s`` (a pause after each 64 KiB sent), ``declared_sizes`` (sizes the listing claims)
and ``requests`` (everything asked, to assert on).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

SHA = "0123456789abcdef0123456789abcdef01234567"
REPO = "tiny/qwen3"
WEIGHTS = "model.safetensors"
CHUNK = 64 * 1024


@dataclass
class Repo:
    files: dict[str, bytes]
    sha: str = SHA


@dataclass
class HubStandIn:
    repos: dict[str, Repo] = field(default_factory=dict)
    cut_after: dict[str, int] = field(default_factory=dict)
    throttle_s: float = 0.0
    declared_sizes: dict[str, int] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)

    def add_repo(self, repo_id: str, model_dir: Path) -> Repo:
        files = {p.relative_to(model_dir).as_posix(): p.read_bytes() for p in sorted(model_dir.rglob("*")) if p.is_file()}
        self.repos[repo_id] = Repo(files)
        return self.repos[repo_id]

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            standin = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def gets(self, name: str) -> list[str | None]:
        """The Range headers of the GETs of a file (None: from the start)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith("/" + name)]


def etag(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    standin: HubStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    # routing ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._route("GET")

    def do_HEAD(self) -> None:
        self._route("HEAD")

    def _route(self, method: str) -> None:
        path = self.path.split("?", 1)[0]
        self.standin.requests.append((method, path, self.headers.get("Range")))
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/revision/([^/]+)", path):
            return self._info(*m.groups())
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)", path):
            return self._info(m.group(1), "main")
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)", path):
            return self._tree(*m.groups())
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._file(method, *m.groups())
        self._json({"error": "not found"}, 404)

    def _repo(self, repo_id: str, rev: str) -> Repo | None:
        repo = self.standin.repos.get(repo_id)
        if repo is None:
            self._json({"error": "Repository not found"}, 404, {"X-Error-Code": "RepoNotFound"})
            return None
        if rev not in ("main", repo.sha):
            self._json({"error": "Invalid rev id"}, 404, {"X-Error-Code": "RevisionNotFound"})
            return None
        return repo

    # endpoints ----------------------------------------------------------------------------
    def _info(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        siblings = [
            {"rfilename": name, "size": self.standin.declared_sizes.get(name, len(data)), "blobId": etag(data)[:40]}
            for name, data in repo.files.items()
        ]
        self._json({"_id": repo_id, "id": repo_id, "modelId": repo_id, "sha": repo.sha, "private": False, "siblings": siblings})

    def _tree(self, repo_id: str, rev: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        self._json([{"type": "file", "path": n, "size": len(d), "oid": etag(d)[:40]} for n, d in repo.files.items()])

    def _file(self, method: str, repo_id: str, rev: str, name: str) -> None:
        repo = self._repo(repo_id, rev)
        if repo is None:
            return
        data = repo.files.get(name)
        if data is None:
            self._json({"error": "Entry not found"}, 404, {"X-Error-Code": "EntryNotFound"})
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and (m := re.fullmatch(r"bytes=(\d+)-", rng.strip())):
            start = int(m.group(1))
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("ETag", f'"{etag(data)}"')
        self.send_header("X-Repo-Commit", repo.sha)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if method == "HEAD":
            return
        cut = self.standin.cut_after.pop(name, None)
        sent = 0
        limit = len(body) if cut is None else min(cut, len(body))
        while sent < limit:
            piece = body[sent : min(sent + CHUNK, limit)]
            try:
                self.wfile.write(piece)
                self.wfile.flush()
            except OSError:
                return
            sent += len(piece)
            if self.standin.throttle_s:
                time.sleep(self.standin.throttle_s)
        if cut is not None:
            self.close_connection = True  # the rest never comes: the client sees a short body

    def _json(self, body: Any, status: int = 200, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_model) -> Iterator[HubStandIn]:
    """The stand-in serving a tiny Qwen3 as ``tiny/qwen3``; huggingface_hub pointed at it (what
    ``HF_ENDPOINT``/``HF_HUB_CACHE`` set when the process starts), online, with an empty cache
    and 64 KiB download chunks (10 MiB by default: a tiny file would come in one piece)."""
    from huggingface_hub import constants

    standin = HubStandIn()
    standin.add_repo(REPO, make_model("qwen3"))
    url = standin.start()
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)
    yield standin
    standin.stop()


