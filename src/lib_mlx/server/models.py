"""GET /v1/models and GET /health."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import NotReadyError
from .context import ServerContext
from .errors import error_response


async def list_models(request: Request) -> JSONResponse:
    ctx: ServerContext = request.app.state.ctx
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"id": ctx.model_id, "object": "model", "created": request.app.state.created, "owned_by": "local"}
            ],
        }
    )


async def health(request: Request) -> JSONResponse:
    ctx: ServerContext = request.app.state.ctx
    if not ctx.ready:
        return error_response(NotReadyError("the model is not ready"))
    return JSONResponse({"status": "ok", "model": ctx.model_id, "in_flight": ctx.core.in_flight})
