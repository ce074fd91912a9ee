"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService` and
the standard `grpc.health.v1` service, on their own port (`POOL_GRPC_PORT`), in the same
process and event loop as the HTTP server.

The messages and the service are Triton's, as `tritonclient[grpc]` ships them (generated
from Triton's `grpc_service.proto` and `model_config.proto`), so any Triton or KServe v2
gRPC client works unchanged. `ModelInfer` goes through the same pipeline as
`POST /v2/models/{op}/infer`: its message arrives as bytes and is decoded like a body, on the
event loop when small and in the compute pool when large, within the same limits, body
budget, work cap and time limits (a call's deadline is its timeout). The metadata, readiness,
configuration, statistics and repository index calls answer what their REST routes answer.

Every call passes `_Calls.handle`, which does for gRPC what the gate does for HTTP:
a request id (metadata `x-request-id`, echoed in the trailing metadata), the API key for
the calls that compute or report usage (metadata `authorization: Bearer <key>` or
`x-api-key`), the metrics and the access log line, and errors as status codes
(`CODES`, as Triton maps its own).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import unquote

import grpc
import numpy as np
import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health
from tritonclient.grpc import service_pb2 as pb

from app.codecs import Tensor
from app.dtypes import TABLE
from app.errors import BodyTooSlow, InvalidParameters, Loc, NotFound, ProblemError, TooLarge, UndecodableBody
from app.identity import key_matches, presented_key, request_id_from
from app.lifecycle import Event
from app.negotiation import OCTET_STREAM
from app.operations import Operation
from app.paths import VERSION
from app.pipeline import Decoded, Encoder, Job, Runtime, run_body
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
from app.settings import Settings
from app.statistics import Timings
from app.telemetry import PROTOCOLS
from app.tracing import CARRIED, end_server_span, server_span, trace_id

log = logging.getLogger("app.grpc")

SERVICE = "inference.GRPCInferenceService"
# HTTP statuses as gRPC codes, as Triton maps its errors: a request that cannot be served as
# sent is INVALID_ARGUMENT (a size over a limit is RESOURCE_EXHAUSTED, as grpc itself answers a
# message over the limit), a refusal before any work is UNAVAILABLE, retried by clients.
CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    406: grpc.StatusCode.INVALID_ARGUMENT,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
# A connection is asked to reconnect after this long, its calls then given the body's (or a
# computation's) time limit to finish: grpc reads a message whole before the service sees it,
# so a message that trickles in holds its place among grpc_max_calls for this long at most.
CONNECTION_AGE_S = 120


class GrpcServer:
    """The gRPC server of one app, started and stopped by its lifespan (`app.main`)."""

    def __init__(self, runtime: Runtime, settings: Settings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.port: int | None = None  # bound, once started
        self._server: grpc.aio.Server | None = None
        self._health = _Health()
        self._stopping: asyncio.Task[None] | None = None
        self._unready: asyncio.Future[None] | None = None  # held only so the task is not collected

    async def start(self) -> None:
        settings = self.settings
        computing = settings.request_timeout_s or 0
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),  # answers are bounded by the element limit
                ("grpc.max_metadata_size", settings.max_header_bytes),
                ("grpc.max_connection_idle_ms", int(settings.grpc_idle_s * 1000)),
                ("grpc.max_connection_age_ms", CONNECTION_AGE_S * 1000),
                ("grpc.max_connection_age_grace_ms", int(1000 * max(settings.body_timeout_s, computing))),
                # `python -m app`'s worker processes share the port; a lone one owns it.
                ("grpc.so_reuseport", int(settings.workers > 1)),
            ],
            maximum_concurrent_rpcs=settings.grpc_max_calls,
        )
        calls = _Calls(self.runtime, settings.api_keys, settings.body_timeout_s)
        server.add_generic_rpc_handlers((calls.handlers(),))
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        host = f"[{settings.host}]" if ":" in settings.host else settings.host
        self.port = server.add_insecure_port(f"{host}:{settings.grpc_port}")
        await server.start()
        self._server = server
        draining = self.runtime.lifecycle.draining
        await self._serving(
            health_pb2.HealthCheckResponse.NOT_SERVING if draining else health_pb2.HealthCheckResponse.SERVING
        )
        log.info("gRPC server listening on %s:%d", settings.host, self.port)

    def stop(self) -> asyncio.Task[None]:
        """Stops taking calls at once and lets those in flight finish within the shutdown
        grace; the same task however often it is asked."""
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(self._stop())
        return self._stopping

    async def _stop(self) -> None:
        if self._server is not None:
            await self._health.enter_graceful_shutdown()
            await self._server.stop(self.settings.shutdown_grace_s)

    def heard(self, event: Event) -> None:
        """What the lifecycle says (`Lifecycle.watch`)."""
        if self._server is None:
            return
        if event == "draining":  # unready, as /readyz, while calls are still served
            self._unready = asyncio.ensure_future(self._serving(health_pb2.HealthCheckResponse.NOT_SERVING))
        elif event == "closing":
            self.stop()

    async def _serving(self, status: int) -> None:
        for service in ("", SERVICE):
            await self._health.set(service, status)


