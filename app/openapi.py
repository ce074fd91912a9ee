"""The OpenAPI schema: FastAPI's routes as FastAPI describes them, and the pooling
endpoint's paths (`POST /pool/{op}` per op and `POST /v2/models/{op}/infer`),
which are served in front of FastAPI's router and described here, from the
operation table, by this one mechanism."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, Field
from pydantic.json_schema import models_json_schema

from app.dtypes import BY_PROTOCOL
from app.negotiation import JSON, NPY, NPZ, OCTET_STREAM, PROBLEM_JSON
from app.operations import Operation
from app.params import TensorField
from app.paths import V2_INFER, V2_MODELS, VERSION, VERSIONED, needs_key, pool_path


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
    error: str | None = Field(None, description="The Open Inference Protocol's error message (its routes only).")


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


POOL_ERRORS = {
    400: "The body or a tensor cannot be decoded",
    404: "Unknown operation",
    406: "Accept names nothing the service produces",
    413: "Body, tensor or result over a limit",
    415: "Unsupported Content-Type",
    422: "Invalid parameters, or parameters invalid for this tensor, or work over the cap",
    503: "Refused before any work: every compute slot and queue place taken, or shutting down",
    504: "The computation ran past the request's time limit",
}
INFER_ERRORS = {
    400: "The request does not follow the protocol, or names an unknown parameter, input or output",
    404: "No such model",
    413: "Body, tensor or result over a limit",
    422: "Parameters invalid for this tensor, or work over the cap",
    503: "Refused before any work: every compute slot and queue place taken, or shutting down",
    504: "The computation ran past the request's time limit",
}
BINARY = {"schema": {"type": "string", "format": "binary"}}
BINARY_NOTE = (
    "\n\nBinary form: send the raw `.npy` as the body with `Content-Type: application/x-npy` "
    "(or an uncompressed `.npz` with members `input`{extra} as `application/x-npz`) and the parameters as "
    "query parameters (`?kernel_size=3,2&return_indices=true`; a boolean there may also be written "
    "`1`/`0`, `yes`/`no` or `on`/`off`, while a JSON body takes only `true` and `false`). The answer "
    "follows `Accept`: `application/x-npz` (default for binary requests), `application/x-npy` (the "
    'output alone) or `application/json`, whose tensors then come back as `{{"npy_base64": ...}}`, '
    "as the input came, unless `output_encoding` asks for `json` or `flat`."
)


def _describe(operation: Operation) -> str:
    family = operation.family
    extra = "".join(f" and `{name}`" for name in family.extra_tensors)
    rank = operation.rank
    text = (
        f"{family.summary} over {rank} spatial dimension{'s' if rank > 1 else ''}, "
        f"as `{operation.reference}`.\n\n{family.meaning}\n\nInput layout `(N, C, *spatial)` or unbatched "
        f'`(C, *spatial)`, or `data_format: "channels_last"`. Dtypes: {", ".join(family.dtypes)}.'
    )
    if family.has_indices:
        text += " With `return_indices`, `indices` holds the argmax positions (flat within each spatial plane)."
    return text + BINARY_NOTE.format(extra=extra)


def _errors(statuses: dict[int, str], problem: dict[str, Any]) -> dict[str, Any]:
    return {
        str(status): {"description": text, "content": {PROBLEM_JSON: {"schema": problem}}}
        for status, text in statuses.items()
    }


def _query_parameters(operation: Operation) -> list[dict[str, Any]]:
    """The binary form's parameters, which travel in the query: every field but the tensors and
    the dry run's (a dry run has no body to carry). A list is written comma-separated
    (`kernel_size=3,2`, OpenAPI's form style) or as JSON, which a list of lists needs
    (`padding=[[0,1],[1,0]]`); a boolean as true/false, 1/0, yes/no or on/off."""
    schema = operation.params.model_json_schema()
    parameters = []
    for name, spec in schema["properties"].items():
        if name in ("input", "indices", "dry_run", "input_shape"):
            continue
        listed = any(choice.get("type") == "array" for choice in spec.get("anyOf", [spec]))
        how = " A list: comma-separated, or as JSON (a list of lists must be)." if listed else ""
        parameters.append(
            {
                "name": name,
                "in": "query",
                "required": False,
                "style": "form",
                "explode": False,
                "description": f"Binary form only (a .npy or .npz body): {spec.get('description', '')}{how}",
                # No default: the docs page fills defaults in, and with a JSON body the query stays empty.
                "schema": {key: item for key, item in spec.items() if key not in ("title", "description", "default")},
            }
        )
    return parameters


def endpoint_paths(operations: dict[str, Operation]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pooling endpoint's OpenAPI paths, and the component schemas they refer to."""
    refs, definitions = models_json_schema(
        [(PoolResponse, "serialization"), (Problem, "serialization")], ref_template="#/components/schemas/{model}"
    )
    answer, problem = refs[(PoolResponse, "serialization")], refs[(Problem, "serialization")]
    paths: dict[str, Any] = {}
    for operation in operations.values():
        request: dict[str, Any] = {"schema": operation.params.model_json_schema()}
        examples = operation.family.examples(operation.rank)
        if examples:
            request["examples"] = examples
        paths[pool_path(operation.name)] = {
            "post": {
                "tags": [operation.family.name],
                "summary": f"{operation.family.summary} ({operation.rank}D)",
                "description": _describe(operation),
                "operationId": f"pool-{operation.name}",
                "parameters": _query_parameters(operation),
                "requestBody": {"required": True, "content": {JSON: request, NPY: BINARY, NPZ: BINARY}},
                "responses": {
                    # JSON first: the docs page's Accept follows the first media type.
                    "200": {
                        "description": "The pooled tensor",
                        "content": {JSON: {"schema": answer}, NPY: BINARY, NPZ: BINARY},
                    },
                    **_errors(POOL_ERRORS, problem),
                },
            }
        }
    path_op = {"name": "op", "in": "path", "required": True, "schema": {"type": "string"}}
    path_version = {"name": "version", "in": "path", "required": True, "schema": {"type": "string", "enum": [VERSION]}}
    for route, parameters, suffix in (("", [path_op], ""), (VERSIONED, [path_op, path_version], "-versioned")):
        paths[f"{V2_MODELS}{{op}}{route}{V2_INFER}"] = {
            "post": {
                "tags": ["open inference protocol"],
                "summary": "Inference (pooling) per the protocol",
                "operationId": f"v2-infer{suffix}",
                "parameters": parameters,
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": INFER_REQUEST}, OCTET_STREAM: BINARY},
                },
                "responses": {
                    "200": {
                        "description": "The outputs, as JSON or with the binary tensor data extension",
                        "content": {JSON: {"schema": INFER_RESPONSE}, OCTET_STREAM: BINARY},
                    },
                    **_errors(INFER_ERRORS, problem),
                },
            }
        }
    return paths, definitions.get("$defs", {})


