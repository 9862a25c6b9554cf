"""The HTTP listener: uvicorn on a background thread with its own event loop.

We bind the socket ourselves so that port 0 resolves to a real port before ``start`` returns
and a busy port fails synchronously (``port_in_use``). ``start``/``stop`` block until the
server is up / fully down.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import secrets
import socket
import threading

import uvicorn

from ..config import MlxServerConfig, ServerInfo
from ..core import InferenceCore
from ..errors import InvalidConfigError, PortInUseError, ServerStartError
from .app import build_app
from .connections import guarded_protocol
from .context import ServerContext

log = logging.getLogger("lib_mlx.server")

_START_TIMEOUT = 15.0
_STOP_TIMEOUT = 15.0


def _bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise InvalidConfigError(f"cannot resolve host {host!r}: {exc}", param="host") from None
    family, _, _, _, address = infos[0]
    # IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted connections only for a listening
    # socket whose proto says TCP. Without it, Nagle + delayed ACK add ~40 ms to every request
    # on a reused (keep-alive) connection.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise PortInUseError(f"port {port} on {host} is already in use", param="port") from None
        raise ServerStartError(f"cannot listen on {host}:{port}: {exc}") from None
    sock.setblocking(False)
    return sock


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


class ServerHandle:
    """One running HTTP server bound to one loaded model."""

    def __init__(self, core: InferenceCore, settings: MlxServerConfig) -> None:
        self.settings = settings
        self.api_key = None if settings.auth == "none" else (settings.api_key or secrets.token_urlsafe(24))
        self.model_id = settings.model_id or core.model_id
        self.ctx = ServerContext(core=core, settings=settings, model_id=self.model_id, api_key=self.api_key)
        self._socket = _bind(settings.host, settings.port)
        self.port = int(self._socket.getsockname()[1])
        app = build_app(self.ctx, port=self.port)
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=3,
            # Our own Host check replaces uvicorn's proxy handling.
            proxy_headers=False,
            server_header=False,
            # Read timeouts and a connection cap (``server.connections``).
            http=guarded_protocol(),
        )
        self._server = uvicorn.Server(config)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._serve, name=f"lib_mlx-http-{self.port}", daemon=True)
        self._failed: BaseException | None = None
        self._thread.start()
        deadline = threading.Event()
        while not self._server.started and self._thread.is_alive():
            deadline.wait(0.01)
        if not self._server.started:
            self._socket.close()
            raise ServerStartError(f"the HTTP server did not start: {self._failed}")

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # noqa: BLE001 - reported to start()
            self._failed = exc
            log.exception("HTTP server thread failed")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._socket])

    @property
    def info(self) -> ServerInfo:
        host = self.settings.host
        return ServerInfo(
            host=host,
            port=self.port,
            base_url=f"http://{_url_host(host)}:{self.port}",
            model_id=self.model_id,
            status="running" if self.running else "stopped",
            api_key=self.api_key,
        )

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._server.should_exit

    def stop(self) -> None:
        """End open streams (their generations are cancelled), then shut the listener down."""
        if self._loop is not None and self._thread.is_alive():
            try:
                self._loop.call_soon_threadsafe(self.ctx.cancel_all)
            except RuntimeError:
                pass
        self.ctx.ready = False
        self._server.should_exit = True
        self._thread.join(_STOP_TIMEOUT)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(_STOP_TIMEOUT)
        try:
            self._socket.close()
        except OSError:
            pass
