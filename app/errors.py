"""Typed errors of the service and their rendering as problem+json (RFC 9457).

    ProblemError                 status, title, detail, errors
     +-- UndecodableBody         400  a body or tensor that cannot be decoded
     +-- NotFound                404
     +-- NotAcceptable           406  `Accept` names nothing the service produces
     +-- TooLarge                413  body, tensor or result over a limit
     +-- UnsupportedMediaType    415
     +-- InvalidParameters       422  parameters invalid, or invalid for this tensor
     +-- Unauthorized            401  an API key is configured and missing or wrong
     +-- Overloaded              503  every compute slot and queue place taken, or the time limit passed

Inner layers raise these; `install_error_handlers` turns them, and the
framework's own errors, into problem+json in one place.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Collection
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("app.errors")


class ClientGone(Exception):
    """The client disconnected: nobody is left to answer."""


class ProblemError(Exception):
    status = 500

    def __init__(
        self,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class UndecodableBody(ProblemError):
    status = 400


class NotFound(ProblemError):
    status = 404


class NotAcceptable(ProblemError):
    status = 406


class TooLarge(ProblemError):
    status = 413


class UnsupportedMediaType(ProblemError):
    status = 415


class Unauthorized(ProblemError):
    status = 401


class Overloaded(ProblemError):
    status = 503


class InvalidParameters(ProblemError):
    status = 422

    @classmethod
    def at(cls, loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> InvalidParameters:
        """One fault at one place, e.g. `at(("body", "kernel_size"), "...")`."""
        return cls(msg, errors=[{"loc": list(loc), "msg": msg, "type": kind}])


def problem_response(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
    v2: bool = False,
) -> Response:
    """Problem details; `v2` adds the Open Inference Protocol's `error` member."""
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
    }
    if errors is not None:
        body["errors"] = errors
    if request_id is not None:
        body["request_id"] = request_id
    if v2:
        body["error"] = detail
    return Response(orjson.dumps(body), status_code=status, media_type=PROBLEM_JSON, headers=headers)


def validation_problem(
    exc: ValidationError, prefix: tuple[str, ...] = ("body",), known: Collection[str] = ()
) -> InvalidParameters:
    """A pydantic error as a 422 whose `errors` name each bad field, unknown fields first."""
    errors = [
        {"loc": [*prefix, *err["loc"]], "msg": _message(err, known), "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    where = ".".join(str(part) for part in first["loc"][len(prefix) :]) or "body"
    detail = f"{where}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return InvalidParameters(detail, errors=errors)


def _message(err: Any, known: Collection[str]) -> str:
    if err["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
        hint = f"; did you mean {guess[0]}?" if guess else f"; it takes {', '.join(sorted(known))}" if known else ""
        return "unknown parameter for this operation" + hint
    return str(err["msg"])


def request_id(scope: Any) -> str | None:
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


def internal_error(scope: Any, exc: BaseException) -> Response:
    """A bug that escaped: logged whole under the request's id, answered with the id
    and nothing of its internals."""
    rid = request_id(scope)
    log.error("unhandled error on %s %s [request %s]", scope.get("method"), scope.get("path"), rid, exc_info=exc)
    return problem_response(500, "internal error; quote the request id when reporting it", request_id=rid)


def install_error_handlers(app: FastAPI) -> None:
    async def on_problem(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ProblemError)
        return problem_response(exc.status, exc.detail, exc.errors, exc.headers)

    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail
        if exc.status_code == 404:
            detail = f"nothing at {request.url.path}; GET /pool lists the operations"
        elif exc.status_code == 405:
            detail = f"{request.method} is not allowed on {request.url.path}"
        return problem_response(exc.status_code, str(detail), headers=dict(exc.headers or {}))

    async def on_request_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        errors = [{"loc": list(e["loc"]), "msg": str(e["msg"]), "type": e["type"]} for e in exc.errors()]
        return problem_response(422, "the request is invalid", errors)

    async def on_unexpected(request: Request, exc: Exception) -> Response:
        # A bug, never client input: log it, and say nothing of its internals.
        return internal_error(request.scope, exc)

    app.add_exception_handler(ProblemError, on_problem)
    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_request_validation)
    app.add_exception_handler(Exception, on_unexpected)
