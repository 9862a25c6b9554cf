"""The ASGI application: routes, error mapping, access control, CORS."""

from __future__ import annotations

import time

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.routing import Route

from ..errors import LibMlxError
from .chat.serving import create_chat_completion
from .context import DisconnectMiddleware, ServerContext
from .errors import handle_http_error, handle_lib_error, handle_unexpected
from .messages import count_tokens, create_message
from .models import health, list_models, retrieve_model
from .page import page_routes
from .readiness import ReadinessMiddleware
from .request_id import RequestIdMiddleware
from .responses import ResponseStore, create_response, delete_response, get_response
from .security import AccessMiddleware, BodyLimitMiddleware, allowed_hosts
from .tokenize import apply_template, detokenize, tokenize


def build_app(ctx: ServerContext, *, port: int) -> Starlette:
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", retrieve_model, methods=["GET"]),
        Route("/v1/chat/completions", create_chat_completion, methods=["POST"]),
        Route("/v1/responses", create_response, methods=["POST"]),
        Route("/v1/messages", create_message, methods=["POST"]),
        Route("/v1/messages/count_tokens", count_tokens, methods=["POST"]),
        Route("/v1/responses/{response_id}", get_response, methods=["GET"]),
        Route("/v1/responses/{response_id}", delete_response, methods=["DELETE"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/apply-template", apply_template, methods=["POST"]),
    ]
    if ctx.settings.chat_page:
        routes += page_routes()
    middleware = [
        Middleware(AccessMiddleware, api_key=ctx.api_key, hosts=allowed_hosts(ctx.settings.host, port)),
        # Inside access control: a stranger's body is never read, and what is read is capped.
        Middleware(BodyLimitMiddleware, max_body_bytes=ctx.settings.max_body_bytes),
        Middleware(DisconnectMiddleware),
        Middleware(ReadinessMiddleware, core=ctx.core),
    ]
    if ctx.settings.allowed_origins:
        middleware.insert(
            0,
            Middleware(
                CORSMiddleware,
                allow_origins=list(ctx.settings.allowed_origins),
                allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
                allow_headers=["Authorization", "Content-Type", "x-api-key", "anthropic-version", "anthropic-beta"],
                expose_headers=["x-request-id", "request-id"],
            ),
        )
    middleware.insert(0, Middleware(RequestIdMiddleware))
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            LibMlxError: handle_lib_error,
            HTTPException: handle_http_error,
            Exception: handle_unexpected,
        },
    )
    app.state.ctx = ctx
    app.state.responses = ResponseStore()
    app.state.created = int(time.time())
    return app