def schema_builder(app: FastAPI, operations: dict[str, Operation], keys: bool) -> Callable[[], dict[str, Any]]:
    """`app.openapi`: FastAPI's own routes and the endpoint's paths, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        paths, definitions = endpoint_paths(operations)
        schema["paths"].update(paths)
        schema.setdefault("components", {}).setdefault("schemas", {}).update(definitions)
        _problems_everywhere(schema)
        for path, methods in schema["paths"].items():
            for method, spec in methods.items():
                if needs_key(method.upper(), path):
                    # Declared whatever this server's settings: any deployment may set keys.
                    spec["responses"]["401"] = {
                        "description": "An API key is configured and the request lacks a valid one",
                        "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                    }
                    if keys:
                        spec["security"] = [{"bearer": []}, {"apiKey": []}]
        if keys:
            # The docs page's Authorize button: either header carries the key.
            schema["components"]["securitySchemes"] = {
                "bearer": {"type": "http", "scheme": "bearer"},
                "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            }
        app.openapi_schema = schema
        return schema

    return openapi


# The readiness routes answer 503 with their own body while the service drains.
READINESS = {
    "/readyz": 'Draining: {"status": "draining"}',
    "/v2/health/ready": 'Draining: {"ready": false}',
}


def _problems_everywhere(schema: dict[str, Any]) -> None:
    """Every error is answered as problem+json: FastAPI's own routes declare their 422 as
    `application/json` with its validation model, so those are restated, and every route
    may answer 503 while the service is shutting down or shedding load."""
    problem = {"$ref": "#/components/schemas/Problem"}
    for path, methods in schema["paths"].items():
        for spec in methods.values():
            for status, response in spec["responses"].items():
                if int(status) >= 400:  # whatever a route declared: every error is a Problem
                    response["content"] = {PROBLEM_JSON: {"schema": problem}}
            if path in READINESS:
                spec["responses"]["503"] = {"description": READINESS[path], "content": {JSON: {"schema": {}}}}
            else:
                spec["responses"].setdefault(
                    "503",
                    {
                        "description": "Refused: too many connections, or shutting down",
                        "content": {PROBLEM_JSON: {"schema": problem}},
                    },
                )
    schemas = schema["components"]["schemas"]
    text = str(schema["paths"])
    for unused in ("HTTPValidationError", "ValidationError"):
        if f"/{unused}'" not in text:
            schemas.pop(unused, None)


# A parameter's value in the protocol: the pooling parameters by the service's names, and the
# protocol's own (binary_data, binary_data_size, ...).
PARAMETER = {"anyOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "array", "items": {}}]}
PARAMETERS = {"type": "object", "additionalProperties": PARAMETER}


def _tensors(names: list[str]) -> dict[str, Any]:
    """The protocol's tensors: name, shape, datatype, data (absent when sent as binary data)."""
    return {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "name": {"type": "string", "enum": names},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "datatype": {"type": "string", "enum": list(BY_PROTOCOL)},
                "data": {"type": "array", "items": {}, "description": "Absent when sent as binary data."},
                "parameters": PARAMETERS,
            },
            "required": ["name", "shape", "datatype"],
        },
    }


INFER_RESPONSE: dict[str, Any] = {
    "type": "object",
    "properties": {
        "model_name": {"type": "string"},
        "model_version": {"type": "string"},
        "id": {"type": "string"},
        "parameters": PARAMETERS,
        "outputs": _tensors(["output", "indices"]),
    },
    "required": ["model_name", "outputs"],
}
INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "parameters": {**PARAMETERS, "description": "The pooling parameters, by the service's names."},
        "inputs": _tensors(["input", "indices"]),
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string", "enum": ["output", "indices"]}, "parameters": PARAMETERS},
                "required": ["name"],
            },
        },
    },
    "required": ["inputs"],
    "example": {
        "parameters": {"kernel_size": 2},
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    },
}
