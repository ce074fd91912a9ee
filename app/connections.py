"""HTTP/1.1 connections as `python -m app` holds them: uvicorn's httptools protocol
with the limits a public server keeps (nginx's `large_client_header_buffers`,
`client_header_timeout` and `worker_connections`), which uvicorn lacks:

- a request's head (request line and headers) is at most `max_header_bytes` and
  its URL at most `max_url_bytes`: past them, a 431 or a 414, and the connection
  closes, before more of it is buffered or parsed;
- a head must arrive within `header_timeout_s` of the connection opening or of
  the previous answer: a connection that sends nothing is closed, one that sent
  part of a head gets a 408;
- at most `max_connections` are open: at the bound, the connection that has
  waited longest for a request is closed to make room, and when every
  connection has a request in hand, a new one's request gets a 503;
- a head the parser cannot read gets a 400, and so does a request with a body
  that asks to upgrade (h2c): the parser reads no body after an Upgrade header.

Each of these answers is problem+json. The app's own limits (body size and
pace, work, compute slots) are the app's; these are the connection's, and hold
wherever `python -m app` runs, behind nginx or not.

A request with a body of declared length also gets the ASGI extension
`BODY_INTO` (`app.requests`) in its scope: the rest of the body received from
the socket straight into a buffer the app gives, with none of the copies
uvicorn makes of each chunk on its way to `receive`. The endpoint takes it for
large bodies when the `receive` it was given is this connection's own, so a
middleware that wraps `receive` sees every byte.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.requests import BODY_INTO
from app.responses import problem_bytes, problem_response
from app.settings import Settings

log = logging.getLogger("app.connections")

# The uvicorn releases this protocol is built on and tested with (pyproject.toml's range).
UVICORN_RANGE = ((0, 53), (0, 55))


def http_protocol() -> type[HttpToolsProtocol] | str:
    """`GuardedHttpProtocol` on a uvicorn it was built on; on another, uvicorn's own httptools
    protocol, with a warning: its internals may have changed, and the connection limits are
    then a proxy's to keep."""
    version = tuple(int(part) for part in uvicorn.__version__.split(".")[:2])
    low, high = UVICORN_RANGE
    if low <= version < high:
        return GuardedHttpProtocol
    log.warning(
        "uvicorn %s is outside the range the connection limits are built on (%s to %s): "
        "serving with uvicorn's own httptools protocol, without them",
        uvicorn.__version__,
        ".".join(map(str, low)),
        ".".join(map(str, high)),
    )
    return "httptools"


@dataclass(frozen=True)
class ConnectionLimits:
    max_header_bytes: int
    max_url_bytes: int
    header_timeout_s: float
    max_connections: int
    retry_after_s: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            settings.max_header_bytes,
            settings.max_url_bytes,
            settings.header_timeout_s,
            settings.max_connections,
            settings.retry_after_s,
        )


@functools.cache
def _from_environment() -> ConnectionLimits:
    # Each worker process reads the settings it was started with, as create_app does.
    return ConnectionLimits.of(Settings())


