"""The ASGI application: `create_app(settings)` builds one; `app.main:app` is the default.

`app` is built on first access rather than at import, so importing this
module (as the tests do) reads no environment and starts no thread pool.
"""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from app import __version__
from app.asgi import PoolEndpoint, route
from app.codecs import Limits
from app.docs import install_docs, install_playground
from app.errors import install_error_handlers
from app.execution import Executor
from app.gate import Gate
from app.pipeline import PlanCache, Runtime
from app.requests import BodyBudget
from app.routes import install_routes
from app.settings import Settings
from app.telemetry import Metrics, configure_logging

DESCRIPTION = """\
Every pooling operation of modern deep learning — max, average, Lp, adaptive,
global, fractional and unpooling in 1D, 2D and 3D — computed by PyTorch on the
tensors you send. Send nested JSON, flat JSON, base64 `.npy` or a raw `.npy`
body to `POST /pool/{op}`; `GET /pool` lists the operations and their
parameters. Errors are `application/problem+json`.
"""


class PoolingApp(FastAPI):
    """FastAPI with the gate (keys, request ids, headers), CORS where configured,
    and the pooling endpoint (`app.asgi`) in front of all its own layers."""

    def build_middleware_stack(self) -> ASGIApp:
        settings: Settings = self.state.settings
        inner: ASGIApp = PoolEndpoint(super().build_middleware_stack(), self.state.runtime)
        if settings.cors_origins:
            inner = CORSMiddleware(
                inner,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "X-API-Key", "Content-Type", "Accept", "X-Request-ID"],
                expose_headers=["X-Request-ID", "X-Random-Seed", "Retry-After"],
            )
        return Gate(inner, settings, self.state.metrics)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if route(scope) is None:
            await super().__call__(scope, receive, send)
            return
        # Pooling requests go straight to the stack: FastAPI's own entry looks up its
        # OpenTelemetry configuration on every request, which costs more than the pooling
        # of a small tensor; the service meters these requests itself.
        if self.root_path:
            scope["root_path"] = self.root_path
        scope["app"] = self
        if self.middleware_stack is None:
            self.middleware_stack = self.build_middleware_stack()
        await self.middleware_stack(scope, receive, send)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    executor = Executor(settings)
    metrics = Metrics(str(executor.device), torch.__version__)
    metrics.in_flight.set_function(lambda: min(executor.taken, executor.workers))
    metrics.queued.set_function(lambda: max(0, executor.taken - executor.workers))
    runtime = Runtime(
        executor=executor,
        limits=Limits(max_elements=settings.max_elements, max_ndim=settings.max_ndim),
        max_body_bytes=settings.max_body_bytes,
        plans=PlanCache(settings.plan_cache_size),
        # Bodies for every compute slot and queue place, and as many more being read.
        bodies=BodyBudget(
            2 * settings.max_body_bytes * (settings.max_concurrency + settings.max_queue), settings.retry_after_s
        ),
        inline_max_bytes=settings.inline_max_bytes,
        inline_max_elements=settings.inline_max_elements,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything alive now (torch, the catalogue, the schemas) lives as long as the
        # process: keep it out of garbage collection, whose full passes would otherwise
        # walk it again and again while requests allocate their lists.
        gc.collect()
        gc.freeze()
        yield
        executor.close()

    app = PoolingApp(
        title="Pooling service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        swagger_ui_parameters={"defaultModelsExpandDepth": 0, "tryItOutEnabled": True, "deepLinking": True},
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.metrics = metrics
    install_error_handlers(app)
    install_docs(app)
    install_playground(app)
    install_routes(app, settings)

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/playground")

    return app


def __getattr__(name: str) -> Any:
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
