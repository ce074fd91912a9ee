"""Prometheus metrics and one structured log line per request.

Both are recorded by the gate, which sees every request come in and its
answer go out: the pooling code itself knows nothing of them. Each app has
its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from app import __version__

ACCESS = logging.getLogger("app.access")
REJECTED = {401: "unauthorized", 413: "too_large", 429: "rate_limited", 503: "overloaded"}
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self, device: str, torch_version: str) -> None:
        self.registry = CollectorRegistry()
        labels = ("op",)
        self.requests = Counter(
            "pool_requests_total", "Pooling requests by op and status", ("op", "status"), registry=self.registry
        )
        self.latency = Histogram(
            "pool_request_duration_seconds",
            "Time from request to answer",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.bytes_in = Counter("pool_request_bytes_total", "Request body bytes", labels, registry=self.registry)
        self.bytes_out = Counter("pool_response_bytes_total", "Response body bytes", labels, registry=self.registry)
        self.rejected = Counter(
            "pool_rejected_total", "Requests refused before computing, by reason", ("reason",), registry=self.registry
        )
        self.in_flight = Gauge(
            "pool_computations_in_flight", "Computations running in the pool", registry=self.registry
        )
        self.queued = Gauge("pool_queue_length", "Computations waiting for a pool slot", registry=self.registry)
        Info("pool_device", "Where the pooling runs", registry=self.registry).info(
            {"device": device, "torch_version": torch_version, "version": __version__}
        )

    def observe(self, op: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        self.requests.labels(op, str(status)).inc()
        self.latency.labels(op).observe(seconds)
        self.bytes_in.labels(op).inc(bytes_in)
        self.bytes_out.labels(op).inc(bytes_out)
        reason = REJECTED.get(status)
        if reason is not None:
            self.rejected.labels(reason).inc()


class JsonLines(logging.Formatter):
    """A log record as one JSON object per line, with the fields a request carries."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, separators=(",", ":"))


def configure_logging(level: str) -> None:
    """JSON lines on stderr for the service's loggers, once per process."""
    root = logging.getLogger("app")
    root.setLevel(level.upper())
    if not any(isinstance(handler.formatter, JsonLines) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLines())
        root.addHandler(handler)
        root.propagate = False


def log_request(fields: dict[str, Any]) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("%s %s %s", fields["method"], fields["path"], fields["status"], extra={"fields": fields})
