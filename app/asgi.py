"""`POST /pool/{op}` (and the protocol's `POST /v2/models/{op}/infer`) as a plain
ASGI handler, in front of all the framework's layers.

The pooling endpoint is the hot path: for a tiny tensor the work is a few
microseconds, so the routing table, the middleware and request objects would
cost more than the pooling. This handler answers it straight from the ASGI
scope; everything else (and any other method on the path) goes on to FastAPI,
which also serves the endpoint's documentation.
"""

from __future__ import annotations

from starlette.datastructures import QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from app.catalogue import CATALOGUE
from app.errors import ClientGone, NotFound, ProblemError, internal_error, problem_response
from app.inference import decode_oip
from app.pipeline import Runtime, run_operation
from app.requests import Incoming

PREFIX = "/pool/"


V2_PREFIX, V2_SUFFIX = "/v2/models/", "/infer"


def route(scope: Scope) -> tuple[str, bool] | None:
    """(op, open inference protocol?) for the requests this handler answers."""
    if scope["type"] != "http" or scope.get("method") != "POST":
        return None
    path = scope["path"]
    if path.startswith(PREFIX) and "/" not in path[len(PREFIX) :]:
        return path[len(PREFIX) :], False
    if path.startswith(V2_PREFIX) and path.endswith(V2_SUFFIX):
        op = path[len(V2_PREFIX) : -len(V2_SUFFIX)]
        return (op, True) if "/" not in op else None
    return None


class PoolEndpoint:
    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = route(scope)
        if target is None:
            await self.app(scope, receive, send)
            return
        op, v2 = target
        try:
            spec = CATALOGUE.get(op)
            if spec is None:
                raise NotFound(f"unknown operation {op!r}; GET /pool lists the operations")
            response = await run_operation(spec, incoming(scope, receive), self.runtime, decode_oip if v2 else None)
        except ProblemError as problem:
            response = problem_response(problem.status, problem.detail, problem.errors, problem.headers, v2=v2)
        except ClientGone:
            return  # nobody is left to answer
        except Exception as exc:
            response = internal_error(scope, exc)
        await response(scope, receive, send)


def incoming(scope: Scope, receive: Receive) -> Incoming:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    query = scope.get("query_string", b"")
    return Incoming(headers, QueryParams(query) if query else None, receive)
