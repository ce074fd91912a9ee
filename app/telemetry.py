"""Prometheus metrics and one structured log line per request.

Both are recorded by the gate, which sees every request come in and its
answer go out: the pooling code itself knows nothing of them. Each app has
its own registry, so several apps in one process (tests) do not collide.
"""

from __future__ import annotations

import asyncio
import atexit
import json
import logging
import sys
import threading
import time
from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Gauge, Histogram, Info, Metric, ProcessCollector
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from app import __version__

REJECTED = {401: "unauthorized", 413: "too_large", 503: "overloaded"}
# The `protocol` label: the native API, and the Open Inference Protocol over REST and gRPC.
PROTOCOLS = {"native": "native", "protocol": "v2-rest", "grpc": "v2-grpc"}
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """The service's Prometheus metrics. Each request's figures are added to plain
    numbers here and become metric families only when /metrics is scraped:
    prometheus-client's labelled counters take a lock and a lookup per increment,
    which at five per request costs more than pooling a small tensor. Requests are
    observed on the event loop only, and scrapes run there too."""

    def __init__(self, device: str, torch_version: str) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_*: memory, CPU, open files
        self._ops: dict[tuple[str, str], _OpStats] = {}
        self._rejected: dict[str, int] = {}
        self.registry.register(self)
        self.in_flight = Gauge(
            "pool_computations_in_flight", "Computations running in the pool", registry=self.registry
        )
        self.queued = Gauge("pool_queue_length", "Computations waiting for a pool slot", registry=self.registry)
        self.queue_wait = Histogram(
            "pool_queue_wait_seconds",
            "How long computations waited for a compute slot (those that ran in the pool)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "pool_event_loop_lag_seconds",
            "How late the event loop ran a timer it set: what every request waited behind whatever held the loop",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        Info("pool_device", "Where the pooling runs", registry=self.registry).info(
            {"device": device, "torch_version": torch_version, "version": __version__}
        )

    async def watch_loop(self, interval: float = 0.25) -> None:
        """Measures the event loop's lag, `interval` after `interval`, until cancelled."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - started - interval))

    def observe(self, op: str, protocol: str, status: int, seconds: float, bytes_in: int, bytes_out: int) -> None:
        """One request for `op` through `protocol` (one of PROTOCOLS)."""
        stats = self._ops.get((op, protocol))
        if stats is None:
            stats = self._ops[(op, protocol)] = _OpStats()
        stats.statuses[status] = stats.statuses.get(status, 0) + 1
        stats.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        stats.seconds += seconds
        stats.bytes_in += bytes_in
        stats.bytes_out += bytes_out
        reason = REJECTED.get(status)
        if reason is not None:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1

    def collect(self) -> Iterator[Metric]:
        labels = ("op", "protocol")
        requests = CounterMetricFamily(
            "pool_requests", "Pooling requests by op, protocol and status", labels=(*labels, "status")
        )
        latency = HistogramMetricFamily("pool_request_duration_seconds", "Time from request to answer", labels=labels)
        received = CounterMetricFamily("pool_request_bytes", "Request body bytes", labels=labels)
        sent = CounterMetricFamily("pool_response_bytes", "Response body bytes", labels=labels)
        bounds = [*(str(bound) for bound in LATENCY_BUCKETS), "+Inf"]
        for key, stats in list(self._ops.items()):
            for status, count in list(stats.statuses.items()):
                requests.add_metric((*key, str(status)), count)
            cumulative = list(accumulate(stats.buckets))
            latency.add_metric(key, list(zip(bounds, cumulative, strict=True)), stats.seconds)
            received.add_metric(key, stats.bytes_in)
            sent.add_metric(key, stats.bytes_out)
        rejected = CounterMetricFamily(
            "pool_rejected", "Requests refused before computing, by reason", labels=("reason",)
        )
        for reason, count in list(self._rejected.items()):
            rejected.add_metric((reason,), count)
        yield from (requests, latency, received, sent, rejected)


class _OpStats:
    __slots__ = ("buckets", "bytes_in", "bytes_out", "seconds", "statuses")

    def __init__(self) -> None:
        self.statuses: dict[int, int] = {}
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.seconds = 0.0
        self.bytes_in = 0
        self.bytes_out = 0


class AccessLog:
    """One JSON line per request on `stream` (stderr by default), written by a
    background thread every `interval` seconds. The request only encodes its line
    and appends it to a list: the logging machinery and a flushed write per line
    would cost it tens of microseconds, and so would waking a writer thread for
    every line. The writer starts with the first line and stops on `close`."""

    def __init__(self, enabled: bool = True, interval: float = 0.1, stream: Any = None) -> None:
        self.enabled = enabled
        self.stream = stream
        self._lines: list[bytes] = []
        self._interval = interval
        self._stop = threading.Event()
        self._stamp = (0, "")
        self._writer: threading.Thread | None = None
        self._starting = threading.Lock()

    def request(
        self,
        request_id: str,
        method: str,
        path: str,
        op: str | None,
        status: int,
        seconds: float,
        bytes_in: int,
        bytes_out: int,
        client: tuple[str, int] | None,
        trace_id: str | None = None,
    ) -> None:
        """One request's line (with its trace's id, when traced)."""
        if not self.enabled:
            return
        entry = {
            "time": self._now(),
            "level": "info",
            "logger": "app.access",
            "request_id": request_id,
            "method": method,
            "path": path,
            "op": op,
            "status": status,
            "latency_ms": round(seconds * 1000, 3),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "client": f"{client[0]}:{client[1]}" if client else None,
        }
        if trace_id is not None:
            entry["trace_id"] = trace_id
        self._lines.append(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))  # list.append is atomic
        if self._writer is None:
            self._start()

    def _start(self) -> None:
        with self._starting:
            if self._writer is None and not self._stop.is_set():
                self._writer = threading.Thread(target=self._write, name="access-log", daemon=True)
                self._writer.start()
                atexit.register(self.close)

    def _now(self) -> str:
        second = int(time.time())
        if self._stamp[0] != second:  # formatted once a second, not per line
            self._stamp = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second)))
        return self._stamp[1]

    def flush(self) -> None:
        lines, self._lines = self._lines, []
        if lines:
            stream = self.stream or sys.stderr.buffer
            stream.write(b"".join(lines))
            stream.flush()

    def _write(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()
        self.flush()

    def close(self) -> None:
        self._stop.set()
        if self._writer is not None:
            self._writer.join(timeout=5)
        self.flush()


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
    """Every record written through Python's logging, the service's, uvicorn's and grpc's
    alike, as one JSON line on stderr (the handler is added once per process). grpc's C core
    writes its own few lines, at errors, past Python's logging."""
    root = logging.getLogger()
    if not any(isinstance(handler.formatter, JsonLines) for handler in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonLines())
        root.addHandler(handler)
    for name in ("app", "uvicorn", "grpc"):
        logging.getLogger(name).setLevel(level.upper())
