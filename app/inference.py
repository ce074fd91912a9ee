"""The Open Inference Protocol (KServe v2) over REST, beside the native API.

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
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response

from app import __version__, codecs, jsonparse
from app import protocol_models as models
from app.dtypes import BY_PROTOCOL, TABLE
from app.errors import InvalidParameters, Loc, NotFound, UndecodableBody, shown
from app.negotiation import JSON, OCTET_STREAM, PROBLEM_JSON
from app.operations import Operation
from app.paths import VERSION
from app.pipeline import Decoded, Job, Runtime
from app.requests import Incoming
from app.responses import Answer

REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
# The protocol's own, not pooling parameters: Triton's binary_data_output, and its priority and
# timeout (microseconds). Every request has one priority here (one queue, first come first
# served); a timeout bounds the request as POOL_REQUEST_TIMEOUT_S does, where it is shorter
# (work small enough to run on the event loop takes microseconds and is not timed).
PROTOCOL_PARAMETERS = {"binary_data_output", "priority", "timeout"}
# Triton's extensions this server has (it loads no models, shares no memory, traces nothing).
EXTENSIONS = ["binary_tensor_data", "parameters", "statistics", "model_configuration"]
LARGEST_UINT64 = 2**64 - 1  # the proto's type for both
NOT_PARAMETERS = {"input", "indices", "dry_run", "input_shape", "output_encoding"}


def protocol_error(where: Loc, msg: str) -> UndecodableBody:
    """The protocol answers a malformed request with a 400 that names the place."""
    return UndecodableBody(f"{'.'.join(str(part)[:64] for part in where)}: {msg}")


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


def input_header(
    operation: Operation, where: Loc, name: Any, shape: Any, datatype: Any, runtime: Runtime
) -> tuple[str, list[int]]:
    """An input's name, shape and datatype checked (as the protocol's REST and gRPC forms
    carry them, before any data is read): its dtype and shape."""
    names = ("input", *operation.family.extra_tensors)
    if name not in names:
        raise protocol_error(
            (*where, "name"), f"{operation.name} takes the inputs {', '.join(names)}, not {shown(name)}"
        )
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise protocol_error((*where, "shape"), "shape is a list of non-negative integers")
    if datatype not in BY_PROTOCOL:
        raise InvalidParameters.at(
            (*where, "datatype"), f"datatype {shown(datatype)} is not one of {', '.join(BY_PROTOCOL)}", "dtype"
        )
    if name != "input" and BY_PROTOCOL[datatype].kind != "int":
        raise InvalidParameters.at((*where, "datatype"), f"{name} holds integer positions, not {datatype}", "dtype")
    codecs.check_size(shape, runtime.limits, where)
    return BY_PROTOCOL[datatype].name, shape


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
        array = binary_array(binary, offset, size, shape, dtype, where)
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


def binary_array(buffer: memoryview, offset: int, size: Any, shape: list[int], dtype: str, where: Loc) -> np.ndarray:
    """A tensor's little-endian bytes, `size` of them from `offset`, as an array of its shape."""
    if type(size) is not int or size < 0 or offset + size > len(buffer):
        raise protocol_error((*where, "parameters", "binary_data_size"), "runs past the end of the body")
    item = TABLE[dtype].wire_bytes
    if size != math.prod(shape) * item:
        raise protocol_error(
            (*where, "parameters", "binary_data_size"),
            f"is {size} bytes; shape {shape} of {dtype} is {math.prod(shape) * item}",
        )
    data = buffer[offset : offset + size]
    if dtype == "bfloat16":
        # bfloat16 is the upper half of a float32: widening is exact.
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return (
        np.frombuffer(bytearray(data), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype, copy=False)
    )


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


def request_fields(operation: Operation, parameters: dict[str, Any]) -> tuple[dict[str, Any], float | None]:
    """The pooling fields among a request's `parameters`, and its own `timeout` in seconds
    (None: none; Triton reads 0 as none too)."""
    known = set(operation.params.model_fields) - NOT_PARAMETERS
    for key in parameters:
        if key not in known and key not in PROTOCOL_PARAMETERS:
            raise protocol_error(
                ("parameters", key),
                f"{operation.name} takes no parameter {shown(key)}; it takes {', '.join(sorted(known))}",
            )
    for name in ("priority", "timeout"):
        value = parameters.get(name)
        if value is not None and (type(value) is not int or not 0 <= value <= LARGEST_UINT64):
            raise protocol_error(("parameters", name), "is a non-negative integer")
    timeout_us = parameters.get("timeout") or 0
    fields = {key: value for key, value in parameters.items() if key not in PROTOCOL_PARAMETERS}
    return fields, timeout_us / 1e6 if timeout_us else None


