"""One pooling request from bytes to bytes: read, decode, validate, compute, encode.

The checks run in the contract's order: body size (413), media type (415),
`Accept` (406), decoding (400), element counts (413), parameters against
the tensor (422), the output's size (413); only then does anything compute.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError
from starlette.datastructures import QueryParams
from starlette.responses import Response

from app import codecs
from app.catalogue import OpSpec
from app.codecs import Limits, Tensor
from app.errors import InvalidParameters, TooLarge, validation_problem
from app.execution import Executor, to_numpy, with_fallbacks
from app.kernels import Plan
from app.layout import Layout, global_indices
from app.negotiation import JSON, NPY, NPZ, Answer, body_kind, negotiate
from app.requests import (
    BodyBudget,
    Incoming,
    decode_binary_request,
    decode_json_request,
    disconnected,
    read_body,
)

log = logging.getLogger("app.pipeline")


@dataclass(frozen=True)
class Runtime:
    """What every request needs, built once at start."""

    executor: Executor
    limits: Limits
    max_body_bytes: int
    plans: PlanCache
    bodies: BodyBudget
    inline_max_bytes: int
    inline_max_elements: int


def _layout_text(rank: int, channels_last: bool) -> str:
    spatial = ["L"] if rank == 1 else ["H", "W"] if rank == 2 else ["D", "H", "W"]
    dims = [*spatial, "C"] if channels_last else ["C", *spatial]
    return "(N, " + ", ".join(dims) + ")"


def check_input(
    spec: OpSpec, params: Any, shape: tuple[int, ...], dtype: str, extra_shapes: dict[str, tuple[int, ...]], prefix: str
) -> Layout:
    """Rank, sizes and dtype of the input for this op, and the layout it arrived in."""
    rank = spec.rank
    channels_last = params.data_format == "channels_last"
    where = (prefix, "input_shape" if params.dry_run else "input")
    if len(shape) not in (rank + 1, rank + 2):
        raise InvalidParameters.at(
            where,
            f"{spec.name} takes {rank + 2} dimensions {_layout_text(rank, channels_last)} "
            f"or {rank + 1} without the batch; got {len(shape)}",
            "rank",
        )
    layout = Layout(rank, len(shape) == rank + 2, channels_last, params.__dict__.get("keepdims", True))
    if 0 in layout.canonical_shape(shape)[1:]:
        raise InvalidParameters.at(where, f"shape {list(shape)} has a zero-sized channel or spatial dimension", "empty")
    if dtype not in spec.family.dtypes:
        kinds = "floating-point" if spec.family.dtypes == codecs.FLOAT_DTYPES else ", ".join(spec.family.dtypes)
        raise InvalidParameters.at(where, f"{spec.name} takes {kinds} tensors, not {dtype}", "dtype")
    for name, extra in extra_shapes.items():
        if extra != shape:
            raise InvalidParameters.at(
                (prefix, name), f"{name} has shape {list(extra)}; it must match input's {list(shape)}", "shape"
            )
    return layout


def validate_params(spec: OpSpec, fields: dict[str, Any], prefix: str) -> Any:
    try:
        return spec.params.model_validate(fields)
    except ValidationError as exc:
        raise validation_problem(exc, (prefix,), spec.params.model_fields) from None


def compute(
    executor: Executor, spec: OpSpec, params: Any, plan: Plan, layout: Layout, tensors: dict[str, Tensor]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs in the compute pool: to the device in torch's layout, pool, back in the request's."""
    x = tensors["input"]
    tensor = layout.canonical(executor.to_device(x.array, x.dtype))
    extra = {
        name: layout.canonical(executor.to_device(tensors[name].array, "int64")) for name in spec.family.extra_tensors
    }
    try:
        out, indices = with_fallbacks(spec.compute, tensor, params, plan, extra)
    except (RuntimeError, ValueError) as exc:
        # The pre-checks should have caught this; never let it become a 500.
        log.warning("%s refused by torch after validation: %s", spec.name, exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidParameters(f"{spec.name} cannot run on this input: {first_line}") from None
    if indices is not None and params.indices_layout == "global":
        indices = global_indices(indices, tuple(tensor.shape))
    out = layout.present(out)
    return to_numpy(out), to_numpy(layout.present(indices)) if indices is not None else None


# Made for every request: a frozen dataclass's __init__ costs five times as much.
@dataclass(slots=True)
class Decoded:
    """A request's fields and tensors, where its parameters came from (`body` or
    `query`, for error locations), and how its answer is to be encoded."""

    fields: dict[str, Any]
    tensors: dict[str, Tensor]
    prefix: str
    answer: str  # the media type negotiated for the answer
    encode: Encoder


Decoder = Callable[[OpSpec, bytearray, Incoming, Runtime], Decoded]
Encoder = Callable[["Job", np.ndarray, np.ndarray | None], Response]


async def run_operation(spec: OpSpec, request: Incoming, runtime: Runtime, decoder: Decoder | None = None) -> Response:
    """One request. A small one is decoded, pooled and encoded right on the event loop,
    where a thread hop would cost more than the work; a large body, or a large output,
    goes to the bounded compute pool, so cheap requests never wait behind it here.
    `decoder` reads the protocol's form of the request (this service's own by default)."""
    raw = await read_body(request, runtime.max_body_bytes, runtime.bodies)
    try:
        response = await _answer(spec, request, runtime, raw, decoder or decode_native)
    finally:
        runtime.bodies.give_back(len(raw))
    # Only a request that ran to the end gives its buffer for reuse: one that timed out
    # may still be read by its computation.
    runtime.bodies.recycle(raw)
    return response


async def _answer(spec: OpSpec, request: Incoming, runtime: Runtime, raw: bytearray, decoder: Decoder) -> Response:
    executor = runtime.executor
    gone = lambda: disconnected(request.receive)  # noqa: E731
    if len(raw) > runtime.inline_max_bytes:
        return await executor.run(_whole, spec, raw, request, runtime, decoder, gone=gone)
    job = prepare(spec, decoder(spec, raw, request, runtime), runtime)
    if isinstance(job, Response):
        return job
    if job.elements <= runtime.inline_max_elements:
        return executor.inline(finish, job)
    return await executor.run(finish, job, gone=gone)


def _whole(spec: OpSpec, raw: bytearray, request: Incoming, runtime: Runtime, decoder: Decoder) -> Response:
    job = prepare(spec, decoder(spec, raw, request, runtime), runtime)
    return job if isinstance(job, Response) else finish(job)


def decode_native(spec: OpSpec, raw: bytearray, request: Incoming, runtime: Runtime) -> Decoded:
    """This service's own forms: a JSON body, or a .npy/.npz body with query parameters."""
    kind = body_kind(request.headers.get("content-type"))
    answer = negotiate(request.headers.get("accept"), JSON if kind == "json" else NPZ)
    if kind == "json":
        if request.query:
            name = next(iter(request.query.keys()))
            raise InvalidParameters.at(
                ("query", name), "with a JSON body, parameters go in the body", "query_with_json"
            )
        fields, tensors = decode_json_request(raw, spec, runtime.limits)
        return Decoded(fields, tensors, "body", answer, native_answer)
    fields, tensors = decode_binary_request(raw, kind, request.query or QueryParams(), spec, runtime.limits)
    return Decoded(fields, tensors, "query", answer, native_answer)


@dataclass(slots=True)
class Job:
    """A request decoded, validated and planned: everything `finish` needs."""

    spec: OpSpec
    params: Any
    layout: Layout
    plan: Plan
    tensors: dict[str, Tensor]
    answer: str
    encoding: str
    executor: Executor
    encode: Encoder
    elements: int  # in the tensors and the output: how much work this is


def prepare(spec: OpSpec, decoded: Decoded, runtime: Runtime) -> Job | Response:
    """Validate and plan (a dry run's answer comes straight back)."""
    fields, tensors, prefix, answer = decoded.fields, decoded.tensors, decoded.prefix, decoded.answer
    x = tensors.get("input")
    key = _plan_key(spec, prefix, fields, tensors)
    prepared = runtime.plans.get(key) if key is not None else None
    if prepared is None:
        params = validate_params(spec, fields, prefix)
        if params.dry_run:
            return dry_run(spec, params, tensors, runtime, prefix)
        for name in ("input", *spec.family.extra_tensors):
            if name not in tensors:
                raise InvalidParameters.at(
                    (prefix, name), f"{name} is required (or dry_run with input_shape)", "missing"
                )
        if params.input_shape is not None:
            raise InvalidParameters.at((prefix, "input_shape"), "input_shape goes with dry_run: true", "dry_run")
        assert x is not None
        extra_shapes = {name: tensors[name].array.shape for name in spec.family.extra_tensors}
        layout = check_input(spec, params, x.array.shape, x.dtype, extra_shapes, prefix)
        plan = plan_output(spec, params, layout.canonical_shape(x.array.shape), runtime.limits)
        elements = sum(tensor.array.size for tensor in tensors.values()) + math.prod(plan.out_shape)
        prepared = Prepared(params, layout, plan, elements)
        if key is not None:
            runtime.plans.put(key, prepared)
    assert x is not None
    params = prepared.params
    encoding = params.output_encoding or ("npy_base64" if prefix == "query" else x.encoding)
    if x.dtype == "bfloat16" and (answer != JSON or encoding == "npy_base64"):
        raise InvalidParameters.at(
            (prefix, "output_encoding"),
            "a .npy cannot carry bfloat16: ask for JSON (json or flat encoding)",
            "bfloat16_npy",
        )
    if "random_seed" in params.__dict__ and params.random_seed is None:
        params = params.model_copy(update={"random_seed": secrets.randbits(63)})
    return Job(
        spec,
        params,
        prepared.layout,
        prepared.plan,
        tensors,
        answer,
        encoding,
        runtime.executor,
        decoded.encode,
        prepared.elements,
    )


def finish(job: Job) -> Response:
    """Compute and encode; in inference mode, wherever the caller runs it."""
    out, indices = compute(job.executor, job.spec, job.params, job.plan, job.layout, job.tensors)
    return job.encode(job, out, indices)


def native_answer(job: Job, out: np.ndarray, indices: np.ndarray | None) -> Response:
    x = job.tensors["input"]
    return encode_response(
        job.spec, job.params, x.dtype, out, indices, job.answer, job.encoding, job.executor.device_name
    )


@dataclass(frozen=True)
class Prepared:
    """What a request's parameters and tensor shapes determine, before any data is read."""

    params: Any
    layout: Layout
    plan: Plan
    elements: int


class PlanCache:
    """Validated parameters, layout and plan by (op, shapes, dtype, parameters): the same
    request shape comes again and again, and none of this depends on the data. A
    bounded dict, oldest entry out first, shared by the event loop and the pool."""

    def __init__(self, size: int) -> None:
        self._entries: dict[tuple[Any, ...], Prepared] = {}
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Prepared | None:
        return self._entries.get(key)

    def put(self, key: tuple[Any, ...], prepared: Prepared) -> None:
        if self._size <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._size:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = prepared


_MAX_KEY_BYTES = 1024  # larger parameter sets are planned afresh, not kept


def _plan_key(spec: OpSpec, prefix: str, fields: dict[str, Any], tensors: dict[str, Tensor]) -> tuple[Any, ...] | None:
    if "input" not in tensors:
        return None
    names = ("input", *spec.family.extra_tensors)
    parameters = orjson.dumps({key: value for key, value in fields.items() if key not in names})
    if len(parameters) > _MAX_KEY_BYTES:
        return None
    shapes = tuple(tensors[name].array.shape for name in names if name in tensors)
    return (spec.name, prefix, shapes, tensors["input"].dtype, parameters)


def plan_output(spec: OpSpec, params: Any, canonical: tuple[int, ...], limits: Limits) -> Plan:
    plan = spec.plan(params, canonical, limits.max_elements)
    size = math.prod(plan.out_shape)
    if size > limits.max_elements:
        raise TooLarge(f"the output would have {size} elements; the limit is {limits.max_elements}")
    return plan


def dry_run(spec: OpSpec, params: Any, tensors: dict[str, Tensor], runtime: Runtime, prefix: str) -> Response:
    """Everything but the computation: the output's shape, dtype and effective padding."""
    if tensors or params.input_shape is None:
        raise InvalidParameters.at(
            (prefix, "input_shape"), "dry_run takes input_shape in place of input (and of indices)", "dry_run"
        )
    shape = tuple(params.input_shape)
    codecs.check_size(shape, runtime.limits, (prefix, "input_shape"))
    layout = check_input(spec, params, shape, params.dtype, {}, prefix)
    plan = plan_output(spec, params, layout.canonical_shape(shape), runtime.limits)
    body = {
        "op": spec.name,
        "shape": list(layout.present_shape(plan.out_shape)),
        "dtype": params.dtype,
        "output": None,
        "indices": None,
        "device": runtime.executor.device_name,
        "padding": plan.padding,
    }
    return Response(orjson.dumps(body), media_type=JSON)


def encode_response(
    spec: OpSpec,
    params: Any,
    dtype: str,
    out: np.ndarray,
    indices: np.ndarray | None,
    answer: str,
    encoding: str,
    device: str,
) -> Response:
    seed = params.__dict__.get("random_seed")
    headers = {"X-Random-Seed": str(seed)} if seed is not None else None
    if answer == NPY:
        return Answer(codecs.encode_npy(out), NPY, headers)
    if answer == NPZ:
        arrays = {"output": out} if indices is None else {"output": out, "indices": indices}
        return Answer(codecs.encode_npz(arrays), NPZ, headers)
    body: dict[str, Any] = {
        "op": spec.name,
        "shape": list(out.shape),
        "dtype": dtype,
        "output": codecs.json_tensor(out, dtype, encoding),
        "indices": codecs.json_tensor(indices, "int64", encoding) if indices is not None else None,
        "device": device,
    }
    if seed is not None:
        body["random_seed"] = seed
    return Answer(orjson.dumps(body), JSON)
