"""The built-in chat page: ``GET /`` and its three static files, plus the page's config.

Plain HTML/CSS/JS shipped in ``lib_mlx/static`` (no build step, nothing from a CDN). The page is
public -- it holds no secret; the token travels in the URL fragment (``/#token=...``), which
browsers never send, and the page keeps it in memory and sends it as ``Authorization: Bearer``
to ``/v1/*`` like any other client. A strict Content-Security-Policy keeps the page from loading
or talking to anything but this server.

``MlxServerConfig(chat_page=False)`` leaves all of these routes out.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from .context import ServerContext
from .media import accepted_media

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "connect-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",  # blob: for previews of attached images (local, never fetched)
        "media-src 'self' blob:",  # and of attached audio
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)

_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-cache",
}

# path -> (file in lib_mlx/static, media type)
_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/static/favicon.svg": ("favicon.svg", "image/svg+xml"),
}


@lru_cache(maxsize=None)
def _read(name: str) -> bytes:
    return resources.files("lib_mlx").joinpath("static", name).read_bytes()


def _file_endpoint(name: str, media_type: str):
    async def endpoint(request: Request) -> Response:
        return Response(_read(name), media_type=media_type, headers=_HEADERS)

    endpoint.__name__ = f"page_{name.replace('.', '_')}"
    return endpoint


def media_capabilities(ctx: ServerContext) -> list[str]:
    """The media kinds ("image", "audio") this server's model accepts (multipart uploads):
    the core's ``capabilities``, as the media layer reads them (``accepted_media``)."""
    return sorted(kind for kind in accepted_media(ctx.core) if kind in ("image", "audio"))


def page_config(ctx: ServerContext) -> dict[str, Any]:
    """What the page needs before its first request; nothing secret (``/health`` already
    names the model)."""
    capabilities = ctx.core.capabilities
    return {
        "model": ctx.model_id,
        "auth": ctx.api_key is not None,
        "media": media_capabilities(ctx),
        "thinking": {
            "supported": capabilities.thinking,
            "default": capabilities.thinking_default,
        },
    }


async def config_endpoint(request: Request) -> JSONResponse:
    ctx: ServerContext = request.app.state.ctx
    return JSONResponse(page_config(ctx), headers={"Cache-Control": "no-store"})


def page_routes() -> list[Route]:
    """The page's routes, for ``build_app`` when ``settings.chat_page`` is on."""
    routes = [Route(path, _file_endpoint(name, media), methods=["GET"]) for path, (name, media) in _FILES.items()]
    routes.append(Route("/page/config.json", config_endpoint, methods=["GET"]))
    return routes


def page_url(base_url: str, api_key: str | None) -> str:
    """The page's address; the token rides in the fragment, which no browser sends (the page
    reads it, drops it from the address bar and keeps it in memory)."""
    return f"{base_url}/" + (f"#token={quote(api_key, safe='')}" if api_key else "")
