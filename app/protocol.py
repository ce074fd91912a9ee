"""The Open Inference Protocol (KServe v2) apart from its transports: what `app.inference`
(REST) and `app.inference_grpc` (gRPC) share. Every catalogue op is a model named as the
op, with one version; its input `input` (and `indices` for max-unpool), its outputs
`output` and, for max-type ops, `indices`, and the pooling parameters in the request's
`parameters`. Here: those checks, the tensors' little-endian bytes, and the model's
metadata, configuration and place in the repository index, as plain data."""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import numpy as np
import orjson

from app import __version__, codecs
from app.dtypes import BY_PROTOCOL, TABLE
from app.errors import InvalidParameters, Loc, NotFound, UndecodableBody, shown
from app.operations import Operation
from app.paths import VERSION
from app.pipeline import Runtime

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
    codecs.check_size(shape, runtime.limits, ("", *where))  # it names the place from its second part on
    return BY_PROTOCOL[datatype].name, shape


def binary_array(buffer: memoryview, offset: int, size: Any, shape: list[int], dtype: str, at: Loc) -> np.ndarray:
    """A tensor's little-endian bytes, `size` of them from `offset`, as an array of its shape;
    `at` is where the size was given."""
    if type(size) is not int or size < 0 or offset + size > len(buffer):
        raise protocol_error(at, "runs past the end of the body")
    item = TABLE[dtype].wire_bytes
    if size != math.prod(shape) * item:
        raise protocol_error(at, f"is {size} bytes; shape {shape} of {dtype} is {math.prod(shape) * item}")
    data = buffer[offset : offset + size]
    if dtype == "bfloat16":
        # bfloat16 is the upper half of a float32: widening is exact.
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(shape)
    return (
        np.frombuffer(bytearray(data), dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape).astype(dtype, copy=False)
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


def find_model(operations: Mapping[str, Operation], name: str, version: str | None = None) -> Operation:
    """The model `name` at `version` (None or "": its one version), or a 404."""
    operation = operations.get(name)
    if operation is None:
        raise NotFound(f"no model {shown(name)}; the repository index lists the models")
    if version not in (None, "", VERSION):
        raise NotFound(f"model {name} has no version {shown(version)}; its one version is {VERSION}")
    return operation


def repository_index(operations: Iterable[str]) -> list[dict[str, str]]:
    # Every op is a model, always loaded: the repository cannot load or unload.
    return [{"name": name, "version": VERSION, "state": "READY", "reason": ""} for name in operations]


def statistics_of(runtime: Runtime, names: Iterable[str]) -> dict[str, Any]:
    return {"model_stats": [runtime.statistics.report(name, VERSION) for name in names]}