class _Call:
    """What the access log, the metrics and the trace record of one call."""

    __slots__ = ("bytes_in", "bytes_out", "op", "status", "timings")

    def __init__(self, traced: bool, op: str | None) -> None:
        self.status = 200
        self.op = op  # metered when it computes: `unknown` until its model is known
        self.bytes_in = self.bytes_out = 0
        self.timings = Timings(traced)  # the phases of an inference


Handler = Callable[[Any, grpc.aio.ServicerContext, _Call], Awaitable[Any]]


class _Calls:
    """The service's calls, each behind `handle`."""

    def __init__(self, runtime: Runtime, keys: list[str], message_timeout_s: float) -> None:
        self.runtime = runtime
        self._keys = [key.encode() for key in keys]
        self._message_timeout_s = message_timeout_s

    def handlers(self) -> grpc.GenericRpcHandler:
        def unary(
            name: str, handler: Handler, request: type[Message] | None, keyed: bool = False
        ) -> grpc.RpcMethodHandler:
            async def handle(messages: Any, context: grpc.aio.ServicerContext) -> Any:
                return await self.handle(name, handler, request, context, keyed)

            # Every call is taken from its first bytes (as a stream, which grpc hands over at once),
            # so that its message can be given a time to arrive, and parsed here, where a malformed
            # one is an INVALID_ARGUMENT. ModelInfer's message goes to the pipeline as bytes, and
            # its answer comes back as bytes: they are decoded and encoded where the work belongs.
            return grpc.stream_unary_rpc_method_handler(handle, response_serializer=_serialized)

        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "ServerLive": unary("ServerLive", self.live, pb.ServerLiveRequest),
                "ServerReady": unary("ServerReady", self.ready, pb.ServerReadyRequest),
                "ModelReady": unary("ModelReady", self.model_ready, pb.ModelReadyRequest),
                "ServerMetadata": unary("ServerMetadata", self.server_metadata, pb.ServerMetadataRequest),
                "ModelMetadata": unary("ModelMetadata", self.model_metadata, pb.ModelMetadataRequest),
                "ModelConfig": unary("ModelConfig", self.model_config, pb.ModelConfigRequest),
                "ModelStatistics": unary("ModelStatistics", self.statistics, pb.ModelStatisticsRequest, keyed=True),
                "RepositoryIndex": unary("RepositoryIndex", self.index, pb.RepositoryIndexRequest),
                "ModelInfer": unary("ModelInfer", self.infer, None, keyed=True),
            },
        )

    async def handle(
        self,
        name: str,
        handler: Handler,
        request: type[Message] | None,
        context: grpc.aio.ServicerContext,
        keyed: bool,
    ) -> Any:
        started = time.perf_counter()
        peer = _peer(context.peer())  # read now: it is gone once the call is
        metadata = [
            (key.encode(), value.encode() if isinstance(value, str) else value)
            for key, value in context.invocation_metadata() or ()
        ]
        tracer, span = self.runtime.tracer, None
        if tracer is not None:
            carrier = {key.decode(): value.decode("latin-1") for key, value in metadata if key.decode() in CARRIED}
            attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name}
            span = server_span(tracer, f"{SERVICE}/{name}", carrier, attributes)
        given = next((value for key, value in metadata if key == b"x-request-id"), None)
        rid = request_id_from(given, trace_id(span) if span is not None else None)
        trailing: tuple[tuple[str, str], ...] = (("x-request-id", rid),)
        call = _Call(span is not None and span.is_recording(), "unknown" if name == "ModelInfer" else None)
        try:
            if keyed and self._keys and not key_matches(self._keys, presented_key(metadata)):
                call.status = 401
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED,
                    "this call needs an API key: send metadata authorization: Bearer <key> or x-api-key: <key>",
                    trailing,
                )
            raw = await self._message(context)
            call.bytes_in = len(raw)
            answer = await handler(raw if request is None else _parsed(request, raw), context, call)
            context.set_trailing_metadata(trailing)
            return answer
        except ProblemError as problem:
            call.status = problem.status
            trailing += tuple((header.lower(), value) for header, value in problem.headers.items())
            await context.abort(CODES.get(problem.status, grpc.StatusCode.INTERNAL), details(problem), trailing)
        except asyncio.CancelledError:
            call.status = 499  # the client cancelled, or its deadline passed: nobody is left to answer
            raise
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            call.status = 500
            log.error("unhandled error in %s [request %s]", name, rid, exc_info=exc)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error; quote the request id {rid} when reporting it", trailing
            )
        finally:
            seconds = time.perf_counter() - started
            if call.op is not None:
                metrics = self.runtime.metrics
                metrics.observe(call.op, PROTOCOLS["grpc"], call.status, seconds, call.bytes_in, call.bytes_out)
            if span is not None and tracer is not None:
                span.set_attributes({"pool.op": call.op or "", "rpc.request.size": call.bytes_in})
                span.set_attribute("rpc.response.size", call.bytes_out)
                end_server_span(tracer, span, call.status, call.timings)
            self.runtime.access_log.request(
                rid,
                "GRPC",
                f"/{SERVICE}/{name}",
                call.op,
                call.status,
                seconds,
                call.bytes_in,
                call.bytes_out,
                peer,
                trace_id(span) if span is not None else None,
            )

    async def _message(self, context: grpc.aio.ServicerContext) -> bytes:
        """The call's one message, which must arrive whole within the body's time limit: grpc
        sets no bound on a message that trickles in, holding its place among the calls."""
        try:
            message = await asyncio.wait_for(context.read(), self._message_timeout_s)
        except TimeoutError:
            raise BodyTooSlow(f"the message did not arrive within {self._message_timeout_s:g} s") from None
        if not isinstance(message, bytes):  # the stream ended with no message
            raise UndecodableBody("the call carried no message")
        return message

    def _operation(self, name: str, version: str) -> Operation:
        return find_model(self.runtime.operations, name, version)

    async def live(self, request: pb.ServerLiveRequest, context: Any, call: _Call) -> Message:
        return pb.ServerLiveResponse(live=True)

    async def ready(self, request: pb.ServerReadyRequest, context: Any, call: _Call) -> Message:
        return pb.ServerReadyResponse(ready=not self.runtime.lifecycle.draining)

    async def model_ready(self, request: pb.ModelReadyRequest, context: Any, call: _Call) -> Message:
        self._operation(request.name, request.version)
        return pb.ModelReadyResponse(ready=True)

    async def server_metadata(self, request: pb.ServerMetadataRequest, context: Any, call: _Call) -> Message:
        return json_format.ParseDict(server_metadata(), pb.ServerMetadataResponse())

    async def model_metadata(self, request: pb.ModelMetadataRequest, context: Any, call: _Call) -> Message:
        operation = self._operation(request.name, request.version)
        # The proto's tensors have no parameters: the list of datatypes stays REST's.
        return json_format.ParseDict(model_metadata(operation), pb.ModelMetadataResponse(), ignore_unknown_fields=True)

    async def model_config(self, request: pb.ModelConfigRequest, context: Any, call: _Call) -> Message:
        operation = self._operation(request.name, request.version)
        return json_format.ParseDict({"config": model_config(operation)}, pb.ModelConfigResponse())

    async def statistics(self, request: pb.ModelStatisticsRequest, context: Any, call: _Call) -> Message:
        names = [self._operation(request.name, request.version).name] if request.name else self.runtime.operations
        return json_format.ParseDict(statistics_of(self.runtime, names), pb.ModelStatisticsResponse())

    async def index(self, request: pb.RepositoryIndexRequest, context: Any, call: _Call) -> Message:
        models = repository_index(self.runtime.operations)
        return json_format.ParseDict({"models": models}, pb.RepositoryIndexResponse())

    async def infer(self, raw: bytes, context: grpc.aio.ServicerContext, call: _Call) -> bytes:
        name, version = model_of(raw)
        operation = self._operation(name, version)
        call.op = operation.name
        # grpc's own cancellation ends the call (and the computation) when the client goes, so
        # the pipeline needs no watcher.
        incoming = Incoming({}, None, None, context.time_remaining())
        # The message, its parsed copy and each raw tensor as bytes and as an array: as much as
        # the REST path holds for a body, counted the same way.
        held = _HELD_COPIES * len(raw)
        bodies = self.runtime.bodies
        bodies.take(held)
        try:
            answer = await run_body(operation, raw, incoming, self.runtime, decode_infer, call.timings)
        finally:
            bodies.give_back(held)
        call.bytes_out = len(answer)
        return answer


