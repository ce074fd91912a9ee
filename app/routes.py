"""FastAPI's routes: the service routes (`/healthz`, `/readyz`, `/metrics`, `/info`)
and `GET /pool`, the operation table as JSON, and the handlers that answer the
framework's own errors as problem+json. The pooling itself is served by the
endpoint in front of FastAPI's router (`app.endpoint`).
"""

from __future__ import annotations

from typing import Any

import orjson
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import PlainTextResponse, Response

from app import __version__
from app.dtypes import DTYPES
from app.errors import ProblemError, cut
from app.negotiation import JSON
from app.operations import Operation
from app.params import TENSOR_SCHEMA
from app.paths import is_protocol
from app.pipeline import Runtime
from app.responses import internal_error, problem_of, problem_response
from app.settings import Settings


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type=JSON)


def _parameter_rows(operation: Operation) -> list[dict[str, Any]]:
    schema = operation.params.model_json_schema()
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema["properties"].items():
        info = operation.params.model_fields[name]
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        rows.append(
            {
                "name": name,
                "required": name in required,
                "default": default,
                "schema": {k: v for k, v in prop.items() if k not in ("description", "title", "default")},
                "description": prop.get("description", ""),
            }
        )
    return rows


def catalogue_listing(operations: dict[str, Operation]) -> dict[str, Any]:
    return {
        "operations": [
            {
                "name": operation.name,
                "family": operation.family.name,
                "rank": operation.rank,
                "reference": operation.reference,
                "summary": operation.family.summary,
                "meaning": operation.family.meaning,
                "dtypes": list(operation.family.dtypes),
                "returns_indices": operation.family.has_indices,
                "tensors": ["input", *operation.family.extra_tensors],
                "parameters": _parameter_rows(operation),
                "examples": operation.family.examples(operation.rank),
            }
            for operation in operations.values()
        ],
        "dtypes": list(DTYPES),
        "tensor": TENSOR_SCHEMA,
    }


def catalogue_router(operations: dict[str, Operation]) -> APIRouter:
    router = APIRouter()
    listing = catalogue_listing(operations)  # built once: it depends only on the table

    @router.get(
        "/pool", summary="List every operation with its parameters", operation_id="pool-list", tags=["catalogue"]
    )
    async def list_operations() -> Response:
        return json_response(listing)

    return router


def service_router(settings: Settings, runtime: Runtime) -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get("/healthz", summary="Alive", operation_id="healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Ready to compute", operation_id="readyz")
    async def readyz() -> Response:
        if runtime.lifecycle.draining:
            return json_response({"status": "draining"}, 503)
        return json_response({"status": "ready"})

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        operation_id="metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # HEAD as monitoring checks send it (the server sends the headers alone); one operation in the schema.
    router.add_api_route("/metrics", metrics, methods=["HEAD"], include_in_schema=False)

    @router.get("/info", summary="Version, device and limits", operation_id="info")
    async def info() -> dict[str, Any]:
        return {
            "version": __version__,
            "torch_version": torch.__version__,
            "device": str(runtime.executor.device),
            "auth": bool(settings.api_keys),
            "limits": {
                "max_body_bytes": settings.max_body_bytes,
                "max_elements": settings.max_elements,
                "max_ndim": settings.max_ndim,
                "max_concurrency": settings.max_concurrency,
            },
        }

    return router


def install_error_handlers(app: FastAPI) -> None:
    """The framework's own errors, and ours raised in its routes, as problem+json."""

    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_of(exc, v2=is_protocol(request.url.path))

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail
        if exc.status_code == 404:
            detail = f"nothing at {cut(request.url.path)}; GET /pool lists the operations"
        elif exc.status_code == 405:
            detail = f"{cut(request.method, 20)} is not allowed on {cut(request.url.path)}"
        v2 = is_protocol(request.url.path)
        return problem_response(exc.status_code, str(detail), headers=dict(exc.headers or {}), v2=v2)

    async def on_request_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e["loc"]), "msg": str(e["msg"]), "type": e["type"]} for e in exc.errors()]
        return problem_response(422, "the request is invalid", errors)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # A bug, never client input: log it, and say nothing of its internals.
        return internal_error(request.scope, exc)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(Exception, on_unexpected)
