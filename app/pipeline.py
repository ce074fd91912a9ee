"""One pooling request from bytes to an answer: read, decode, plan, admit, compute,
encode, the same for every door.

A door (`app.native` for `POST /pool/{op}`, `app.inference` for the Open
Inference Protocol) supplies the decoder that reads its wire format into a
`Decoded` and the encoder that writes the answer back; this module does the
rest. The checks run in the contract's order: body size (413), media type
(415), `Accept` (406), decoding (400), element counts (413), parameters
against the tensor (422), the output's size (413); only then does anything
compute.

Validation and planning name a faulty parameter alone; `prepare` and `finish`
locate it through the `Decoded`, which knows where each field arrived.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import numpy as np
import orjson
from opentelemetry.trace import Tracer
from pydantic import ValidationError

from app import codecs
from app.codecs import Limits, Tensor
from app.compression import inflate, request_coding
from app.dtypes import FLOAT_DTYPES
from app.errors import InvalidParameters, Loc, TimedOut, TooLarge, validation_problem
from app.execution import Executor, checkpoint, in_pieces, set_deadline, to_numpy
from app.layout import Layout, global_indices
from app.lifecycle import Lifecycle
from app.negotiation import NPY, NPZ
from app.operations import Operation
from app.params import PoolParams
from app.planning import Plan
from app.requests import BodyBudget, Incoming, PaceKeeper, disconnected, read_body
from app.statistics import InferenceStatistics, Timings
from app.telemetry import AccessLog, Metrics

log = logging.getLogger("app.pipeline")
R = TypeVar("R")  # a door's answer
B = TypeVar("B", bytes, bytearray)  # a door's body


@dataclass(frozen=True)
class Runtime:
    """What every request needs, built once by `create_app`."""

    operations: dict[str, Operation]
    executor: Executor
    limits: Limits
    max_body_bytes: int
    plans: PlanCache
    bodies: BodyBudget
    pace: PaceKeeper
    inline_max_bytes: int
    inline_max_work: int
    metrics: Metrics
    access_log: AccessLog
    statistics: InferenceStatistics
    batcher: Batching
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    tracer: Tracer | None = None  # None: tracing is off (`app.tracing`)


# Made for every request: a frozen dataclass's __init__ costs five times as much.
@dataclass(slots=True)
class Decoded(Generic[R]):
    """A request's fields and tensors as a door read them, where they arrived (for
    error locations), and how its answer is to be encoded."""

    fields: dict[str, Any]
    tensors: dict[str, Tensor]
    source: str  # where parameters arrive: `body`, `query` or `parameters`
    media_type: str  # negotiated for the answer
    encode: Encoder[R]
    dry: Callable[[DryRun], R] | None = None  # how a dry run is answered, where the door has them
    origins: dict[str | int, Loc] | None = None  # fields that arrive elsewhere (tensors), by name
    timeout_s: float | None = None  # the request's own time limit, where its door has one

    def locate(self, name: str | int) -> Loc:
        """Where the field `name` arrived: `("query", "kernel_size")`, `("inputs", 0)`."""
        if self.origins is not None and name in self.origins:
            return self.origins[name]
        return (self.source, name)


@dataclass(slots=True)
class Job(Generic[R]):
    """A request decoded, validated and planned: everything `finish` needs."""

    operation: Operation
    params: PoolParams
    layout: Layout
    plan: Plan
    tensors: dict[str, Tensor]
    encoding: str
    executor: Executor
    decoded: Decoded[R]
    timings: Timings | None = None  # where its phases are counted (a request's)


@dataclass(frozen=True)
class DryRun:
    """Everything but the computation: the output's shape, dtype and effective padding."""

    operation: Operation
    shape: tuple[int, ...]
    dtype: str
    padding: list[list[int]] | None
    work: int
    device: str


class Batching(Protocol):
    """Where small jobs of one plan are pooled together (`app.batching.Batcher`)."""

    def takes(self, job: Job[Any]) -> bool: ...

    def submit(self, job: Job[R]) -> Awaitable[R]: ...


Encoder = Callable[[Job[R], np.ndarray, "np.ndarray | None"], R]
# A door's decoder reads its body: REST's as read into a bytearray, gRPC's message as received.
Decoder = Callable[[Operation, B, Incoming, Runtime], Decoded[R]]


