"""The pooling endpoint: `POST /pool/{op}` and `POST /v2/models/{op}/infer`, as a
plain ASGI middleware in front of FastAPI's router.

For a tiny tensor the pooling takes microseconds, so the router, request
objects and dependency injection would cost more than the work; this layer
answers those two paths straight from the ASGI scope (any other method on
them gets a 405 here) and passes everything else on. It sits in the app's
middleware stack like any other layer (`app.main.create_app` lists it), so
whatever wraps the app the usual way, `add_middleware`, `@app.middleware`,
OpenTelemetry's instrumentation, wraps these paths too. `app.openapi`
documents them.
"""

from __future__ import annotations

import asyncio

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from app.compression import COMPRESSED, SMALLEST, answer_coding, compress
from app.errors import ClientGone, NotFound, ProblemError, cut, shown
from app.inference import decode_oip
from app.native import decode_native
from app.paths import VERSION, compute_target, model_version
from app.pipeline import Decoder, Runtime, run_operation
from app.requests import BODY_INTO, Incoming
from app.responses import Answer, Reply, internal_error, problem_of, problem_response
from app.statistics import Timings

DECODERS: dict[str, Decoder[bytearray, Answer]] = {"native": decode_native, "protocol": decode_oip}


class PoolEndpoint:
    def __init__(self, app: ASGIApp, runtime: Runtime, retry_after_s: int = 1) -> None:
        self.app = app
        self.runtime = runtime
        self.retry_after = {"Retry-After": str(retry_after_s)}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = compute_target(scope["path"]) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        op, door = target
        protocol = door == "protocol"
        response: Reply
        if scope["method"] != "POST":
            response = problem_response(
                405,
                f"{cut(scope['method'], 20)} is not allowed on {cut(scope['path'])}",
                headers={"Allow": "POST"},
                v2=protocol,
            )
            await response(scope, receive, send)
            return
        try:
            op, version = model_version(op)
            operation = self.runtime.operations.get(op)
            if operation is None:
                raise NotFound(f"unknown operation {shown(op)}; GET /pool lists the operations")
            if version not in (None, VERSION):
                raise NotFound(f"model {op} has no version {shown(version)}; its one version is {VERSION}")
            request = incoming(scope, receive)
            # A traced request's timings come from the gate, which makes them spans afterwards.
            timings = (scope.get("state") or {}).get("timings") or Timings()
            answer = await run_operation(operation, request, self.runtime, DECODERS[door], timings)
            coding = answer_coding(request.headers.get("accept-encoding"))
            if coding is not None and len(answer.body) >= SMALLEST and answer.media_type in COMPRESSED:
                answer.encoded(await compress(answer.body, coding), coding)
            response = answer
        except ProblemError as problem:
            response = problem_of(problem, v2=protocol)
        except ClientGone:
            return  # nobody is left to answer
        except asyncio.CancelledError:
            # The server is stopping and its grace period is over: say so before going.
            closing = problem_response(
                503, "the service is shutting down; retry elsewhere", headers=self.retry_after, v2=protocol
            )
            await closing(scope, receive, send)
            raise
        except Exception as exc:
            response = internal_error(scope, exc, v2=protocol)
        await response(scope, receive, send)


def incoming(scope: Scope, receive: Receive) -> Incoming:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    query = scope.get("query_string", b"")
    # The connection's direct read of a large body, unless a middleware stands between it
    # and this endpoint's `receive`: that middleware then sees the body, chunk by chunk.
    direct = scope.get("extensions", {}).get(BODY_INTO)
    into = direct["into"] if direct is not None and direct["receive"] == receive else None
    return Incoming(headers, QueryParams(query) if query else None, receive, body_into=into)