def _parsed(request: type[Message], raw: bytes) -> Message:
    try:
        return request.FromString(raw)
    except DecodeError:
        raise UndecodableBody(f"the message is not a serialized {request.__name__}") from None


def _serialized(answer: Message | bytes) -> bytes:
    return answer if isinstance(answer, bytes) else answer.SerializeToString()


def details(problem: ProblemError) -> str:
    """A problem as a status message: each fault where it lies, or else its detail."""
    faults = [
        f"{'.'.join(str(part) for part in error.get('loc', ())) or 'request'}: {error.get('msg')}"
        for error in problem.errors or []
    ]
    if not faults:
        return problem.detail
    more = f" (and {len(faults) - 5} more)" if len(faults) > 5 else ""
    return "; ".join(faults[:5]) + more


def _peer(peer: str) -> tuple[str, int] | None:
    """`ipv4:127.0.0.1:5000` → ("127.0.0.1", 5000); `ipv6:%5B::1%5D:5000` → ("::1", 5000)."""
    _, _, address = unquote(peer).partition(":")
    host, _, port = address.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else None


class _Health(health.HealthServicer):
    """grpc.health.v1 as probes use it: Check. Watch, a stream held open for as long as the
    client likes, with no key asked, would hold a place among grpc_max_calls: polling Check
    tells the same."""

    async def Watch(self, request: Any, context: Any) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Watch is not served here: poll Check")