class _Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol within `ConnectionLimits` (read from the `POOL_*`
    settings unless a subclass sets `limits`)."""

    limits: ClassVar[ConnectionLimits | None] = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = type(self).limits or _from_environment()
        # Connections with no request in hand, longest waiting first: those to close for room.
        self._waiting: dict[GuardedHttpProtocol, None] = self.server_state.__dict__.setdefault("waiting", {})
        self._in_head = True  # the next bytes that arrive belong to a request's head
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._declared = 0  # the current request's Content-Length
        self._body_parsed = 0  # bytes of its body fed to the parser
        self._reader: _BodyReader | None = None  # on the transport while a body is read into a buffer

    # ------------------------------------------------------------ the connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._wait_for_head()
        self._make_room()

    def _make_room(self) -> bool:
        """Within the bound, or back within it by closing the connection that has waited
        longest for a request; False when every other connection has a request in hand."""
        if len(self.connections) <= self._limits.max_connections:
            return True
        oldest = next((other for other in self._waiting if other is not self), None)
        if oldest is None:
            return False
        oldest._close(None)
        self.connections.discard(oldest)  # gone already, though its transport reports it later
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_waiting()
        super().connection_lost(exc)

    def _wait_for_head(self) -> None:
        self._waiting[self] = None
        self._head_timer = self.loop.call_later(self._limits.header_timeout_s, self._head_timeout)

    def _stop_waiting(self) -> None:
        self._waiting.pop(self, None)
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        self._head_timer = None
        if self._head_bytes:
            timeout = self._limits.header_timeout_s
            self._close(self._problem(408, f"the request's head did not arrive within {timeout} s"))
        else:
            self._close(None)  # it never sent anything: nothing to answer

    def _close(self, answer: bytes | None) -> None:
        self._stop_waiting()
        if self.transport.is_closing():
            return
        if answer is not None:
            self.transport.write(answer)
        self.transport.close()

    # ------------------------------------------------------------ reading

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        try:
            while data:
                if not self._in_head:
                    self.parser.feed_data(data)
                    return
                # A head is fed no further than its limit: nothing larger is ever buffered.
                room = self._limits.max_header_bytes - self._head_bytes
                part, data = data[:room], data[room:]
                self._head_bytes += len(part)
                self.parser.feed_data(part)
                if self._in_head and self._head_bytes >= self._limits.max_header_bytes:
                    raise _Refused(431, f"the request's head is over {self._limits.max_header_bytes} bytes")
        except _Refused as refusal:
            self._refuse(refusal)
        except httptools.HttpParserUpgrade:
            pass  # a request that asked to upgrade is answered in HTTP/1.1, then the connection closes
        except httptools.HttpParserError as exc:
            if isinstance(exc.__context__, _Refused):  # raised in a parser callback
                self._refuse(exc.__context__)
            else:
                self._refuse(_Refused(400, "the request's head is not valid HTTP/1.1"))

    def _refuse(self, refusal: _Refused) -> None:
        if self.cycle is not None and not self.cycle.response_complete:
            # A request is in hand and its answer may be on its way: no second answer.
            self._close(None)
            return
        self._close(self._problem(refusal.status, refusal.detail))

    def _problem(self, status: int, detail: str) -> bytes:
        return problem_bytes(status, detail, self.server_state.default_headers)  # the date, as on every answer

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._declared = self._body_parsed = 0

    def on_body(self, body: bytes) -> None:
        self._body_parsed += len(body)
        super().on_body(body)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self._in_head:  # a chunked body's trailers: held to the head's limit as well
            self._head_bytes += len(name) + len(value) + 4
            if self._head_bytes > self._limits.max_header_bytes:
                raise _Refused(431, f"the request's trailers are over {self._limits.max_header_bytes} bytes")
        super().on_header(name, value)

    def on_url(self, url: bytes) -> None:
        super().on_url(url)
        if len(self.url) > self._limits.max_url_bytes:
            raise _Refused(414, f"the URL is over {self._limits.max_url_bytes} bytes")

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        self._in_head = False
        upgrade = self.parser.should_upgrade()
        if not self._make_room():
            detail = (
                f"the server holds its limit of {self._limits.max_connections} connections, each with a request "
                "in hand; retry shortly"
            )
            self._answer_with(503, detail, {"Retry-After": str(self._limits.retry_after_s)})
        elif upgrade and any(name in (b"content-length", b"transfer-encoding") for name, _ in self.headers):
            # The parser reads no body after an Upgrade header: say so, rather than answer without it.
            self._answer_with(
                400, "this service upgrades no connection (h2c, websocket); send the body without Upgrade"
            )
        else:
            super().on_headers_complete()
            self._declared = self._declared_length()
            if self._declared:
                cycle = self.cycle
                into = functools.partial(self._receive_into, cycle)
                self.scope.setdefault("extensions", {})[BODY_INTO] = {"receive": cycle.receive, "into": into}
        if upgrade and self.cycle is not None:
            self.cycle.keep_alive = False  # the parser reads nothing more on this connection

    def _answer_with(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        """Dispatch the request whose head just arrived to a problem answer, not the app."""
        answer = problem_response(status, detail, headers={**(headers or {}), "Connection": "close"})
        app, self.app = self.app, answer
        try:
            super().on_headers_complete()
        finally:
            self.app = app

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.cycle.response_complete and self._head_timer is None:
            self._wait_for_head()  # no pipelined request in hand: the next one's head is awaited

    # ------------------------------------------------------------ a body into a buffer

    async def _receive_into(self, cycle: RequestResponseCycle, view: memoryview, arrived: Callable[[int], None]) -> int:
        """`BODY_INTO`'s "into": fills `view`, exactly as long as what is left of the
        request's declared body, with it; what has arrived and not been received is
        copied, the rest goes from the socket straight into `view`. `arrived(n)` is
        called as each `n` bytes land; an exception it raises stops the read and is
        raised here. Returns the bytes filled: fewer only when the client has gone.

        A read that does not finish (refused, cancelled, the client gone) leaves the
        connection to close after the answer: its parser no longer knows where the body
        ends, so nothing more is read from it as a request."""
        if cycle is not self.cycle or self._reader is not None or cycle.response_complete:
            raise RuntimeError("a body is read into a buffer only while its request is the connection's current one")
        if cycle.waiting_for_100_continue and not self.transport.is_closing():
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # as `receive` does: the client waits for it
            cycle.waiting_for_100_continue = False
        in_socket = self._declared - self._body_parsed
        pending = cycle.body
        if len(view) != len(pending) + in_socket:
            raise ValueError(f"the buffer holds {len(view)} bytes; {len(pending) + in_socket} of the body are left")
        taken = len(pending)
        view[:taken] = pending
        cycle.body = bytearray()
        if taken:
            arrived(taken)
        if not in_socket or cycle.disconnected:
            return taken
        reader = self._reader = _BodyReader(self, view[taken:], arrived)
        self.transport.set_protocol(reader)
        self.flow.resume_reading()
        try:
            await reader.done
        finally:
            self._end_body_read(reader, None)  # cancelled: ended here
        return taken + reader.filled

    def _declared_length(self) -> int:
        """The body's Content-Length; 0 for a chunked body or none."""
        length = 0
        for name, value in self.headers:
            if name == b"transfer-encoding":
                return 0
            if name == b"content-length":
                length = int(value)  # the parser has read it, so it is a number
        return length

    def _end_body_read(self, reader: _BodyReader, error: BaseException | None) -> None:
        """Ends `reader`'s read. With the body whole on a connection that stays open, the
        transport goes back to HTTP and the next request's head is parsed afresh.
        Otherwise the reader stays on the transport, throwing away whatever arrives, until
        the connection closes after the answer: after `Connection: close` nothing more is
        a request (as uvicorn's parser, lenient after close, has it), and after a body cut
        short the parser no longer knows where the body ends."""
        if self._reader is not reader:
            return
        self._reader = None
        whole = reader.filled == len(reader.view)
        reader.finish()
        if not whole:
            self.cycle.keep_alive = False
        else:
            if self.cycle.keep_alive:
                self.parser = self._fresh_parser()
                if not self.transport.is_closing():
                    self.transport.set_protocol(self)
            self.on_message_complete()
        if not reader.done.done():
            if error is None:
                reader.done.set_result(None)
            else:
                reader.done.set_exception(error)

    def _fresh_parser(self) -> httptools.HttpRequestParser:
        parser = httptools.HttpRequestParser(self)
        parser.set_dangerous_leniencies(lenient_data_after_close=True)  # as uvicorn sets its own
        return parser


