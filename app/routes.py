"""HTTP routes, generated from the catalogue: one `POST /pool/{op}` per operation,
`GET /pool`, and the service routes (`/healthz`, `/readyz`, `/info`).

Routes only connect the pipeline to HTTP; request bodies are read by the
pipeline, so the OpenAPI request schemas are declared here for the docs only.
"""

from __future__ import annotations

from typing import Any

import orjson
import torch
from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from app import __version__, lifecycle
from app.catalogue import CATALOGUE, OpSpec
from app.codecs import DTYPES
from app.errors import PROBLEM_JSON, NotFound
from app.gate import needs_key
from app.inference import inference_router
from app.params import TENSOR_SCHEMA, TensorField
from app.pipeline import Runtime
from app.settings import Settings


def json_response(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


class FieldError(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problem(BaseModel):
    """An error, as RFC 9457 problem details."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[FieldError] | None = None


class PoolResponse(BaseModel):
    op: str = Field(description="The operation that ran.")
    shape: list[int] = Field(description="The output's shape.")
    dtype: str = Field(description="The output's dtype (the input's).")
    output: TensorField | None = Field(description="The pooled tensor, in the requested encoding; null for a dry run.")
    indices: TensorField | None = Field(
        description="int64 argmax positions, shaped as the output, when return_indices is true; else null."
    )
    device: str = Field(description="Where the pooling ran.")
    random_seed: int | None = Field(None, description="Fractional ops only: the seed that was used.")
    padding: list[list[int]] | None = Field(
        None, description="Dry runs only: the effective [begin, end] padding per spatial dimension, or null."
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "model": Problem, "content": {PROBLEM_JSON: {}}}
    for status, text in {
        400: "The body or a tensor cannot be decoded",
        404: "Unknown operation",
        406: "Accept names nothing the service produces",
        413: "Body, tensor or result over a limit",
        415: "Unsupported Content-Type",
        422: "Invalid parameters, or parameters invalid for this tensor",
    }.items()
}

BINARY_NOTE = (
    "\n\nBinary form: send the raw `.npy` as the body with `Content-Type: application/x-npy` "
    "(or an uncompressed `.npz` with members `input`{extra} as `application/x-npz`) and the parameters as "
    "query parameters (`?kernel_size=3,2&return_indices=true`). The answer follows `Accept`: "
    "`application/x-npz` (default for binary requests), `application/x-npy` (the output alone) "
    "or `application/json`."
)


def _describe(spec: OpSpec) -> str:
    family = spec.family
    extra = "".join(f" and `{name}`" for name in family.extra_tensors)
    dtypes = ", ".join(family.dtypes)
    text = (
        f"{family.summary} over {spec.rank} spatial dimension{'s' if spec.rank > 1 else ''}, "
        f"as `{spec.reference}`.\n\n{family.meaning}\n\nInput layout `(N, C, *spatial)` or unbatched "
        f'`(C, *spatial)`, or `data_format: "channels_last"`. Dtypes: {dtypes}.'
    )
    if family.has_indices:
        text += " With `return_indices`, `indices` holds the argmax positions (flat within each spatial plane)."
    return text + BINARY_NOTE.format(extra=extra)


def _request_body(spec: OpSpec) -> dict[str, Any]:
    schema = spec.params.model_json_schema()
    binary = {"schema": {"type": "string", "format": "binary"}}
    json_content: dict[str, Any] = {"schema": schema}
    examples = spec.family.examples(spec.rank)
    if examples:
        json_content["examples"] = examples
    return {
        "required": True,
        "content": {"application/json": json_content, "application/x-npy": binary, "application/x-npz": binary},
    }


async def unrouted_pool(request: Request) -> Response:
    """`app.asgi.PoolEndpoint` answers every POST here before routing; this route
    exists so that other methods on the path get a 405."""
    raise NotFound(f"unknown operation {request.path_params['op']!r}; GET /pool lists the operations")


async def _described_only(request: Request) -> Response:  # pragma: no cover - never routed
    raise NotImplementedError


def _parameter_rows(spec: OpSpec) -> list[dict[str, Any]]:
    schema = spec.params.model_json_schema()
    required = set(schema.get("required", []))
    rows = []
    for name, prop in schema["properties"].items():
        info = spec.params.model_fields[name]
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


def catalogue_listing() -> dict[str, Any]:
    return {
        "operations": [
            {
                "name": spec.name,
                "family": spec.family.name,
                "rank": spec.rank,
                "reference": spec.reference,
                "summary": spec.family.summary,
                "meaning": spec.family.meaning,
                "dtypes": list(spec.family.dtypes),
                "returns_indices": spec.family.has_indices,
                "tensors": ["input", *spec.family.extra_tensors],
                "parameters": _parameter_rows(spec),
                "examples": spec.family.examples(spec.rank),
            }
            for spec in CATALOGUE.values()
        ],
        "dtypes": list(DTYPES),
        "tensor": TENSOR_SCHEMA,
    }


def catalogue_router() -> APIRouter:
    router = APIRouter()
    listing = catalogue_listing()  # built once: it depends only on the catalogue

    @router.get(
        "/pool", summary="List every operation with its parameters", operation_id="pool-list", tags=["catalogue"]
    )
    async def list_operations() -> Response:
        return json_response(listing)

    return router


def operation_docs() -> list[APIRoute]:
    """One OpenAPI operation per catalogue op, with its parameters and examples.

    They describe what `dispatch` serves and are never routed themselves."""
    router = APIRouter()
    for spec in CATALOGUE.values():
        router.add_api_route(
            f"/pool/{spec.name}",
            _described_only,
            methods=["POST"],
            operation_id=f"pool-{spec.name}",
            summary=f"{spec.family.summary} ({spec.rank}D)",
            description=_describe(spec),
            tags=[spec.family.name],
            response_class=JSONResponse,  # JSON first: the docs page's Accept follows the first media type
            responses={
                200: {
                    "description": "The pooled tensor",
                    "model": PoolResponse,
                    "content": {
                        "application/x-npy": {"schema": {"type": "string", "format": "binary"}},
                        "application/x-npz": {"schema": {"type": "string", "format": "binary"}},
                    },
                },
                **ERROR_RESPONSES,
            },
            openapi_extra={"requestBody": _request_body(spec)},
        )
    return [route for route in router.routes if isinstance(route, APIRoute)]


def service_router(settings: Settings) -> APIRouter:
    router = APIRouter(tags=["service"])

    @router.get("/healthz", summary="Alive", operation_id="healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @router.get("/readyz", summary="Ready to compute", operation_id="readyz")
    async def readyz(request: Request) -> Response:
        if lifecycle.draining:
            return json_response({"status": "draining"}, 503)
        ready = getattr(request.app.state, "runtime", None) is not None
        return json_response({"status": "ready" if ready else "starting"}, 200 if ready else 503)

    @router.get(
        "/metrics",
        summary="Prometheus metrics",
        operation_id="metrics",
        response_class=PlainTextResponse,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
    )
    async def metrics(request: Request) -> Response:
        registry = request.app.state.metrics.registry
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/info", summary="Version, device and limits", operation_id="info")
    async def info(request: Request) -> dict[str, Any]:
        runtime: Runtime = request.app.state.runtime
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


def install_routes(app: FastAPI, settings: Settings) -> None:
    app.router.routes.insert(0, Route("/pool/{op}", unrouted_pool, methods=["POST"], name="pool"))
    app.include_router(service_router(settings))
    app.include_router(catalogue_router())
    app.include_router(inference_router())
    documented = operation_docs()

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=[*app.routes, *documented]
            )
            if settings.api_keys:
                # The docs page's Authorize button: either header carries the key.
                schema.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"},
                    "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                }
                for path, operations in schema["paths"].items():
                    for method, operation in operations.items():
                        if needs_key(method.upper(), path):
                            operation["security"] = [{"bearer": []}, {"apiKey": []}]
                            operation["responses"]["401"] = {
                                "description": "An API key is configured and the request lacks a valid one"
                            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
