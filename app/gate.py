"""The gate: request ids, API keys, the headers every answer carries, and the record
of each request (metrics and a log line, `app.telemetry`).

It wraps everything but CORS (so a browser's preflight never meets the key
check), and runs before anything reads the body or even looks up the route, so a
request without a valid key is refused with a 401 at once, whatever else is
wrong with it; keys are compared in constant time and never logged.
"""

from __future__ import annotations

import time
from collections.abc import Collection

from opentelemetry.trace import Span, Tracer
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.identity import key_matches, presented_key, request_id_from
from app.paths import compute_template, metered_op, needs_key
from app.responses import problem_response
from app.statistics import Timings
from app.telemetry import PROTOCOLS, AccessLog, Metrics
from app.tracing import end_server_span, server_span, trace_id

SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]


class Gate:
    def __init__(
        self,
        app: ASGIApp,
        keys: list[str],
        metrics: Metrics,
        access_log: AccessLog,
        operations: Collection[str],
        tracer: Tracer | None = None,
    ) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]
        self._metrics = metrics
        self._access_log = access_log
        self._operations = operations
        self._tracer = tracer

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        span = None
        if self._tracer is not None:
            carrier = {
                name.decode("latin-1"): value.decode("latin-1")
                for name, value in scope["headers"]
                if name in (b"traceparent", b"tracestate")
            }
            attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
            span = server_span(self._tracer, scope["method"], carrier, attributes)
            if span.is_recording():  # sampled: the pooling endpoint times its phases for it
                scope.setdefault("state", {})["timings"] = Timings(traced=True)
        # Traced, a request's id is its trace's unless the client sent one: logs and traces join.
        rid = request_id_from(_header(scope, b"x-request-id"), trace_id(span) if span is not None else None)
        scope.setdefault("state", {})["request_id"] = rid
        extra = [*SECURITY_HEADERS, (b"x-request-id", rid.encode())]
        status = sent = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            if (
                self._keys
                and needs_key(scope["method"], scope["path"])
                and not key_matches(self._keys, presented_key(scope["headers"]))
            ):
                response = problem_response(
                    401,
                    "this route needs an API key: send Authorization: Bearer <key> or X-API-Key: <key>",
                    headers={"WWW-Authenticate": 'Bearer realm="pooling"'},
                )
                await response(scope, receive, send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)
        except Exception:
            # Answered with a 500 by the server-error middleware outside, after this returns.
            status = status or 500
            raise
        finally:
            self._record(scope, rid, status, sent, time.perf_counter() - started, span)

    def _record(self, scope: Scope, rid: str, status: int, bytes_out: int, seconds: float, span: Span | None) -> None:
        path = scope["path"]
        metered = metered_op(scope["method"], path, self._operations)
        op = metered[0] if metered is not None else None
        bytes_in = _content_length(scope)
        if metered is not None:
            self._metrics.observe(metered[0], PROTOCOLS[metered[1]], status, seconds, bytes_in, bytes_out)
        if span is not None and self._tracer is not None:
            route = scope.get("route")  # the route's template, once routed: names stay few
            template = compute_template(path) or getattr(route, "path", None)
            span.update_name(f"{scope['method']} {template}" if template else scope["method"])
            span.set_attributes({"pool.op": op or "", "http.request.body.size": bytes_in})
            span.set_attribute("http.response.body.size", bytes_out)
            end_server_span(self._tracer, span, status, scope["state"].get("timings"))
        self._access_log.request(
            rid,
            scope["method"],
            path,
            op,
            status,
            seconds,
            bytes_in,
            bytes_out,
            scope.get("client"),
            trace_id(span) if span is not None else None,
        )


def _content_length(scope: Scope) -> int:
    value = _header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else 0


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope["headers"]:
        if name == wanted:
            return value
    return None