class _BodyReader(asyncio.BufferedProtocol):
    """Stands in for a connection's HTTP protocol on its transport while a body is read
    into the app's buffer: the transport receives straight into `view`. Finished short
    of the body's end, it receives into scratch space, and so throws away, what comes."""

    _SCRATCH = memoryview(bytearray(1 << 16))  # written and never read: one for all readers

    def __init__(self, connection: GuardedHttpProtocol, view: memoryview, arrived: Callable[[int], None]) -> None:
        self.connection = connection
        self.view = view
        self.filled = 0
        self.arrived: Callable[[int], None] | None = arrived
        self.done: asyncio.Future[None] = connection.loop.create_future()

    def finish(self) -> None:
        # uvloop keeps a protocol's get_buffer after another takes its place, so the
        # reader may outlive its read: the app's buffer is let go now.
        self.view.release()
        self.arrived = None

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.arrived is None:
            return self._SCRATCH
        return self.view[self.filled :]

    def buffer_updated(self, nbytes: int) -> None:
        if self.arrived is None:
            return
        self.filled += nbytes
        try:
            self.arrived(nbytes)
        except Exception as exc:
            self.connection._end_body_read(self, exc)
            return
        if self.filled == len(self.view):
            self.connection._end_body_read(self, None)

    def eof_received(self) -> None:
        self.connection.eof_received()  # the transport then closes: the body ends short

    def connection_lost(self, exc: Exception | None) -> None:
        self.connection._end_body_read(self, None)
        self.connection.connection_lost(exc)

    def pause_writing(self) -> None:
        self.connection.pause_writing()

    def resume_writing(self) -> None:
        self.connection.resume_writing()
