"""Connections an attacker holds cannot hold the service (`app.connections`): heads and
URLs have size limits (431, 414) enforced before more is buffered; a connection that
sends nothing is closed, one that sends part of a head gets a 408; the number of open
connections is bounded, room made by closing the one that waited longest; malformed
heads get a 400. Every answer is problem+json; keep-alive and pipelining still work."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable, Iterator

import httpx
import orjson
import pytest

from tests.conftest import serving

MAX_CONNECTIONS = 8
LIMITS = {
    "max_header_bytes": "4096",
    "max_url_bytes": "1024",
    "header_timeout_s": "1",
    "max_connections": str(MAX_CONNECTIONS),
}
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    with serving(tmp_path_factory.mktemp("guarded"), **LIMITS) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def _connect(address: tuple[str, int], timeout: float = 5) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes (or 5 s pass)."""
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _answers(data: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The HTTP/1.1 answers in `data`, in order: status, headers, body."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        length = int(headers.get("content-length", "0"))
        found.append((int(lines[0].split()[1]), headers, rest[:length]))
        data = rest[length:]
    return found


def _send(sock: socket.socket, parts: Iterable[bytes], pause: float = 0) -> None:
    """Send `parts` one after another, `pause` seconds apart, until the server closes."""
    try:
        for part in parts:
            sock.sendall(part)
            time.sleep(pause)
    except (BrokenPipeError, ConnectionResetError):
        pass  # answered and closed before the rest was sent; the answer is still there to read


def _exchange(address: tuple[str, int], *parts: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    with _connect(address) as sock:
        _send(sock, parts)
        return _answers(_read_all(sock))


def _problem(answer: tuple[int, dict[str, str], bytes], status: int, says: str) -> None:
    got, headers, body = answer
    assert got == status, (got, body)
    assert headers["content-type"] == "application/problem+json" and headers["connection"] == "close"
    problem = orjson.loads(body)
    assert problem["status"] == status and says in problem["detail"]
    assert len(body) < 300  # nothing of what was sent is echoed


def test_a_long_url_is_414(guarded):
    (answer,) = _exchange(guarded, b"GET /healthz?" + b"a" * 2000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    _problem(answer, 414, "URL is over 1024 bytes")


def test_a_large_header_is_431_before_the_rest_arrives(guarded):
    with _connect(guarded) as sock:
        sock.sendall(b"POST /pool/max2d HTTP/1.1\r\nHost: x\r\nX-Big: ")
        started = time.perf_counter()
        _send(sock, (b"a" * 1024 for _ in range(64 * 1024)))  # up to 64 MiB, stopped by the answer
        (answer,) = _answers(_read_all(sock))
    _problem(answer, 431, "head is over 4096 bytes")
    assert time.perf_counter() - started < 3


def test_many_small_headers_are_431(guarded):
    headers = b"".join(b"X-%d: 1\r\n" % i for i in range(1000))
    (answer,) = _exchange(guarded, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + headers + b"\r\n")
    _problem(answer, 431, "head is over")


def test_a_malformed_head_is_400(guarded):
    (answer,) = _exchange(guarded, b"\x00\x01 nonsense\r\n\r\n")
    _problem(answer, 400, "not valid HTTP/1.1")


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with _connect(guarded) as sock:
        started = time.perf_counter()
        assert _read_all(sock) == b""
        assert 0.9 < time.perf_counter() - started < 3


def test_a_head_trickled_past_its_time_is_408(guarded):
    with _connect(guarded) as sock:
        started = time.perf_counter()
        _send(sock, (bytes([byte]) for byte in HEALTH[:-2]), pause=0.1)  # each byte in time, the whole not
        (answer,) = _answers(_read_all(sock))
    _problem(answer, 408, "did not arrive within 1.0 s")
    assert time.perf_counter() - started < 3


def test_keep_alive_and_pipelining_count_each_head_alone(guarded):
    padding = b"X-Pad: " + b"p" * 2000 + b"\r\n"  # half the head limit, in every request
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + padding + b"\r\n"
    with _connect(guarded) as sock:
        for _ in range(10):
            sock.sendall(request)
            answer = b""
            while not answer.endswith(b'{"status":"ok"}'):
                answer += sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer
        sock.sendall(request * 5 + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        answers = _answers(_read_all(sock))
    assert [status for status, _, _ in answers] == [200] * 6


def test_at_the_bound_the_longest_waiting_connection_makes_room(guarded):
    idle = [_connect(guarded) for _ in range(MAX_CONNECTIONS)]
    try:
        time.sleep(0.1)
        (answer,) = _exchange(guarded, HEALTH[:-2] + b"Connection: close\r\n\r\n")
        assert answer[0] == 200
        idle[0].settimeout(0.3)  # well before the head timeout (1 s) would close it
        assert idle[0].recv(10) == b""  # closed: the first opened
        idle[-1].setblocking(False)
        with pytest.raises(BlockingIOError):  # the newest is still open
            idle[-1].recv(10)
    finally:
        for sock in idle:
            sock.close()


def test_when_every_connection_has_a_request_in_hand_a_new_one_gets_503(guarded):
    busy = []
    try:
        for _ in range(MAX_CONNECTIONS):
            sock = _connect(guarded)
            # A body still on its way: a request in hand, which no room-making may close.
            sock.sendall(
                b"POST /pool/max2d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 1000\r\n\r\n{"
            )
            busy.append(sock)
        time.sleep(0.3)
        (answer,) = _exchange(guarded, HEALTH)
        status, headers, body = answer
        assert status == 503 and headers["retry-after"] == "1" and headers["connection"] == "close"
        assert orjson.loads(body)["status"] == 503
    finally:
        for sock in busy:
            sock.close()
    time.sleep(0.3)
    assert httpx.get(f"http://{guarded[0]}:{guarded[1]}/healthz", timeout=5).status_code == 200


def test_two_thousand_idle_connections_leave_the_service_answering(guarded):
    opened = [socket.create_connection(guarded, timeout=5) for _ in range(2000)]
    try:
        time.sleep(0.2)
        started = time.perf_counter()
        assert httpx.get(f"http://{guarded[0]}:{guarded[1]}/healthz", timeout=5).status_code == 200
        assert time.perf_counter() - started < 1
        # All but the newest few were closed to keep within the bound.
        closed = 0
        for sock in opened:
            sock.setblocking(False)
            try:
                closed += sock.recv(1) == b""
            except BlockingIOError:
                pass
        assert closed >= 2000 - MAX_CONNECTIONS
    finally:
        for sock in opened:
            sock.close()


def test_a_head_one_byte_over_its_limit_is_431(guarded):
    base = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: \r\n\r\n"
    pad = 4096 - len(base)
    with _connect(guarded) as sock:  # exactly at the limit: served
        sock.sendall(base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * pad))
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
    (over,) = _exchange(guarded, base.replace(b"X-Pad: ", b"X-Pad: " + b"p" * (pad + 1)))
    _problem(over, 431, "head is over 4096 bytes")


def test_chunked_trailers_are_held_to_the_head_limit(guarded):
    trailers = b"a: b\r\n" * 5000
    with _connect(guarded) as sock:
        started = time.perf_counter()
        head = b"POST /pool/max1d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        _send(sock, [head + b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n" + trailers + b"\r\n"])
        _read_all(sock)  # closed: the trailers are refused
        assert time.perf_counter() - started < 3
    assert httpx.get(f"http://{guarded[0]}:{guarded[1]}/healthz", timeout=5).status_code == 200


def test_a_request_that_asks_to_upgrade_is_answered_in_http1_and_closed(guarded):
    upgrade = b"Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA\r\n"
    (answer,) = _exchange(guarded, b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + upgrade + b"\r\n")
    assert answer[0] == 200 and answer[1]["connection"] == "close"
    body = b'{"input":[[[1,2,3,4]]],"kernel_size":2}'
    head = b"POST /pool/max1d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + upgrade
    (answer,) = _exchange(guarded, head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
    _problem(answer, 400, "upgrades no connection")


def test_the_protocol_is_used_only_on_the_uvicorn_it_is_built_on(monkeypatch, caplog):
    """pyproject.toml's uvicorn range is the one the protocol names; outside it, uvicorn's own
    httptools protocol serves, with a warning."""
    import re
    import tomllib
    from pathlib import Path

    import uvicorn

    from app import connections

    pyproject = tomllib.loads((Path(__file__).resolve().parent.parent / "pyproject.toml").read_text())
    (spec,) = [dep for dep in pyproject["project"]["dependencies"] if dep.startswith("uvicorn")]
    low, high = (tuple(map(int, bound.split("."))) for bound in re.findall(r"[<>]=?(\d+\.\d+)", spec))
    assert (low, high) == connections.UVICORN_RANGE
    assert connections.http_protocol() is connections.GuardedHttpProtocol
    monkeypatch.setattr(uvicorn, "__version__", ".".join(map(str, high)) + ".0")
    with caplog.at_level("WARNING", logger="app.connections"):
        assert connections.http_protocol() == "httptools"
    assert "outside the range" in caplog.text
