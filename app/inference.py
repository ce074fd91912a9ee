"""The Open Inference Protocol (KServe v2) over REST, beside the native API.

Every catalogue op is a model named as the op. `POST /v2/models/{op}/infer`
takes the tensor `input` (and `indices` for max-unpool) as JSON or through
Triton's binary tensor data extension (`Inference-Header-Content-Length`),
the pooling parameters in the request's top-level `parameters`, and answers
`output` and, for max-type ops, `indices` (INT64), each as JSON or binary as
asked. It runs through the same pipeline as `POST /pool/{op}`; this module
only reads and writes the protocol's form.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from app import __version__, codecs
from app.catalogue import CATALOGUE, OpSpec
from app.errors import InvalidParameters, NotFound, UndecodableBody
from app.negotiation import Answer
from app.pipeline import JSON, Decoded, Job, Runtime
from app.requests import Incoming

DATATYPES = {
    "UINT8": "uint8",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
    "BF16": "bfloat16",
}
DATATYPE_OF = {dtype: name for name, dtype in DATATYPES.items()}
REQUEST_KEYS = {"id", "parameters", "inputs", "outputs"}
PROTOCOL_PARAMETERS = {"binary_data_output"}  # the protocol's own, not pooling parameters
NOT_PARAMETERS = {"input", "indices", "dry_run", "input_shape", "output_encoding"}


def _fail(where: tuple[str | int, ...], msg: str) -> UndecodableBody:
    """The protocol answers a malformed request with a 400 that names the place."""
    return UndecodableBody(f"{'.'.join(str(part) for part in where)}: {msg}")


def _header(raw: bytearray, request: Incoming) -> tuple[dict[str, Any], memoryview]:
    view = memoryview(raw)
    declared = request.headers.get("inference-header-content-length")
    if declared is None:
        length = len(raw)
    elif not declared.isdigit() or int(declared) > len(raw):
        raise UndecodableBody("Inference-Header-Content-Length is not a length within the body")
    else:
        length = int(declared)
    try:
        document = orjson.loads(view[:length])
    except orjson.JSONDecodeError as exc:
        raise UndecodableBody(f"the inference request is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise UndecodableBody("the inference request must be a JSON object")
    unknown = sorted(set(document) - REQUEST_KEYS)
    if unknown:
        raise _fail((unknown[0],), f"unknown member of an inference request; it has {', '.join(sorted(REQUEST_KEYS))}")
    return document, view[length:]


def _tensor(
    entry: Any, index: int, spec: OpSpec, binary: memoryview, offset: int, runtime: Runtime
) -> tuple[str, codecs.Tensor, int]:
    where: tuple[str | int, ...] = ("inputs", index)
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise _fail(where, "an input is an object with a name, shape, datatype and data")
    name = entry["name"]
    names = ("input", *spec.family.extra_tensors)
    if name not in names:
        raise _fail((*where, "name"), f"{spec.name} takes the inputs {', '.join(names)}, not {name!r}")
    shape, datatype = entry.get("shape"), entry.get("datatype")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise _fail((*where, "shape"), "shape is a list of non-negative integers")
    if datatype not in DATATYPES:
        raise InvalidParameters.at(
            ("inputs", index, "datatype"), f"datatype {datatype!r} is not one of {', '.join(DATATYPES)}", "dtype"
        )
    dtype = DATATYPES[datatype]
    codecs.check_size(shape, runtime.limits, ("inputs", name))
    size = (entry.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        array = _binary(binary, offset, size, shape, dtype, where)
        offset += size
    elif "data" in entry:
        decoded = codecs.decode_json_tensor(
            entry["data"], loc=("inputs", name), dtype=dtype, dtype_given=True, limits=runtime.limits, maybe_bools=True
        )
        if decoded.array.size != math.prod(shape):
            raise _fail((*where, "data"), f"holds {decoded.array.size} values; shape {shape} needs {math.prod(shape)}")
        array = decoded.array.reshape(shape)
    else:
        raise _fail(where, "an input needs data, or binary_data_size with the binary extension")
    return name, codecs.Tensor(array, dtype, "json"), offset


def _binary(
    buffer: memoryview, offset: int, size: Any, shape: list[int], dtype: str, where: tuple[str | int, ...]
) -> np.ndarray:
    if type(size) is not int or size < 0 or offset + size > len(buffer):
        raise _fail((*where, "parameters", "binary_data_size"), "runs past the end of the body")
    item = 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize
    if size != math.prod(shape) * item:
        raise _fail(
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


def decode_oip(spec: OpSpec, raw: bytearray, request: Incoming, runtime: Runtime) -> Decoded:
    document, binary = _header(raw, request)
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise _fail(("parameters",), "parameters is an object")
    known = set(spec.params.model_fields) - NOT_PARAMETERS
    for key in parameters:
        if key not in known and key not in PROTOCOL_PARAMETERS:
            raise _fail(
                ("parameters", key), f"{spec.name} takes no parameter {key!r}; it takes {', '.join(sorted(known))}"
            )
    fields = {key: value for key, value in parameters.items() if key not in PROTOCOL_PARAMETERS}
    inputs = document.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _fail(("inputs",), "inputs is a non-empty list")
    tensors: dict[str, codecs.Tensor] = {}
    offset = 0
    for index, entry in enumerate(inputs):
        name, tensor, offset = _tensor(entry, index, spec, binary, offset, runtime)
        if name in tensors:
            raise _fail(("inputs", index, "name"), f"{name} is given twice")
        tensors[name] = tensor if name == "input" else codecs.Tensor(tensor.array.astype(np.int64), "int64", "json")
    if "input" in tensors and "dtype" not in fields:
        fields["dtype"] = tensors["input"].dtype
    for name in tensors:
        fields[name] = None  # decoded here; the parameter model checks the rest
    wanted = _requested_outputs(document.get("outputs"), spec, bool(parameters.get("binary_data_output")))
    if wanted is not None and "indices" in wanted and spec.family.has_indices:
        fields["return_indices"] = True
    return Decoded(fields, tensors, "parameters", JSON, _answer_encoder(document.get("id"), wanted))


def _requested_outputs(outputs: Any, spec: OpSpec, binary_default: bool) -> dict[str, bool] | None:
    """Output name -> binary? for the outputs asked for; None: the defaults."""
    if outputs is None:
        return {"output": binary_default, "indices": binary_default} if binary_default else None
    if not isinstance(outputs, list):
        raise _fail(("outputs",), "outputs is a list")
    wanted: dict[str, bool] = {}
    names = ("output", "indices") if spec.family.has_indices else ("output",)
    for index, entry in enumerate(outputs):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name not in names:
            raise _fail(("outputs", index, "name"), f"{spec.name} has the outputs {', '.join(names)}")
        wanted[name] = bool((entry.get("parameters") or {}).get("binary_data", binary_default))
    return wanted


def _answer_encoder(request_id: Any, wanted: dict[str, bool] | None) -> Any:
    def encode(job: Job, out: np.ndarray, indices: np.ndarray | None) -> Response:
        produced = {"output": (out, job.tensors["input"].dtype), "indices": (indices, "int64")}
        names = list(wanted) if wanted is not None else ["output", "indices"]
        entries, parts = [], []
        for name in names:
            array, dtype = produced[name]
            if array is None:
                continue
            entry: dict[str, Any] = {"name": name, "datatype": DATATYPE_OF[dtype], "shape": list(array.shape)}
            if wanted is not None and wanted.get(name):
                data = _binary_bytes(array, dtype)
                entry["parameters"] = {"binary_data_size": len(data)}
                parts.append(data)
            else:
                entry["data"] = orjson.Fragment(codecs.nested_json(array.reshape(-1)))
            entries.append(entry)
        body: dict[str, Any] = {"model_name": job.spec.name, "model_version": "1", "outputs": entries}
        if request_id is not None:
            body["id"] = request_id
        seed = job.params.__dict__.get("random_seed")
        if seed is not None:
            body["parameters"] = {"random_seed": seed}
        header = orjson.dumps(body)
        if not parts:
            return Answer(header, JSON)
        return Response(
            b"".join([header, *parts]),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    return encode


def _binary_bytes(array: np.ndarray, dtype: str) -> bytes:
    if dtype == "bfloat16":  # carried as float32 whose low half is zero
        return (np.ascontiguousarray(array, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    return np.ascontiguousarray(array).astype(np.dtype(dtype).newbyteorder("<"), copy=False).tobytes()


def model_metadata(spec: OpSpec) -> dict[str, Any]:
    dims = [-1] * (spec.rank + 2)
    datatypes = [DATATYPE_OF[d] for d in spec.family.dtypes]
    inputs = [{"name": "input", "datatype": "FP32", "shape": dims, "parameters": {"datatypes": datatypes}}]
    if spec.family.extra_tensors:
        inputs.append({"name": "indices", "datatype": "INT64", "shape": dims})
    outputs = [{"name": "output", "datatype": "FP32", "shape": dims, "parameters": {"datatypes": datatypes}}]
    if spec.family.has_indices:
        outputs.append({"name": "indices", "datatype": "INT64", "shape": dims})
    return {"name": spec.name, "versions": ["1"], "platform": "pytorch", "inputs": inputs, "outputs": outputs}


INFER_ERRORS = {
    400: "The request does not follow the protocol, or names an unknown parameter, input or output",
    404: "No such model",
    413: "Body, tensor or result over a limit",
    422: "Parameters invalid for this tensor",
    503: "Every compute slot and queue place is taken",
}
INFER_REQUEST: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "parameters": {"type": "object", "description": "The pooling parameters, by the service's names."},
        "inputs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "enum": ["input", "indices"]},
                    "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                    "datatype": {"type": "string", "enum": list(DATATYPES)},
                    "data": {"type": "array", "items": {}},
                    "parameters": {"type": "object"},
                },
                "required": ["name", "shape", "datatype"],
            },
        },
        "outputs": {"type": "array", "items": {"type": "object"}},
    },
    "required": ["inputs"],
    "example": {
        "parameters": {"kernel_size": 2},
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    },
}


def inference_router() -> APIRouter:
    router = APIRouter(prefix="/v2", tags=["open inference protocol"])

    def spec_of(op: str) -> OpSpec:
        spec = CATALOGUE.get(op)
        if spec is None:
            raise NotFound(f"no model {op!r}; GET /pool lists the operations, each a model")
        return spec

    @router.get("", summary="Server metadata", operation_id="v2-server")
    async def server() -> dict[str, Any]:
        return {"name": "pooling-service", "version": __version__, "extensions": ["binary_tensor_data", "parameters"]}

    @router.get("/health/live", summary="Alive", operation_id="v2-live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @router.get("/health/ready", summary="Ready", operation_id="v2-ready")
    async def ready(request: Request) -> dict[str, bool]:
        return {"ready": getattr(request.app.state, "runtime", None) is not None}

    unknown: dict[int | str, dict[str, Any]] = {
        404: {"description": "No such model", "content": {"application/problem+json": {}}}
    }

    @router.get("/models/{op}", summary="Model metadata", operation_id="v2-model", responses=unknown)
    async def metadata(op: str) -> dict[str, Any]:
        return model_metadata(spec_of(op))

    @router.get("/models/{op}/ready", summary="Model ready", operation_id="v2-model-ready", responses=unknown)
    async def model_ready(op: str) -> dict[str, Any]:
        return {"name": spec_of(op).name, "ready": True}

    @router.post(
        "/models/{op}/infer",
        summary="Inference (pooling) per the protocol",
        operation_id="v2-infer",
        responses={status: {"description": text} for status, text in INFER_ERRORS.items()},
        openapi_extra={"requestBody": {"required": True, "content": {JSON: {"schema": INFER_REQUEST}}}},
    )
    async def infer(op: str) -> Response:  # pragma: no cover - app.asgi.PoolEndpoint answers it first
        raise NotFound(f"no model {op!r}")

    return router