# A ModelInferRequest read from the wire before it is parsed: its model, and a bound on its
# fields. Parsed whole, a message of many tiny fields (64 MiB of empty `outputs`) would become
# tens of millions of objects; a request has a few inputs, outputs and parameters, and its
# tensors' data are single fields (packed arrays, or raw bytes).
MOST_FIELDS = 1024
LONGEST_NAME = 256  # a model's name or version, in bytes
MOST_DIMENSIONS = 32  # the most POOL_MAX_NDIM allows
LONGEST_SHAPE = 10 * MOST_DIMENSIONS  # a packed shape's bytes: ten at most for each dimension
_HELD_COPIES = 3  # of a message while it is decoded (see `_Calls.infer`)
# The fields that hold messages, by message: ModelInferRequest's parameters (4, map entries
# whose value, 2, is an InferParameter), inputs (5) and outputs (6); an input's parameters (4)
# and contents (5); an output's parameters (2).
_NESTED: dict[str, dict[int, str]] = {
    "request": {4: "entry", 5: "input", 6: "output"},
    "entry": {2: "leaf"},
    "input": {4: "entry", 5: "leaf"},
    "output": {2: "entry"},
    "leaf": {},
}


def model_of(raw: bytes) -> tuple[str, str]:
    """The model name and version of a serialized ModelInferRequest, read without parsing it,
    after checking that it holds at most MOST_FIELDS fields in all."""
    found: dict[int, bytes] = {}
    _walk(memoryview(raw), 0, len(raw), "request", [MOST_FIELDS], found)
    try:
        return found.get(1, b"").decode(), found.get(2, b"").decode()
    except UnicodeDecodeError:
        raise UndecodableBody("the model name or version is not UTF-8") from None


