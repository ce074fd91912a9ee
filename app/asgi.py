"""`POST /pool/{op}` as a plain ASGI handler, in front of all the framework's layers.

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
from app.pipeline import run_operation
from app.requests import Incoming

PREFIX = "/pool/"


class PoolEndpoint:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        op = path[len(PREFIX) :]
        if scope.get("method") != "POST" or not path.startswith(PREFIX) or "/" in op:
            await self.app(scope, receive, send)
            return
        try:
            spec = CATALOGUE.get(op)
            if spec is None:
                raise NotFound(f"unknown operation {op!r}; GET /pool lists the operations")
            # Starlette puts the application in the scope before its middleware runs.
            response = await run_operation(spec, incoming(scope, receive), scope["app"].state.runtime)
        except ProblemError as problem:
            response = problem_response(problem.status, problem.detail, problem.errors, problem.headers)
        except ClientGone:
            return  # nobody is left to answer
        except Exception as exc:
            response = internal_error(scope, exc)
        await response(scope, receive, send)


def incoming(scope: Scope, receive: Receive) -> Incoming:
    headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
    query = scope.get("query_string", b"")
    return Incoming(headers, QueryParams(query) if query else None, receive)
