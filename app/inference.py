"""The Open Inference Protocol (KServe v2) over REST, beside the native API (what it shares
with gRPC is in `app.protocol`).

Every catalogue op is a model named as the op. `POST /v2/models/{op}/infer`
takes the tensor `input` (and `indices` for max-unpool) as JSON or through
Triton's binary tensor data extension (`Inference-Header-Content-Length`),
the pooling parameters in the request's top-level `parameters`, and answers
`output` and, for max-type ops, `indices` (INT64), each as JSON or binary as
asked. It runs through the same pipeline as `POST /pool/{op}` (the pooling
endpoint serves both); this module only reads and writes the protocol's form,
and routes the protocol's metadata.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response

from app import codecs, jsonparse
from app import protocol_models as models
from app.dtypes import TABLE
from app.errors import Loc, UndecodableBody
from app.negotiation import JSON, OCTET_STREAM, PROBLEM_JSON
from app.operations import Operation
from app.paths import VERSION
from app.pipeline import Decoded, Job, Runtime
from app.protocol import (
    binary_array,
    binary_bytes,
    find_model,
    input_header,
    model_config,
    model_metadata,
    protocol_error,
    repository_index,
    request_fields,
    server_metadata,
    statistics_of,
    tensors_of,
)
from app.requests import Incoming
from app.responses import Answer

REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}


def _header(raw: bytearray, request: Incoming) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(raw)
    declared = request.headers.get("inference-header-content-length")
    if declared is None:
        length = len(raw)
    elif not (declared.isascii() and declared.isdigit() and len(declared) <= 20) or int(declared) > len(raw):
        raise UndecodableBody("Inference-Header-Content-Length is not a length within the body")
    else:
        length = int(declared)
    try:
        document = jsonparse.loads(view[:length])
    except orjson.JSONDecodeError as exc:
        raise UndecodableBody(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UndecodableBody("the inference request must be a JSON object")
    unknown = sorted(set(document) - REQUEST_KEYS)
    if unknown:
        raise protocol_error(
            (unknown[0],), f"unknown member of an inference request; it has {', '.join(sorted(REQUEST_KEYS))}"
        )
    return document, view[length:]


def _tensor(
    entry: Any, index: int, operation: Operation, binary: memoryview, offset: int, runtime: Runtime
) -> tuple[str, codecs.Tensor, int]:
    where: tuple[str | int, ...] = ("inputs", index)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise protocol_error(where, "an input is an object with a name, shape, datatype and data")
    name = entry["name"]
    dtype, shape = input_header(operation, where, name, entry.get("shape"), entry.get("datatype"), runtime)
    size = _parameters(entry, where).get("binary_data_size")
    if size is not None:
        array = binary_array(binary, offset, size, shape, dtype, (*where, "parameters", "binary_data_size"))
        offset += size
    elif "data" in entry:
        decoded = codecs.decode_json_tensor(
            entry["data"],
            loc=(*where, "data"),
            dtype=dtype,
            dtype_given=True,
            limits=runtime.limits,
            maybe_bools=True,
            integer_only=name != "input",
        )
        if decoded.array.size != math.prod(shape):
            raise protocol_error(
                (*where, "data"), f"holds {decoded.array.size} values; shape {shape} needs {math.prod(shape)}"
            )
        array = decoded.array.reshape(shape)
    else:
        raise protocol_error(where, "an input needs data, or binary_data_size with the binary extension")
    return name, codecs.Tensor(array, dtype, "json"), offset


def _parameters(entry: dict[str, Any], where: Loc) -> dict[str, Any]:
    """An input's or output's own `parameters`: an object, when there."""
    parameters = entry.get("parameters")
    if parameters is None:
        return {}
    if not isinstance(parameters, dict):
        raise protocol_error((*where, "parameters"), "parameters is an object")
    return parameters


def _flag(parameters: dict[str, Any], name: str, where: Loc, default: bool = False) -> bool:
    """A protocol flag: a JSON boolean (a string such as "false" is no flag)."""
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise protocol_error((*where, name), "is true or false")
    return value


def decode_oip(operation: Operation, raw: bytearray, request: Incoming, runtime: Runtime) -> Decoded[Answer]:
    document, binary = _header(raw, request)
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise protocol_error(("parameters",), "parameters is an object")
    fields, timeout_s = request_fields(operation, parameters)
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise protocol_error(("inputs",), "inputs is a non-empty list")
    given: list[tuple[str, codecs.Tensor]] = []
    offset = 0
    for index, entry in enumerate(inputs):
        name, tensor, offset = _tensor(entry, index, operation, binary, offset, runtime)
        given.append((name, tensor))
    if offset != len(binary):
        raise protocol_error(("inputs",), f"{len(binary) - offset} bytes of binary data follow the last input's")
    binary_output = _flag(parameters, "binary_data_output", ("parameters",))
    wanted = _requested_outputs(document.get("outputs"), operation, binary_output)
    tensors, origins = tensors_of(operation, given, fields, wanted)
    return Decoded(
        fields,
        tensors,
        "parameters",
        JSON,
        _answer_encoder(document.get("id"), wanted),
        origins=origins,
        timeout_s=timeout_s,
    )


def _requested_outputs(outputs: Any, operation: Operation, binary_default: bool) -> dict[str, bool] | None:
    """Output name -> binary? for the outputs asked for; None: the defaults."""
    if outputs is None:
        return {"output": binary_default, "indices": binary_default} if binary_default else None
    if not isinstance(outputs, list):
        raise protocol_error(("outputs",), "outputs is a list")
    wanted: dict[str, bool] = {}
    names = ("output", "indices") if operation.family.has_indices else ("output",)
    for index, entry in enumerate(outputs):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in names:
            raise protocol_error(("outputs", index, "name"), f"{operation.name} has the outputs {', '.join(names)}")
        wanted[name] = _flag(_parameters(entry, ("outputs", index)), "binary_data", ("outputs", index), binary_default)
    return wanted


def _answer_encoder(request_id: Any, wanted: dict[str, bool] | None) -> Any:
    def encode(job: Job[Answer], out: np.ndarray, indices: np.ndarray | None) -> Answer:
        produced = {"output": (out, job.tensors["input"].dtype), "indices": (indices, "int64")}
        names = list(wanted) if wanted is not None else ["output", "indices"]
        entries, parts = [], []
        for name in names:
            array, dtype = produced[name]
            if array is None:
                continue
            entry: dict[str, Any] = {"name": name, "datatype": TABLE[dtype].protocol, "shape": list(array.shape)}
            if wanted is not None and wanted.get(name):
                data = binary_bytes(array, dtype)
                entry["parameters"] = {"binary_data_size": len(data)}
                parts.append(data)
            else:
                entry["data"] = orjson.Fragment(codecs.nested_json(array.reshape(-1)))
            entries.append(entry)
        body: dict[str, Any] = {"model_name": job.operation.name, "model_version": VERSION, "outputs": entries}
        if request_id is not None:
            body["id"] = request_id
        seed = job.params.seed()
        if seed is not None:
            body["parameters"] = {"random_seed": seed}
        header = orjson.dumps(body)
        if not parts:
            return Answer(header, JSON)
        return Answer(
            b"".join([header, *parts]),
            OCTET_STREAM,
            {"Inference-Header-Content-Length": str(len(header))},
        )

    return encode


def inference_router(runtime: Runtime) -> APIRouter:
    """The protocol's server and model metadata, configuration and repository index; its
    `infer` is the pooling endpoint's. Every model route is also served under
    `/versions/1`, the one version each model has."""
    router = APIRouter(prefix="/v2", tags=["open inference protocol"])
    operations = runtime.operations

    @router.get("", summary="Server metadata", operation_id="v2-server")
    async def server() -> dict[str, Any]:
        return server_metadata()

    @router.get("/health/live", summary="Alive", operation_id="v2-live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready", summary="Ready", operation_id="v2-ready")
    async def ready() -> Response:
        # As /readyz: unready, with a 503, while draining.
        draining = runtime.lifecycle.draining
        return Response(orjson.dumps({"ready": not draining}), 503 if draining else 200, media_type=JSON)

    unknown: dict[int | str, dict[str, Any]] = {404: {"description": "No such model", "content": {PROBLEM_JSON: {}}}}

    @router.get(
        "/models/stats",
        summary="Every model's statistics",
        operation_id="v2-models-stats",
        response_model=models.Statistics,
    )
    async def every_models_statistics() -> dict[str, Any]:
        # Before /models/{op}: `stats` is no model's name.
        return statistics_of(runtime, operations)

    def model_route(
        path: str, summary: str, name: str, model: type[BaseModel], answer: Callable[[Operation], Any]
    ) -> None:
        """A model route at `/models/{op}{path}` and at `/models/{op}/versions/{version}{path}`."""

        async def plain(op: str) -> Any:
            return answer(find_model(operations, op))

        async def versioned(op: str, version: str) -> Any:
            return answer(find_model(operations, op, version))

        for route, endpoint, suffix in (("", plain, ""), ("/versions/{version}", versioned, "-versioned")):
            router.add_api_route(
                f"/models/{{op}}{route}{path}",
                endpoint,
                methods=["GET"],
                summary=summary,
                operation_id=f"v2-{name}{suffix}",
                response_model=model,
                responses=unknown,
            )

    model_route("", "Model metadata", "model", models.ModelMetadata, model_metadata)
    model_route(
        "/ready",
        "Model ready",
        "model-ready",
        models.ModelReady,
        lambda operation: {"name": operation.name, "ready": True},
    )
    model_route("/config", "Model configuration", "model-config", models.ModelConfig, model_config)
    model_route(
        "/stats",
        "Model statistics",
        "model-stats",
        models.Statistics,
        lambda operation: statistics_of(runtime, [operation.name]),
    )

    @router.post(
        "/repository/index",
        summary="Repository index",
        operation_id="v2-repository-index",
        response_model=list[models.RepositoryModel],
    )
    async def index() -> list[dict[str, str]]:
        return repository_index(operations)

    return router