def tensors_of(
    operation: Operation,
    given: list[tuple[str, codecs.Tensor]],
    fields: dict[str, Any],
    wanted: Collection[str] | None,
) -> tuple[dict[str, codecs.Tensor], dict[str | int, Loc]]:
    """A request's input tensors by name, and where each arrived, from its `inputs` in
    order (names already checked); `fields` gains what the tensors settle: the dtype, and
    `return_indices` when the indices are among the outputs `wanted` (None: the defaults)."""
    tensors: dict[str, codecs.Tensor] = {}
    origins: dict[str | int, Loc] = {}
    for index, (name, tensor) in enumerate(given):
        if name in tensors:
            raise protocol_error(("inputs", index, "name"), f"{name} is given twice")
        tensors[name] = tensor if name == "input" else codecs.Tensor(tensor.array.astype(np.int64), "int64", "json")
        origins[name] = ("inputs", index)
    if "input" in tensors:
        if fields.get("dtype", tensors["input"].dtype) != tensors["input"].dtype:
            message = f"the input is {tensors['input'].dtype} but dtype says {shown(fields['dtype'])}"
            raise InvalidParameters.at(("parameters", "dtype"), message, "dtype_conflict")
        fields["dtype"] = tensors["input"].dtype
    for name in ("input", *operation.family.extra_tensors):
        origins.setdefault(name, ("inputs",))  # where a missing one belongs
    for name in tensors:
        fields[name] = None  # decoded here; the parameter model checks the rest
    if wanted is not None and "indices" in wanted and operation.family.has_indices:
        fields["return_indices"] = True
    return tensors, origins


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


def binary_bytes(array: np.ndarray, dtype: str) -> bytes:
    if dtype == "bfloat16":  # carried as float32 whose low half is zero
        return (np.ascontiguousarray(array, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(array).astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()


def server_metadata() -> dict[str, Any]:
    return {"name": "pooling-service", "version": __version__, "extensions": EXTENSIONS}


def model_metadata(operation: Operation) -> dict[str, Any]:
    dims = [-1] * (operation.rank + 2)
    datatypes = [TABLE[d].protocol for d in operation.family.dtypes]
    inputs = [{"name": "input", "datatype": "FP32", "shape": dims, "parameters": {"datatypes": datatypes}}]
    if operation.family.extra_tensors:
        inputs.append({"name": "indices", "datatype": "INT64", "shape": dims})
    outputs = [{"name": "output", "datatype": "FP32", "shape": dims, "parameters": {"datatypes": datatypes}}]
    if operation.family.has_indices:
        outputs.append({"name": "indices", "datatype": "INT64", "shape": dims})
    return {"name": operation.name, "versions": [VERSION], "platform": "pytorch", "inputs": inputs, "outputs": outputs}


def model_config(operation: Operation) -> dict[str, Any]:
    """The model's configuration as Triton describes one: its inputs and outputs, and each
    pooling parameter (required or its default, and its JSON schema) in `parameters`."""

    def tensor(name: str, datatype: str) -> dict[str, Any]:
        return {"name": name, "data_type": f"TYPE_{datatype}", "dims": [-1] * (operation.rank + 2)}

    inputs = [tensor("input", "FP32")] + [tensor(name, "INT64") for name in operation.family.extra_tensors]
    outputs = [tensor("output", "FP32")] + ([tensor("indices", "INT64")] if operation.family.has_indices else [])
    schema = operation.params.model_json_schema()
    required = set(schema.get("required", []))
    parameters = {
        name: {"string_value": orjson.dumps({"required": name in required, **spec}).decode()}
        for name, spec in schema["properties"].items()
        if name not in NOT_PARAMETERS and name != "indices"
    }
    return {
        "name": operation.name,
        "platform": "pytorch",
        "backend": "pooling",
        "version_policy": {"specific": {"versions": [VERSION]}},
        "max_batch_size": 0,
        "input": inputs,
        "output": outputs,
        "parameters": parameters,
    }


def inference_router(runtime: Runtime) -> APIRouter:
    """The protocol's server and model metadata, configuration and repository index; its
    `infer` is the pooling endpoint's. Every model route is also served under
    `/versions/1`, the one version each model has."""
    router = APIRouter(prefix="/v2", tags=["open inference protocol"])
    operations = runtime.operations

    def operation_of(op: str, version: str | None = None) -> Operation:
        operation = operations.get(op)
        if operation is None:
            raise NotFound(f"no model {shown(op)}; GET /pool lists the operations, each a model")
        if version is not None and version != VERSION:
            raise NotFound(f"model {op} has no version {shown(version)}; its one version is {VERSION}")
        return operation

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
        return {"model_stats": [runtime.statistics.report(name, VERSION) for name in operations]}

    def model_route(
        path: str, summary: str, name: str, model: type[BaseModel], answer: Callable[[Operation], Any]
    ) -> None:
        """A model route at `/models/{op}{path}` and at `/models/{op}/versions/{version}{path}`."""

        async def plain(op: str) -> Any:
            return answer(operation_of(op))

        async def versioned(op: str, version: str) -> Any:
            return answer(operation_of(op, version))

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
        lambda operation: {"model_stats": [runtime.statistics.report(operation.name, VERSION)]},
    )

    @router.post(
        "/repository/index",
        summary="Repository index",
        operation_id="v2-repository-index",
        response_model=list[models.RepositoryModel],
    )
    async def repository_index() -> list[dict[str, str]]:
        # Every op is a model, always loaded: the repository cannot load or unload.
        return [{"name": name, "version": VERSION, "state": "READY", "reason": ""} for name in operations]

    return router
