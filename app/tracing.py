"""Traces with OpenTelemetry: a server span for every request, over HTTP and gRPC, that
continues the caller's W3C `traceparent`, and a child span for each phase of a pooling
request (reading the body, decoding, planning, waiting for a compute slot, computing,
encoding), with the op, shapes, dtype, device and bytes as attributes.

Tracing is on when the standard variables ask for an exporter (`OTEL_TRACES_EXPORTER`,
`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), and configured by
the others the SDK reads (service name, resource attributes, sampler, batching, the OTLP
protocol and headers). Off, nothing here runs: the doors test `tracer is None` and move on.

The phases are timed where they happen, on the event loop or in a pool thread, into the
request's `Timings` (`app.statistics`), and become spans only when the request ends, with
the times they were measured at: no span context has to follow the work into a thread.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from app import __version__
from app.statistics import Timings

PROPAGATOR = TraceContextTextMapPropagator()
CARRIED = ("traceparent", "tracestate")  # the headers (or gRPC metadata) a trace arrives in


def provider_from_environment() -> TracerProvider | None:
    """A tracer provider exporting as the OTEL_* variables say, or None when they ask for
    no exporter."""
    names = [name.strip() for name in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    if names == ["none"] or (not names and not endpoint):
        return None
    defaults = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "pooling-service"}
    provider = TracerProvider(resource=Resource.create({**defaults, "service.version": __version__}))
    for name in names or ["otlp"]:
        provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    return provider


def _exporter(name: str) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    if name != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={name}: this service exports to otlp, console or none")
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter()
    if protocol != "http/protobuf":
        raise ValueError(f"OTEL_EXPORTER_OTLP_PROTOCOL={protocol}: this service speaks http/protobuf or grpc")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter()


def tracer_of(provider: TracerProvider | None) -> Tracer | None:
    return provider.get_tracer("pooling-service", __version__) if provider is not None else None


def server_span(tracer: Tracer, name: str, carrier: Mapping[str, str], attributes: dict[str, Any]) -> Span:
    """A request's span, the child of the caller's when `carrier` holds a traceparent."""
    return tracer.start_span(name, PROPAGATOR.extract(carrier), SpanKind.SERVER, attributes)


def trace_id(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def end_server_span(tracer: Tracer, span: Span, status: int, timings: Timings | None) -> None:
    """The request's phases as child spans at the times they were measured, its outcome, and
    the end. `status` is the answer's HTTP status (for gRPC, the one its code stands for)."""
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(Status(StatusCode.ERROR))
    if timings is not None and timings.marks:
        parent = trace.set_span_in_context(span)
        offset = time.time_ns() - time.perf_counter_ns()  # perf_counter_ns marks to wall-clock times
        for phase, started, ended in timings.marks:
            tracer.start_span(phase, parent, start_time=started + offset).end(end_time=ended + offset)
        if timings.details:
            span.set_attributes(timings.details)
    span.end()
