"""GET /v1/models, GET /v1/models/{id} and GET /health."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse

from ..errors import ModelNotFoundError, NotReadyError
from .context import ServerContext
from .errors import error_response


def _model(request: Request) -> dict[str, object]:
    ctx: ServerContext = request.app.state.ctx
    return {"id": ctx.model_id, "object": "model", "created": request.app.state.created, "owned_by": "local"}


async def list_models(request: Request) -> JSONResponse:
    return JSONResponse({"object": "list", "data": [_model(request)]})


async def retrieve_model(request: Request) -> JSONResponse:
    """The served model by its id (ids may hold slashes: ``org/name``); any other id is a 404
    ``model_not_found`` (``check_model`` also accepts the core's own id)."""
    ctx: ServerContext = request.app.state.ctx
    requested = request.path_params["model_id"]
    if not requested:
        raise ModelNotFoundError("a model id is required: GET /v1/models/{id}", param="model")
    ctx.check_model(requested)
    return JSONResponse(_model(request))


async def health(request: Request) -> JSONResponse:
    ctx: ServerContext = request.app.state.ctx
    if not ctx.ready:
        return error_response(NotReadyError("the model is not ready"))
    body: dict[str, object] = {"status": "ok", "model": ctx.model_id, "in_flight": ctx.core.in_flight}
    state = getattr(ctx.core, "state", None)  # a runtime's model: "ready", or "sleeping" (idle unload)
    if state is not None:
        body["model_status"] = state
    return JSONResponse(body)