async def run_operation(
    operation: Operation, request: Incoming, runtime: Runtime, decoder: Decoder[bytearray, R], timings: Timings
) -> R:
    """One request. A small one is decoded, pooled and encoded right on the event loop,
    where a thread hop would cost more than the work (pooled in one torch call with
    others of its plan that arrive together, `app.batching`); a large body, or a large
    output, goes to the bounded compute pool, so cheap requests never wait behind it here."""
    coding = request_coding(request.headers.get("content-encoding"))
    reading = time.perf_counter_ns()
    raw = await read_body(request, runtime.max_body_bytes, runtime.bodies, runtime.pace)
    timings.mark("read body", reading)
    if coding is not None:
        inflating = time.perf_counter_ns()
        raw = await inflate(raw, coding, runtime.max_body_bytes, runtime.bodies)
        timings.mark("inflate", inflating)
    try:
        answer = await run_body(operation, raw, request, runtime, decoder, timings)
    finally:
        runtime.bodies.give_back(len(raw))
    # Only a request that ran to the end gives its buffer for reuse: one that timed out
    # may still be read by its computation.
    runtime.bodies.recycle(raw)
    return answer


async def run_body(
    operation: Operation, raw: B, request: Incoming, runtime: Runtime, decoder: Decoder[B, R], timings: Timings
) -> R:
    """A request whose body is in (and in the body budget), its phases timed into `timings`.
    An inference, for the statistics, from this moment: refusals before it (limits, pace,
    encoding) never reached the model."""
    started = time.perf_counter_ns()
    try:
        answer = await _answer(operation, request, runtime, raw, decoder, timings)
    except BaseException:
        runtime.statistics.record(operation.name, False, time.perf_counter_ns() - started, timings)
        raise
    finally:
        if timings.waited:
            runtime.metrics.queue_wait.observe(timings.queue / 1e9)
    runtime.statistics.record(operation.name, True, time.perf_counter_ns() - started, timings)
    return answer


async def _answer(
    operation: Operation, request: Incoming, runtime: Runtime, raw: B, decoder: Decoder[B, R], timings: Timings
) -> R:
    executor = runtime.executor
    arrived = time.monotonic()
    if len(raw) > runtime.inline_max_bytes:
        timings.queued_at = time.perf_counter_ns()
        return await executor.run(
            _whole, operation, raw, request, runtime, decoder, arrived, timings, gone=_watcher(request)
        )
    decoded, job = _prepared(operation, raw, request, runtime, decoder, timings)
    if not isinstance(job, Job):
        return job
    if job.plan.work <= runtime.inline_max_work:
        if runtime.batcher.takes(job):
            return await runtime.batcher.submit(job)
        return executor.inline(finish, job)
    timeout = None if decoded.timeout_s is None else decoded.timeout_s - (time.monotonic() - arrived)
    if timeout is not None and timeout <= 0:
        raise TimedOut("the request's timeout passed before its computation could start")
    timings.queued_at = time.perf_counter_ns()
    return await executor.run(finish, job, gone=_watcher(request), timeout=timeout)


def _watcher(request: Incoming) -> Callable[[], Awaitable[None]] | None:
    """What returns when the client has gone, where the request can tell."""
    receive = request.receive
    return None if receive is None else lambda: disconnected(receive)


def _whole(
    operation: Operation,
    raw: B,
    request: Incoming,
    runtime: Runtime,
    decoder: Decoder[B, R],
    arrived: float,
    timings: Timings,
) -> R:
    timings.started()
    decoded, job = _prepared(operation, raw, request, runtime, decoder, timings)
    if decoded.timeout_s is not None:  # known only now: the checkpoints from here on keep it
        deadline = arrived + decoded.timeout_s
        if time.monotonic() > deadline:
            raise TimedOut("the request's timeout passed while it waited for a compute slot and was decoded")
        set_deadline(deadline)
    checkpoint()  # decoding a large body takes a while: the client may be gone
    return finish(job) if isinstance(job, Job) else job


def _prepared(
    operation: Operation, raw: B, request: Incoming, runtime: Runtime, decoder: Decoder[B, R], timings: Timings
) -> tuple[Decoded[R], Job[R] | R]:
    """Decoded, validated and planned, wherever that runs, with its time counted as the
    statistics' compute_input; a dry run's answer comes back in place of the job."""
    decoding = time.perf_counter_ns()
    try:  # a phase that fails is traced too: where a request was refused shows
        decoded = decoder(operation, raw, request, runtime)
    finally:
        timings.mark("decode", decoding)
    timings.dry_run = decoded.fields.get("dry_run") is True
    planning = time.perf_counter_ns()
    try:
        job = prepare(operation, decoded, runtime)
    finally:
        timings.mark("plan", planning)
    timings.compute_input = time.perf_counter_ns() - decoding
    if isinstance(job, Job):
        job.timings = timings
    return decoded, job


def prepare(operation: Operation, decoded: Decoded[R], runtime: Runtime) -> Job[R] | R:
    """Validate and plan (a dry run's answer comes straight back)."""
    try:
        return _prepare(operation, decoded, runtime)
    except InvalidParameters as problem:
        raise problem.located(decoded.locate, decoded.source) from None


