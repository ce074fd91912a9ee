"""The ASGI application: `create_app(settings)` builds one; `app.main:app` is the default.

`app` is built on first access rather than at import, so importing this
module (as the tests do) reads no environment and starts no thread pool.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import torch
from fastapi import FastAPI
from fastapi.responses import RedirectResponse
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Tracer
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware

from app import __version__
from app.batching import Batcher
from app.codecs import Limits
from app.docs import install_docs, install_playground
from app.endpoint import PoolEndpoint
from app.execution import Executor
from app.gate import Gate
from app.inference import inference_router
from app.inference_grpc import GrpcServer
from app.openapi import schema_builder
from app.operations import OPERATIONS, Operation
from app.pipeline import PlanCache, Runtime
from app.requests import BodyBudget, BodyPace, PaceKeeper
from app.routes import catalogue_router, install_error_handlers, service_router
from app.settings import Settings
from app.statistics import InferenceStatistics
from app.telemetry import AccessLog, Metrics, configure_logging
from app.tracing import provider_from_environment, tracer_of

DESCRIPTION = """\
Every pooling operation of modern deep learning — max, average, Lp, adaptive,
global, fractional and unpooling in 1D, 2D and 3D — computed by PyTorch on the
tensors you send. Send nested JSON, flat JSON, base64 `.npy` or a raw `.npy`
body to `POST /pool/{op}`; `GET /pool` lists the operations and their
parameters. Errors are `application/problem+json`.
"""


def create_app(
    settings: Settings | None = None,
    operations: dict[str, Operation] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> FastAPI:
    """The service. A request passes, top to bottom:

    0. Under `python -m app` (on the uvicorn releases `app.connections` is built
       on), each connection offers the rest of a large declared body straight
       from the socket into the endpoint's buffer, bypassing `receive` (the ASGI
       extension `app.requests.BODY_INTO`). The endpoint takes it only when the
       `receive` it was given is the connection's own: a middleware that wraps
       `receive` turns it off and sees every chunk. Elsewhere (`uvicorn
       app.main:app`, tests) it is not offered and bodies come through `receive`;
    1. CORS, where origins are configured: a browser's preflight is answered
       here, before any key is asked for;
    2. the gate (`app.gate`): request id, API key, security headers, metrics
       and the access log line, for every route;
    3. the pooling endpoint (`app.endpoint`): `POST /pool/{op}` and
       `POST /v2/models/{op}/infer` are answered here, through the pipeline;
    4. FastAPI's router for everything else: docs, `GET /pool`, health,
       metrics, /info and the protocol's metadata.

    FastAPI wraps the list in its own error layer, and middleware added to the
    app later wraps it all, the pooling endpoint included.

    Beside HTTP, the app's lifespan runs the protocol's gRPC server on
    `POOL_GRPC_PORT` (`app.inference_grpc`; 0 turns it off): another door to
    the same pipeline, with its own gate, which HTTP middleware does not wrap.
    """
    settings = settings or Settings()
    # Traces go where the OTEL_* variables say, unless a provider is given (tests give theirs).
    own_provider = tracer_provider is None
    provider = provider_from_environment() if own_provider else tracer_provider
    runtime = build_runtime(settings, operations if operations is not None else OPERATIONS, tracer_of(provider))
    layers = [
        *cors(settings),
        Middleware(Gate, settings.api_keys, runtime.metrics, runtime.access_log, runtime.operations, runtime.tracer),
        Middleware(PoolEndpoint, runtime, settings.retry_after_s),
    ]

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Everything alive now (torch, the operation table, the schemas) lives as long as
        # the process: keep it out of garbage collection, whose full passes would otherwise
        # walk it again and again while requests allocate their lists.
        gc.collect()
        gc.freeze()
        lag = asyncio.get_running_loop().create_task(runtime.metrics.watch_loop())
        grpc_server = GrpcServer(runtime, settings) if settings.grpc_port else None
        if grpc_server is not None:
            runtime.lifecycle.watch(grpc_server.heard)  # unready on a drain; stops when HTTP does
            await grpc_server.start()
            app.state.grpc_port = grpc_server.port
        yield
        if grpc_server is not None:
            await grpc_server.stop()  # its calls in flight finish before the pool closes
        lag.cancel()
        runtime.executor.close()
        runtime.access_log.close()
        if own_provider and provider is not None:
            provider.shutdown()  # the spans still batched are sent

    app = FastAPI(
        title="Pooling service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        middleware=layers,
        # FastAPI's own OpenTelemetry looks up the global providers on every request,
        # which costs more than pooling a small tensor; traces come from OpenTelemetry's
        # ASGI middleware added to the app, which wraps every route.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
        swagger_ui_parameters={"defaultModelsExpandDepth": 0, "tryItOutEnabled": True, "deepLinking": True},
    )
    app.state.runtime = runtime
    install_error_handlers(app)
    install_docs(app)
    install_playground(app)
    app.include_router(service_router(settings, runtime))
    app.include_router(catalogue_router(runtime.operations))
    app.include_router(inference_router(runtime))
    app.openapi = schema_builder(app, runtime.operations, keys=bool(settings.api_keys))  # type: ignore[method-assign]

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/playground")

    return app


def build_runtime(settings: Settings, operations: dict[str, Operation], tracer: Tracer | None = None) -> Runtime:
    configure_logging(settings.log_level)
    executor = Executor(settings)
    metrics = Metrics(str(executor.device), torch.__version__)
    metrics.in_flight.set_function(lambda: min(executor.taken, executor.workers))
    metrics.queued.set_function(lambda: max(0, executor.taken - executor.workers))
    return Runtime(
        operations=operations,
        executor=executor,
        limits=Limits(max_elements=settings.max_elements, max_ndim=settings.max_ndim, max_work=settings.max_work),
        max_body_bytes=settings.max_body_bytes,
        plans=PlanCache(settings.plan_cache_size),
        # Bodies for every compute slot and queue place, and as many more being read.
        bodies=BodyBudget(
            2 * settings.max_body_bytes * (settings.max_concurrency + settings.max_queue), settings.retry_after_s
        ),
        pace=PaceKeeper(BodyPace(settings.body_timeout_s, settings.body_min_rate)),
        inline_max_bytes=settings.inline_max_bytes,
        inline_max_work=settings.inline_max_work,
        metrics=metrics,
        access_log=AccessLog(enabled=logging.getLogger("app.access").isEnabledFor(logging.INFO)),
        statistics=InferenceStatistics(list(operations)),
        batcher=Batcher(executor, settings.max_batch),
        tracer=tracer,
    )


def cors(settings: Settings) -> list[Middleware]:
    if not settings.cors_origins:
        return []
    return [
        Middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            # The protocol's binary extension reads and writes Inference-Header-Content-Length.
            allow_headers=[
                "Authorization",
                "X-API-Key",
                "Content-Type",
                "Accept",
                "X-Request-ID",
                "Inference-Header-Content-Length",
                "Content-Encoding",
            ],
            expose_headers=["X-Request-ID", "X-Random-Seed", "Retry-After", "Inference-Header-Content-Length"],
        )
    ]


def __getattr__(name: str) -> Any:
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
