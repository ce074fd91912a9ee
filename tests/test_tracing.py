"""Traces: spans exported to memory, over HTTP and gRPC, continuing the caller's traceparent,
with a child per phase and the request's attributes; the trace id in the log line and as
the request id; and tracing configured by the standard OTEL_* variables."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tritonclient.grpc as triton
from anyio.from_thread import start_blocking_portal
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from app.main import create_app
from app.settings import Settings
from app.tracing import provider_from_environment
from benchmarks.serve import free_port
from tests.conftest import Client

TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"
GRID = [[[[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]]]
PHASES = {"read body", "decode", "plan", "compute", "encode"}


@pytest.fixture
def traced(make_client):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    def build(**settings) -> Client:
        return make_client(app_options={"tracer_provider": provider}, **settings)

    yield build, exporter
    provider.shutdown()


def _tree(exporter: InMemorySpanExporter):
    spans = exporter.get_finished_spans()
    (server,) = [span for span in spans if span.kind == SpanKind.SERVER]
    children = [span for span in spans if span is not server]
    return server, children


@pytest.mark.parametrize("pooled", [False, True])
def test_a_request_continues_the_callers_trace_with_a_span_per_phase(traced, pooled):
    build, exporter = traced
    # Pooled: the body is decoded, and the work done, in the compute pool.
    client = build(inline_max_bytes=16, inline_max_work=0) if pooled else build()
    response = client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200
    server, children = _tree(exporter)
    assert server.name == "POST /pool/{op}"
    assert format(server.context.trace_id, "032x") == TRACE and format(server.parent.span_id, "016x") == PARENT
    names = {span.name for span in children}
    assert names == PHASES | ({"wait for a compute slot"} if pooled else set())
    for span in children:
        assert span.parent.span_id == server.context.span_id and span.context.trace_id == server.context.trace_id
        assert span.start_time <= span.end_time
    order = sorted(children, key=lambda span: span.start_time)
    assert order[0].name == "read body" and order[-1].name == "encode"
    attributes = server.attributes
    assert attributes["pool.op"] == "max2d" and attributes["pool.dtype"] == "float32"
    assert list(attributes["pool.input.shape"]) == [1, 1, 4, 4] and list(attributes["pool.output.shape"]) == [
        1,
        1,
        2,
        2,
    ]
    assert attributes["pool.device"] == "cpu" and attributes["http.response.status_code"] == 200
    assert attributes["http.request.body.size"] > 0 and attributes["http.response.body.size"] > 0
    # Logs and traces join: the request id is the trace id, and the log line carries it.
    assert response.headers["x-request-id"] == TRACE
    client.access_log.flush()
    line = json.loads(client.access_log.stream.getvalue().splitlines()[-1])
    assert line["trace_id"] == TRACE and line["request_id"] == TRACE


def test_errors_and_other_routes_are_traced_by_their_template(traced):
    build, exporter = traced
    client = build()
    response = client.post("/pool/max2d", json={"input": GRID})  # no kernel_size: 422
    assert response.status_code == 422
    server, children = _tree(exporter)
    assert server.parent is None  # no traceparent: a trace of its own
    assert server.attributes["http.response.status_code"] == 422 and server.status.status_code == StatusCode.UNSET
    assert {span.name for span in children} == {"read body", "decode", "plan"}
    assert response.headers["x-request-id"] == format(server.context.trace_id, "032x")
    exporter.clear()
    client.get("/v2/models/max2d/versions/1/config", headers={"x-request-id": "mine-1"})
    server, children = _tree(exporter)
    assert server.name == "GET /v2/models/{op}/versions/{version}/config" and not children
    exporter.clear()
    client.get("/no/such/path")
    assert _tree(exporter)[0].name == "GET"  # no route: no path in the name


def test_grpc_calls_continue_the_callers_trace(traced):
    _, exporter = traced
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    port = free_port()
    app = create_app(Settings(device="cpu", torch_threads=1, grpc_port=port), tracer_provider=provider)
    # The app's lifespan, and with it the gRPC server, on an event loop in a helper thread.
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(app.router.lifespan_context(app)):
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
        tensor = triton.InferInput("input", [1, 1, 4, 4], "FP32")
        tensor.set_data_from_numpy(x)
        result = client.infer("max2d", [tensor], parameters={"kernel_size": 2}, headers={"traceparent": TRACEPARENT})
        assert result.as_numpy("output").tolist() == [[[[5.0, 7.0], [13.0, 15.0]]]]
        client.close()
    server, children = _tree(exporter)
    assert server.name == "inference.GRPCInferenceService/ModelInfer"
    assert format(server.parent.span_id, "016x") == PARENT and format(server.context.trace_id, "032x") == TRACE
    assert server.attributes["rpc.system"] == "grpc" and server.attributes["pool.op"] == "max2d"
    assert {span.name for span in children} == PHASES - {"read body"}  # grpc read the message
    provider.shutdown()


def test_off_unless_the_environment_asks(monkeypatch, client):
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    assert provider_from_environment() is None
    assert client.app.state.runtime.tracer is None
    response = client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2}, headers={"traceparent": TRACEPARENT})
    assert response.headers["x-request-id"] != TRACE
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert provider_from_environment() is None


@pytest.mark.parametrize(
    ("environment", "exporter"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, HttpExporter),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcExporter),
        ({"OTEL_TRACES_EXPORTER": "console"}, ConsoleSpanExporter),
    ],
)
def test_the_environment_chooses_the_exporter(monkeypatch, environment, exporter):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "pooling-east")
    provider = provider_from_environment()
    assert provider is not None
    processors = provider._active_span_processor._span_processors
    assert [type(processor.span_exporter) for processor in processors] == [exporter]
    assert provider.resource.attributes["service.name"] == "pooling-east"
    provider.shutdown()


def test_an_unknown_exporter_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="otlp, console or none"):
        provider_from_environment()


def test_requests_left_out_by_the_sampler_cost_no_phase_spans(make_client):
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = make_client(app_options={"tracer_provider": provider})
    response = client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2}, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200 and response.json()["output"] == [[[[6.0, 8.0], [9.0, 7.0]]]]
    assert exporter.get_finished_spans() == ()
    provider.shutdown()