def _prepare(operation: Operation, decoded: Decoded[R], runtime: Runtime) -> Job[R] | R:
    family = operation.family
    fields, tensors = decoded.fields, decoded.tensors
    x = tensors.get("input")
    key = _plan_key(operation, decoded.source, fields, tensors)
    prepared = runtime.plans.get(key) if key is not None else None
    if prepared is None:
        params = validate_params(operation, fields)
        if params.dry_run:
            return _dry_run(operation, params, decoded, runtime)
        for name in ("input", *family.extra_tensors):
            if name not in tensors:
                raise InvalidParameters.at((name,), f"{name} is required (or dry_run with input_shape)", "missing")
        if params.input_shape is not None:
            raise InvalidParameters.at(("input_shape",), "input_shape goes with dry_run: true", "dry_run")
        assert x is not None
        extra_shapes = {name: tensors[name].array.shape for name in family.extra_tensors}
        layout = check_input(operation, params, x.array.shape, x.dtype, extra_shapes)
        plan = plan_output(operation, params, layout.canonical_shape(x.array.shape), runtime.limits)
        prepared = Prepared(params, layout, plan)
        if key is not None:
            runtime.plans.put(key, prepared)
    assert x is not None
    params = prepared.params.seeded()
    encoding = params.output_encoding or ("npy_base64" if decoded.source == "query" else x.encoding)
    if x.dtype == "bfloat16" and (decoded.media_type in (NPY, NPZ) or encoding == "npy_base64"):
        raise InvalidParameters.at(
            ("output_encoding",), "a .npy cannot carry bfloat16: ask for JSON (json or flat encoding)", "bfloat16_npy"
        )
    return Job(
        operation,
        params,
        prepared.layout,
        prepared.plan,
        tensors,
        encoding,
        runtime.executor,
        decoded,
    )


def finish(job: Job[R]) -> R:
    """Compute and encode; in inference mode, wherever the caller runs it."""
    timings = job.timings
    if timings is not None:
        timings.started()
    computing = time.perf_counter_ns()
    try:
        out, indices = compute(job)
    except InvalidParameters as problem:
        raise problem.located(job.decoded.locate, job.decoded.source) from None
    checkpoint()
    if timings is not None:
        timings.execution = 1
    return encoded(job, out, indices, computing, time.perf_counter_ns())


def encoded(job: Job[R], out: np.ndarray, indices: np.ndarray | None, computing: int, computed: int) -> R:
    """The job's answer to its `out` and `indices`, computed from `computing` to `computed`
    (perf_counter_ns), with its phases counted."""
    timings = job.timings
    if timings is not None:
        timings.compute_infer = computed - computing
    encoding = time.perf_counter_ns()
    answer = job.decoded.encode(job, out, indices)
    if timings is not None:
        timings.compute_output = time.perf_counter_ns() - encoding
        timings.computed = True
        if timings.marks is not None:
            timings.marks += [("compute", computing, computed), ("encode", encoding, time.perf_counter_ns())]
            timings.details = {
                "pool.op": job.operation.name,
                "pool.dtype": job.tensors["input"].dtype,
                "pool.input.shape": list(job.tensors["input"].array.shape),
                "pool.output.shape": list(out.shape),
                "pool.device": job.executor.device_name,
            }
    return answer


def validate_params(operation: Operation, fields: dict[str, Any]) -> PoolParams:
    try:
        return operation.params.model_validate(fields)
    except ValidationError as exc:
        raise validation_problem(exc, operation.params.model_fields) from None


def _layout_text(rank: int, channels_last: bool) -> str:
    spatial = ["L"] if rank == 1 else ["H", "W"] if rank == 2 else ["D", "H", "W"]
    dims = [*spatial, "C"] if channels_last else ["C", *spatial]
    return "(N, " + ", ".join(dims) + ")"


