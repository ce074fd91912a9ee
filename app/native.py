"""The native door, `POST /pool/{op}`: a JSON body, or a .npy/.npz body with the
parameters in the query, read into the pipeline's `Decoded`; the answer written
back as JSON, .npy or .npz as `Accept` says."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
from starlette.datastructures import QueryParams

from app import codecs
from app.errors import InvalidParameters
from app.negotiation import JSON, NPY, NPZ, body_kind, negotiate
from app.operations import Operation
from app.pipeline import Decoded, DryRun, Job, Runtime
from app.requests import Incoming, decode_binary_request, decode_json_request
from app.responses import Answer


def decode_native(operation: Operation, raw: bytearray, request: Incoming, runtime: Runtime) -> Decoded[Answer]:
    kind = body_kind(request.headers.get("content-type"))
    answer = negotiate(request.headers.get("accept"), JSON if kind == "json" else NPZ)
    if kind == "json":
        if request.query:
            name = next(iter(request.query.keys()))
            raise InvalidParameters.at(
                ("query", name), "with a JSON body, parameters go in the body", "query_with_json"
            )
        fields, tensors = decode_json_request(raw, operation, runtime.limits)
        return Decoded(fields, tensors, "body", answer, encode_answer, dry_run_answer)
    fields, tensors = decode_binary_request(raw, kind, request.query or QueryParams(), operation, runtime.limits)
    # The parameters arrived in the query, the tensors in the body.
    origins: dict[str | int, tuple[str | int, ...]] = {name: ("body", name) for name in tensors}
    return Decoded(fields, tensors, "query", answer, encode_answer, dry_run_answer, origins)


def encode_answer(job: Job[Answer], out: np.ndarray, indices: np.ndarray | None) -> Answer:
    seed = job.params.seed()
    headers = {"X-Random-Seed": str(seed)} if seed is not None else None
    if job.decoded.media_type == NPY:
        return Answer(codecs.encode_npy(out), NPY, headers)
    if job.decoded.media_type == NPZ:
        arrays = {"output": out} if indices is None else {"output": out, "indices": indices}
        return Answer(codecs.encode_npz(arrays), NPZ, headers)
    dtype, encoding = job.tensors["input"].dtype, job.encoding
    body: dict[str, Any] = {
        "op": job.operation.name,
        "shape": list(out.shape),
        "dtype": dtype,
        "output": codecs.json_tensor(out, dtype, encoding),
        "indices": codecs.json_tensor(indices, "int64", encoding) if indices is not None else None,
        "device": job.executor.device_name,
    }
    if seed is not None:
        body["random_seed"] = seed
    return Answer(orjson.dumps(body), JSON)


def dry_run_answer(dry: DryRun) -> Answer:
    body = {
        "op": dry.operation.name,
        "shape": list(dry.shape),
        "dtype": dry.dtype,
        "output": None,
        "indices": None,
        "device": dry.device,
        "padding": dry.padding,
        "work": dry.work,
    }
    return Answer(orjson.dumps(body), JSON)
