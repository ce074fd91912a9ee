"""Answers as HTTP: errors as problem+json (RFC 9457), rendered here and nowhere
else (FastAPI's own handlers in `app.routes` call these too), and `Answer`, a
finished answer sent as a plain ASGI app."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from http import HTTPStatus
from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from app.errors import ProblemError
from app.negotiation import PROBLEM_JSON

log = logging.getLogger("app.errors")


class Answer:
    """An answer whose status, headers and body are ready: sending it is two ASGI
    messages, with none of the generic header work of a framework response, which
    for a small tensor costs more than the pooling did."""

    __slots__ = ("body", "media_type", "raw_headers", "status_code")

    def __init__(self, body: bytes, media_type: str, headers: dict[str, str] | None = None) -> None:
        self.status_code = 200
        self.body = body
        self.media_type = media_type
        self.raw_headers = [(b"content-length", b"%d" % len(body)), (b"content-type", media_type.encode("latin-1"))]
        if headers:
            self.raw_headers += [
                (name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()
            ]

    def encoded(self, body: bytes, coding: str) -> None:
        """The same answer, its body compressed with `coding`."""
        self.body = body
        self.raw_headers = [
            (b"content-length", b"%d" % len(body)),
            *(header for header in self.raw_headers if header[0] != b"content-length"),
            (b"content-encoding", coding.encode("latin-1")),
            (b"vary", b"accept-encoding"),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body})


Reply = Answer | Response


def problem_response(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
    v2: bool = False,
) -> Response:
    """Problem details; `v2` adds the Open Inference Protocol's `error` member."""
    body = problem_body(status, detail, errors, request_id, v2)
    return Response(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def problem_body(
    status: int,
    detail: str,
    errors: list[dict[str, Any]] | None = None,
    request_id: str | None = None,
    v2: bool = False,
) -> bytes:
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
    return orjson.dumps(body)


def problem_bytes(status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()) -> bytes:
    """A whole HTTP/1.1 problem answer, for a connection that never reached the app
    (its head too large, too slow or malformed): the connection closes after it."""
    body = problem_body(status, detail)
    lines = [
        b"HTTP/1.1 %d %s" % (status, HTTPStatus(status).phrase.encode()),
        *(name + b": " + value for name, value in headers),
        b"content-type: " + PROBLEM_JSON.encode(),
        b"content-length: %d" % len(body),
        b"connection: close",
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def problem_of(error: ProblemError, v2: bool = False) -> Response:
    return problem_response(error.status, error.detail, error.errors, error.headers, v2=v2)


def request_id(scope: Any) -> str | None:
    state = scope.get("state")
    return state.get("request_id") if isinstance(state, dict) else None


def internal_error(scope: Any, exc: BaseException, v2: bool = False) -> Response:
    """A bug that escaped: logged whole under the request's id, answered with the id
    and nothing of its internals."""
    rid = request_id(scope)
    log.error("unhandled error on %s %s [request %s]", scope.get("method"), scope.get("path"), rid, exc_info=exc)
    return problem_response(500, "internal error; quote the request id when reporting it", request_id=rid, v2=v2)