def check_input(
    operation: Operation,
    params: PoolParams,
    shape: tuple[int, ...],
    dtype: str,
    extra_shapes: dict[str, tuple[int, ...]],
) -> Layout:
    """Rank, sizes and dtype of the input for this op, and the layout it arrived in."""
    rank, family = operation.rank, operation.family
    channels_last = params.data_format == "channels_last"
    where = ("input_shape" if params.dry_run else "input",)
    if len(shape) not in (rank + 1, rank + 2):
        raise InvalidParameters.at(
            where,
            f"{operation.name} takes {rank + 2} dimensions {_layout_text(rank, channels_last)} "
            f"or {rank + 1} without the batch; got {len(shape)}",
            "rank",
        )
    layout = Layout(rank, len(shape) == rank + 2, channels_last, params.keeps_dims())
    if 0 in layout.canonical_shape(shape)[1:]:
        raise InvalidParameters.at(where, f"shape {list(shape)} has a zero-sized channel or spatial dimension", "empty")
    if dtype not in family.dtypes:
        kinds = "floating-point" if family.dtypes == FLOAT_DTYPES else ", ".join(family.dtypes)
        raise InvalidParameters.at(where, f"{operation.name} takes {kinds} tensors, not {dtype}", "dtype")
    for name, extra in extra_shapes.items():
        if extra != shape:
            raise InvalidParameters.at(
                (name,), f"{name} has shape {list(extra)}; it must match input's {list(shape)}", "shape"
            )
    return layout


def compute(job: Job[Any], batch: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Runs where the job runs: to the device in torch's layout, pool, back in the request's;
    on `batch` in place of the job's input, where a batch of jobs like it runs as one
    (`app.batching`)."""
    executor, operation, params, layout = job.executor, job.operation, job.params, job.layout
    x = job.tensors["input"]
    tensor = layout.canonical(executor.to_device(x.array if batch is None else batch, x.dtype))
    extra = {
        name: layout.canonical(executor.to_device(job.tensors[name].array, "int64"))
        for name in operation.family.extra_tensors
    }
    try:
        if operation.before_pieces is not None:
            extra = operation.before_pieces(tensor, params, job.plan, extra)
        out, indices = in_pieces(operation.kernel, tensor, params, job.plan, extra)
    except (RuntimeError, ValueError, TypeError, OverflowError) as exc:
        # The pre-checks should have caught this; never let it become a 500.
        log.warning("%s refused by torch after validation: %s", operation.name, exc)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InvalidParameters(f"{operation.name} cannot run on this input: {first_line}") from None
    if indices is not None and params.global_indices():
        indices = global_indices(indices, tuple(tensor.shape))
    out = layout.present(out)
    return to_numpy(out), to_numpy(layout.present(indices)) if indices is not None else None


@dataclass(frozen=True)
class Prepared:
    """What a request's parameters and tensor shapes determine, before any data is read."""

    params: PoolParams
    layout: Layout
    plan: Plan


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


def _plan_key(
    operation: Operation, source: str, fields: dict[str, Any], tensors: dict[str, Tensor]
) -> tuple[Any, ...] | None:
    if "input" not in tensors:
        return None
    names = ("input", *operation.family.extra_tensors)
    parameters = orjson.dumps({key: value for key, value in fields.items() if key not in names})
    # orjson writes NaN and the infinities as null too: a key with a null is ambiguous, not kept.
    if len(parameters) > _MAX_KEY_BYTES or b"null" in parameters:
        return None
    shapes = tuple(tensors[name].array.shape for name in names if name in tensors)
    return (operation.name, source, shapes, tensors["input"].dtype, parameters)


def plan_output(operation: Operation, params: PoolParams, canonical: tuple[int, ...], limits: Limits) -> Plan:
    """The plan, within the limits: its work under the cap (422, a parameter check),
    then its output and scratch copies under the element limit (413)."""
    plan = operation.family.plan(params, canonical)
    if plan.work > limits.max_work:
        message = (
            f"{operation.name} with these parameters would visit {plan.work} cells; the limit is {limits.max_work}"
        )
        raise InvalidParameters(message, errors=[{"loc": [], "msg": message, "type": "too_much_work"}])
    size = math.prod(plan.out_shape)
    if size > limits.max_elements:
        raise TooLarge(f"the output would have {size} elements; the limit is {limits.max_elements}")
    if plan.scratch > 2 * limits.max_elements:
        raise TooLarge(f"the padded input would span {plan.scratch} elements; the limit is {2 * limits.max_elements}")
    return plan


def _dry_run(operation: Operation, params: PoolParams, decoded: Decoded[R], runtime: Runtime) -> R:
    if decoded.dry is None:
        raise InvalidParameters.at(("dry_run",), "this protocol has no dry runs", "dry_run")
    if decoded.tensors or params.input_shape is None:
        raise InvalidParameters.at(
            ("input_shape",), "dry_run takes input_shape in place of input (and of indices)", "dry_run"
        )
    shape = tuple(params.input_shape)
    codecs.check_size(shape, runtime.limits, ("input_shape",))
    layout = check_input(operation, params, shape, params.dtype, {})
    plan = plan_output(operation, params, layout.canonical_shape(shape), runtime.limits)
    present = layout.present_shape(plan.out_shape)
    return decoded.dry(DryRun(operation, present, params.dtype, plan.padding, plan.work, runtime.executor.device_name))