def _walk(data: memoryview, position: int, end: int, kind: str, left: list[int], found: dict[int, bytes]) -> None:
    nested = _NESTED[kind]
    while position < end:
        left[0] -= 1
        if left[0] < 0:
            raise UndecodableBody(f"the inference request has more than {MOST_FIELDS} fields")
        key, position = _varint(data, position, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            _, position = _varint(data, position, end)
        elif wire == 1:
            position += 8
        elif wire == 5:
            position += 4
        elif wire == 2:
            length, position = _varint(data, position, end)
            stop = position + length
            if stop > end:
                raise _not_a_request()
            if kind == "input" and number == 3 and length > LONGEST_SHAPE:
                raise TooLarge(f"an input's shape holds more dimensions than any tensor may ({MOST_DIMENSIONS})")
            if number in nested:
                _walk(data, position, stop, nested[number], left, found)
            elif kind == "request" and number in (1, 2):
                if length > LONGEST_NAME:
                    raise NotFound(f"no model has a name or version of {length} bytes")
                found[number] = bytes(data[position:stop])
            position = stop
        else:  # groups, long gone from protobuf, and no wire type at all
            raise _not_a_request()
    if position != end:
        raise _not_a_request()


def _varint(data: memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, position
        shift += 7
    raise _not_a_request()


def _not_a_request() -> UndecodableBody:
    return UndecodableBody("the message is not a serialized ModelInferRequest")


_TYPED_SLICE = 1 << 16
# Typed contents: each datatype's field of InferTensorContents, and the numpy type it holds.
_CONTENTS = {
    "BOOL": ("bool_contents", np.bool_),
    "INT8": ("int_contents", np.int32),
    "INT16": ("int_contents", np.int32),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "UINT8": ("uint_contents", np.uint32),
    "UINT16": ("uint_contents", np.uint32),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
}


def decode_infer(operation: Operation, raw: bytes, request: Incoming, runtime: Runtime) -> Decoded[bytes]:
    try:
        message = pb.ModelInferRequest.FromString(raw)
    except DecodeError:
        raise _not_a_request() from None
    parameters = {key: _parameter(value, ("parameters", key)) for key, value in message.parameters.items()}
    fields, timeout_s = request_fields(operation, parameters)
    if request.timeout_s is not None:  # the call's deadline
        timeout_s = request.timeout_s if timeout_s is None else min(timeout_s, request.timeout_s)
    if not message.inputs:
        raise protocol_error(("inputs",), "inputs is a non-empty list")
    raws = message.raw_input_contents
    if raws and len(raws) != len(message.inputs):
        raise protocol_error(
            ("raw_input_contents",), f"holds {len(raws)} tensors for {len(message.inputs)} inputs; send all or none"
        )
    seen: set[str] = set()
    for index, entry in enumerate(message.inputs):  # before any data is read: names are cheap
        if entry.name in seen:
            raise protocol_error(("inputs", index, "name"), f"{entry.name} is given twice")
        seen.add(entry.name)
        if len(entry.shape) > runtime.limits.max_ndim:
            raise TooLarge(f"inputs.{index} has {len(entry.shape)} dimensions; the limit is {runtime.limits.max_ndim}")
    given: list[tuple[str, Tensor]] = []
    for index, entry in enumerate(message.inputs):
        where: Loc = ("inputs", index)
        if entry.parameters:
            raise protocol_error((*where, "parameters"), "this server reads no input parameters (no shared memory)")
        dtype, shape = input_header(operation, where, entry.name, list(entry.shape), entry.datatype, runtime)
        if raws:
            if entry.HasField("contents"):
                raise protocol_error((*where, "contents"), "the data are in raw_input_contents: send them once")
            content = memoryview(raws[index])
            array = binary_array(content, 0, len(content), shape, dtype, ("raw_input_contents", index))
        else:
            array = _typed(entry, shape, dtype, where)
        given.append((entry.name, Tensor(array, dtype, "json")))  # "json": as the REST protocol's tensors
    names = ("output", "indices") if operation.family.has_indices else ("output",)
    wanted: list[str] = []
    for index, output in enumerate(message.outputs):
        if output.name not in names or output.name in wanted:
            raise protocol_error(
                ("outputs", index, "name"), f"{operation.name} has the outputs {', '.join(names)}, each once"
            )
        if output.parameters:  # classification, shared memory: nothing this server does
            raise protocol_error(("outputs", index, "parameters"), "this server reads no output parameters")
        wanted.append(output.name)
    tensors, origins = tensors_of(operation, given, fields, wanted or None)
    return Decoded(
        fields,
        tensors,
        source="parameters",
        media_type=OCTET_STREAM,
        encode=_encoder(message.id, wanted or None),
        origins=origins,
        timeout_s=timeout_s,
    )


def _parameter(value: pb.InferParameter, where: Loc) -> Any:
    """An InferParameter's value. It has no list type: a list (kernel_size [2, 2]) arrives as
    a string holding its JSON, `"[2, 2]"`."""
    kind = value.WhichOneof("parameter_choice")
    if kind is None:
        raise protocol_error(where, "has no value")
    found = getattr(value, kind)
    if kind == "string_param" and found.lstrip()[:1] in ("[", "{"):
        try:
            return orjson.loads(found)
        except orjson.JSONDecodeError:
            raise protocol_error(where, "a list or object goes as its JSON text") from None
    return found


def _typed(entry: pb.ModelInferRequest.InferInputTensor, shape: list[int], dtype: str, where: Loc) -> np.ndarray:
    """An input's data from its typed `contents`, exactly or not at all."""
    datatype = TABLE[dtype].protocol
    field, wide = _CONTENTS.get(datatype, (None, None))
    given = [descriptor.name for descriptor, _ in entry.contents.ListFields()]  # the non-empty ones
    if field is None or wide is None:
        raise protocol_error((*where, "contents"), f"{datatype} has no typed contents: send it in raw_input_contents")
    if given not in ([field], [] if math.prod(shape) == 0 else None):
        raise protocol_error(
            (*where, "contents"), f"{datatype} data go in contents.{field} (or raw_input_contents), and only there"
        )
    values = getattr(entry.contents, field)
    if len(values) != math.prod(shape):
        raise protocol_error(
            (*where, "contents", field), f"holds {len(values)} values; shape {shape} needs {math.prod(shape)}"
        )
    array: np.ndarray = np.empty(len(values), dtype=wide)
    # A slice at a time, so the conversion lets the event loop's thread in between.
    for start in range(0, len(values), _TYPED_SLICE):
        array[start : start + _TYPED_SLICE] = values[start : start + _TYPED_SLICE]
    if array.dtype.kind in "iu" and np.dtype(dtype) != array.dtype and array.size:
        limits = np.iinfo(dtype)
        if array.min() < limits.min or array.max() > limits.max:
            raise InvalidParameters.at((*where, "contents", field), f"holds values outside {datatype}", "dtype")
    return array.astype(dtype, copy=False).reshape(shape)


def _encoder(request_id: str, wanted: list[str] | None) -> Encoder[bytes]:
    def encode(job: Job[bytes], out: np.ndarray, indices: np.ndarray | None) -> bytes:
        produced: dict[str, tuple[np.ndarray | None, str]] = {
            "output": (out, job.tensors["input"].dtype),
            "indices": (indices, "int64"),
        }
        response = pb.ModelInferResponse(model_name=job.operation.name, model_version=VERSION, id=request_id)
        for name in wanted or ("output", "indices"):
            array, dtype = produced[name]
            if array is None:
                continue
            response.outputs.add(name=name, datatype=TABLE[dtype].protocol, shape=array.shape)
            response.raw_output_contents.append(binary_bytes(array, dtype))
        seed = job.params.seed()
        if seed is not None:
            response.parameters["random_seed"].int64_param = seed
        return response.SerializeToString()

    return encode
