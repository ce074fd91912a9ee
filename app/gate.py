"""The gate: request ids, API keys, the headers every answer carries, and the record
of each request (metrics and a log line, `app.telemetry`).

It wraps everything but CORS (so a browser's preflight never meets the key
check), and runs before anything reads the body or even looks up the route, so a
request without a valid key is refused with a 401 at once, whatever else is
wrong with it; keys are compared in constant time and never logged.
"""

from __future__ import annotations

import hmac
import itertools
import os
import re
import time
from collections.abc import Collection

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.paths import metered_op, needs_key
from app.responses import problem_response
from app.telemetry import AccessLog, Metrics

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"cache-control", b"no-store")]


def presented_key(scope: Scope) -> bytes | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value
    return None


class Gate:
    def __init__(
        self, app: ASGIApp, keys: list[str], metrics: Metrics, access_log: AccessLog, operations: Collection[str]
    ) -> None:
        self.app = app
        self._keys = [key.encode() for key in keys]
        self._metrics = metrics
        self._access_log = access_log
        self._operations = operations

    def _authorized(self, scope: Scope) -> bool:
        given = presented_key(scope)
        if given is None:
            return False
        # Every key is compared, each in constant time, so timing tells nothing.
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(key, given)
        return matched

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = _request_id(scope)
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
            if self._keys and needs_key(scope["method"], scope["path"]) and not self._authorized(scope):
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
            self._record(scope, rid, status, sent, time.perf_counter() - started)

    def _record(self, scope: Scope, rid: str, status: int, bytes_out: int, seconds: float) -> None:
        path = scope["path"]
        op = metered_op(scope["method"], path, self._operations)
        bytes_in = _content_length(scope)
        if op is not None:
            self._metrics.observe(op, status, seconds, bytes_in, bytes_out)
        self._access_log.request(
            rid, scope["method"], path, op, status, seconds, bytes_in, bytes_out, scope.get("client")
        )


def _content_length(scope: Scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


# New ids: a random prefix per process and a counter, 32 hex digits in all, unique
# across workers and restarts; reading the system's random source for each request
# would cost more than pooling a small tensor.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def _request_id(scope: Scope) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if _REQUEST_ID.fullmatch(text):
                return text
            break
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"
