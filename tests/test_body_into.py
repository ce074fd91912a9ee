"""A large declared body read from the socket straight into the app's buffer
(`app.requests.BODY_INTO`, offered by `app.connections`): the bytes are exactly the body's, the connection
reads the next request where the body ends (keep-alive, pipelining), a read that
stops early closes the connection after its answer, the pace and the budget hold
as bytes arrive, and a middleware that wraps `receive` still sees every byte.

The protocol is tested in process under both event loops with a small app that
takes the extension itself; the service end to end as `python -m app` runs it."""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import io
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
import uvicorn

from app.connections import GuardedHttpProtocol
from app.main import create_app
from app.requests import BODY_INTO
from app.settings import Settings
from tests.conftest import free_port, serving
from tests.test_connections import _answers, _connect, _read_all

LARGE = 3 * 2**20 + 12345  # past the size read straight into the buffer, and not a round number


def _body(size: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def _request(body: bytes, path: str = "/", extra: bytes = b"") -> bytes:
    return b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n%s\r\n" % (path.encode(), len(body), extra) + body


# ---------------------------------------------------------------- the protocol, in process


async def _reading_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reads the body as the endpoint does: the first chunk from `receive`, the rest through
    the extension when it is offered; answers what it read. `?stop=N` raises in `arrived`
    once N bytes have come straight in."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    headers = dict(scope["headers"])
    size = int(headers.get(b"content-length", b"0"))
    body = bytearray(size)
    first = await receive()
    received = len(first["body"])
    body[:received] = first["body"]
    extension = scope.get("extensions", {}).get(BODY_INTO)
    answer: dict[str, Any] = {"offered": extension is not None, "direct": 0, "calls": 0}
    stop = int(scope["query_string"].decode().removeprefix("stop=") or 0)
    if first["more_body"] and extension is not None:
        assert extension["receive"] == receive

        def arrived(count: int) -> None:
            answer["calls"] += 1
            answer["direct"] += count
            if stop and answer["direct"] >= stop:
                raise OverflowError("stopped")

        try:
            filled = await extension["into"](memoryview(body)[received:], arrived)
            received += filled
        except OverflowError:
            answer["stopped"] = True
    else:
        more = first["more_body"]
        while more:
            message = await receive()
            chunk = message.get("body", b"")
            body[received : received + len(chunk)] = chunk
            received += len(chunk)
            more = message.get("more_body", False)
    answer.update(received=received, sha256=hashlib.sha256(body[:received]).hexdigest())
    content = orjson.dumps(answer)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(content))]})
    await send({"type": "http.response.body", "body": content})


@pytest.fixture(scope="module", params=["uvloop", "asyncio"])
def reading(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The app above behind the service's connection protocol, under each event loop."""
    port = free_port()
    config = uvicorn.Config(
        _reading_app, host="127.0.0.1", port=port, loop=request.param, http=GuardedHttpProtocol, log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    yield "127.0.0.1", port
    server.should_exit = True
    thread.join(timeout=10)


def _json(answer: tuple[int, dict[str, str], bytes]) -> dict[str, Any]:
    status, _, content = answer
    assert status == 200
    return orjson.loads(content)


def test_a_large_body_comes_straight_in_whole_and_the_connection_goes_on(reading):
    bodies = [_body(LARGE, 1), _body(LARGE + 1, 2), b'{"small": true}']
    with _connect(reading) as sock:
        for body in bodies:
            sock.sendall(_request(body))
            data = b""
            while not data.endswith(b"}"):
                data += sock.recv(65536)
            answer = _json(_answers(data)[0])
            assert answer["received"] == len(body)
            assert answer["sha256"] == hashlib.sha256(body).hexdigest()
            if len(body) > 2**20:
                assert answer["offered"] and answer["direct"] > len(body) // 2


def test_a_request_pipelined_after_a_large_body_is_read_where_the_body_ends(reading):
    body, small = _body(LARGE, 3), b"x" * 10
    # One send: the next request's head follows the body's last byte in the same segment.
    with _connect(reading) as sock:
        sock.sendall(_request(body) + _request(small, extra=b"Connection: close\r\n"))
        answers = _answers(_read_all(sock))
    assert [_json(each)["sha256"] for each in answers] == [
        hashlib.sha256(body).hexdigest(),
        hashlib.sha256(small).hexdigest(),
    ]


def test_an_http_1_0_body_comes_straight_in_and_the_connection_closes(reading):
    body = _body(LARGE, 9)
    with _connect(reading) as sock:
        sock.sendall(b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        (answer,) = _answers(_read_all(sock))
    assert _json(answer)["direct"] > len(body) // 2 and _json(answer)["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_body_that_stops_early_closes_the_connection_after_its_answer(reading):
    body = _body(LARGE, 4)
    with _connect(reading) as sock:
        # Whatever follows the refusal (the rest of the body, another request) is never
        # read as a request: the connection closes once the answer is out.
        sock.sendall(_request(body, "/?stop=1000000") + _request(b"{}"))
        answers = _answers(_read_all(sock))
    assert len(answers) == 1
    answer = _json(answers[0])
    assert answer["stopped"] and 1_000_000 <= answer["direct"] < len(body)


def test_a_client_gone_mid_body_leaves_the_server_serving(reading):
    body = _body(LARGE, 5)
    for _ in range(3):
        with _connect(reading) as sock:
            sock.sendall(_request(body)[: len(body) // 2])
    body = _body(LARGE, 6)
    with _connect(reading) as sock:
        sock.sendall(_request(body, extra=b"Connection: close\r\n"))
        assert _json(_answers(_read_all(sock))[0])["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_chunked_body_is_not_read_straight_in(reading):
    body = _body(LARGE, 7)
    head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:70000], body[70000:])) + b"0\r\n\r\n"
    with _connect(reading) as sock:
        sock.sendall(head + chunks)
        answer = _json(_answers(_read_all(sock))[0])
    assert not answer["offered"] and answer["sha256"] == hashlib.sha256(body).hexdigest()


def test_the_buffer_must_be_what_is_left_of_the_body():
    async def run() -> str:
        # A connection whose request declared 100 bytes: 40 parsed, 10 of them not yet received.
        protocol = object.__new__(GuardedHttpProtocol)
        fields = {"body": bytearray(10), "response_complete": False, "waiting_for_100_continue": False}
        protocol.cycle = type("Cycle", (), fields)()  # type: ignore[assignment]
        protocol._reader = None
        protocol._declared, protocol._body_parsed = 100, 40
        with pytest.raises(ValueError, match="70 of the body are left"):
            await protocol._receive_into(protocol.cycle, memoryview(bytearray(60)), lambda n: None)
        with pytest.raises(RuntimeError, match="current one"):
            await protocol._receive_into(object(), memoryview(bytearray(70)), lambda n: None)  # type: ignore[arg-type]
        return "checked"

    assert asyncio.run(run()) == "checked"


# ---------------------------------------------------------------- a middleware that wraps receive


def test_a_middleware_that_wraps_receive_sees_every_byte(monkeypatch):
    direct: list[int] = []
    original = GuardedHttpProtocol._receive_into

    async def counted(self: GuardedHttpProtocol, *args: Any) -> int:
        filled = await original(self, *args)
        direct.append(filled)
        return filled

    monkeypatch.setattr(GuardedHttpProtocol, "_receive_into", counted)
    seen: list[int] = []

    class Counting:
        def __init__(self, app: Any, wrap: bool) -> None:
            self.app, self.wrap = app, wrap

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            async def counting() -> Any:
                message = await receive()
                seen.append(len(message.get("body", b"")))
                return message

            await self.app(scope, counting if self.wrap else receive, send)

    x = np.random.default_rng(8).standard_normal((4, 16, 64, 64)).astype(np.float32)
    body = _npy(x)
    expected = F.max_pool2d(torch.from_numpy(x), 2).numpy()
    for wrap in (True, False):
        app = create_app(Settings(grpc_port=0))
        app.add_middleware(Counting, wrap=wrap)
        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, http=GuardedHttpProtocol, log_level="warning")
        )
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while not server.started and time.monotonic() < deadline:
                time.sleep(0.02)
            seen.clear()
            direct.clear()
            answer = _post_npy(f"http://127.0.0.1:{port}", body)
            assert np.array_equal(answer, expected)
            # Nothing views the buffer once the answer is out: it is kept for the next body.
            spare = app.state.runtime.bodies._spare
            assert spare is not None and len(spare) == len(body)
        finally:
            server.should_exit = True
            thread.join(timeout=10)
        if wrap:
            assert sum(seen) == len(body) and direct == []
        else:
            assert direct and direct[0] > len(body) // 2


# ---------------------------------------------------------------- the service, end to end


def _npy(x: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, x)
    return out.getvalue()


def _post_npy(url: str, body: bytes, **headers: str) -> np.ndarray:
    response = httpx.post(
        f"{url}/pool/max2d?kernel_size=2",
        content=body,
        headers={"content-type": "application/x-npy", "accept": "application/x-npy", **headers},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("body-into"), max_body_bytes=str(8 * 2**20), max_queue="0",
                 max_concurrency="1", body_min_rate="100000") as url:  # fmt: skip
        yield url


def _large(seed: int) -> tuple[bytes, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((2, 16, 96, 96)).astype(np.float32)
    return _npy(x), F.max_pool2d(torch.from_numpy(x), 2).numpy()


def test_the_service_pools_large_bodies_exactly_on_one_connection(service):
    with httpx.Client(timeout=30) as client:
        for seed in (10, 11):
            body, expected = _large(seed)
            response = client.post(
                f"{service}/pool/max2d?kernel_size=2",
                content=body,
                headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
            )
            assert np.array_equal(np.load(io.BytesIO(response.content)), expected)
        small = client.post(f"{service}/pool/max2d", json={"input": [[[[1, 2], [3, 4]]]], "kernel_size": 2})
        assert small.json()["output"] == [[[[4.0]]]]


def test_the_service_reads_a_pipelined_request_after_a_large_body(service):
    body, expected = _large(12)
    small = b'{"input": [[[[1, 2], [3, 5]]]], "kernel_size": 2}'
    head = b"POST /pool/max2d?kernel_size=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
    host, port = service.removeprefix("http://").split(":")
    with _connect((host, int(port)), timeout=30) as sock:
        sock.sendall(
            head + b"Accept: application/x-npy\r\nContent-Length: %d\r\n\r\n" % len(body) + body
            + b"POST /pool/max2d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\n"
            + b"Content-Length: %d\r\n\r\n" % len(small) + small
        )  # fmt: skip
        (first, second) = _answers(_read_all(sock))
    assert first[0] == 200 and np.array_equal(np.load(io.BytesIO(first[2])), expected)
    assert second[0] == 200 and orjson.loads(second[2])["output"] == [[[[5.0]]]]


def test_the_service_takes_a_large_body_after_100_continue_and_gzip(service):
    body, expected = _large(13)
    host, port = service.removeprefix("http://").split(":")
    with _connect((host, int(port)), timeout=30) as sock:
        sock.sendall(
            b"POST /pool/max2d?kernel_size=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
            b"Accept: application/x-npy\r\nExpect: 100-continue\r\nConnection: close\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        sock.sendall(body)
        ((status, _, content),) = _answers(_read_all(sock))
    assert status == 200 and np.array_equal(np.load(io.BytesIO(content)), expected)
    packed = gzip.compress(body, compresslevel=1)
    assert np.array_equal(_post_npy(service, packed, **{"content-encoding": "gzip"}), expected)


def test_the_service_decodes_a_large_npy_base64_in_place_or_falls_back_exactly(service):
    """Text of several decoding steps: standard, decoded in place; URL-safe with its first
    step plain (zeros), so the step that fails is undone and the whole is read again;
    padding in a later step, refused."""
    x = np.zeros((4, 16, 96, 96), dtype=np.float32)
    x[2:] = np.random.default_rng(16).standard_normal((2, 16, 96, 96))
    expected = F.max_pool2d(torch.from_numpy(x), 2).numpy()
    raw = _npy(x)
    standard, url_safe = base64.b64encode(raw).decode(), base64.urlsafe_b64encode(raw).decode()
    assert "-" not in url_safe[: 2**20] and "-" in url_safe[2**20 :]
    padded_inside = standard[: 2**20 + 100] + "==" + standard[2**20 + 102 :]
    with httpx.Client(timeout=30) as client:
        for text, status in ((standard, 200), (url_safe, 200), (padded_inside, 400)):
            document = {"input": {"npy_base64": text}, "kernel_size": 2, "output_encoding": "npy_base64"}
            response = client.post(f"{service}/pool/max2d", json=document)
            assert response.status_code == status, response.text
            if status == 200:
                out = np.load(io.BytesIO(base64.b64decode(response.json()["output"]["npy_base64"])))
                assert np.array_equal(out, expected)
            else:
                assert "not valid base64" in response.json()["detail"]


def test_the_service_holds_a_large_body_to_its_pace(service):
    """A body that stalls after its first 100 kB is stopped (408, closed) though it is
    read straight into its buffer; one that pauses briefly is read whole."""
    body, expected = _large(14)
    host, port = service.removeprefix("http://").split(":")
    head = (
        b"POST /pool/max2d?kernel_size=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        b"Accept: application/x-npy\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    with _connect((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body[:100_000])
        started = time.monotonic()
        ((status, headers, content),) = _answers(_read_all(sock))
    assert status == 408 and headers["connection"] == "close" and b"did not arrive in time" in content
    assert time.monotonic() - started < 10
    with _connect((host, int(port)), timeout=30) as sock:
        sock.sendall(head + body[:100_000])
        time.sleep(0.3)
        sock.sendall(body[100_000:])
        ((status, _, content), *_) = _answers(_receive_one(sock))
    assert status == 200 and np.array_equal(np.load(io.BytesIO(content)), expected)


def _receive_one(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = data.partition(b"\r\n\r\n")
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
    )
    while len(rest) < length:
        rest += sock.recv(65536)
    return head + b"\r\n\r\n" + rest


def test_the_service_refuses_a_large_body_past_the_budget_as_it_arrives(service):
    """The budget (2 x 8 MiB x one slot) is taken as bytes land in the buffer: bodies held
    part-sent fill it, and the next body is refused with a 503 while it arrives; once they
    finish, large bodies are served again."""
    body, expected = _large(15)  # 1.2 MB
    host, port = service.removeprefix("http://").split(":")
    full = b"x" * (8 * 2**20 - 2**16)
    head = (
        b"POST /pool/max2d?kernel_size=2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-npy\r\n"
        b"Content-Length: %d\r\n\r\n"
    )
    holders = [_connect((host, int(port)), timeout=30) for _ in range(2)]
    try:
        for sock in holders:
            sock.sendall(head % len(full) + full[:-100])  # held, 100 bytes short
        time.sleep(0.5)
        with _connect((host, int(port)), timeout=30) as sock:
            sock.sendall(head % len(body) + body)
            ((status, headers, content),) = _answers(_read_all(sock))
        assert status == 503 and "retry-after" in headers and b"too many request bodies" in content
    finally:
        for sock in holders:
            sock.close()
    time.sleep(0.5)
    assert np.array_equal(_post_npy(service, body), expected)


def test_bytes_after_a_closing_request_are_not_a_request(reading):
    """After `Connection: close` (or HTTP/1.0) nothing that follows the body is read as a
    request, as uvicorn's own parser has it: the answer still comes."""
    body = _body(LARGE, 11)
    for request in (
        _request(body, extra=b"Connection: close\r\n") + b" ",
        b"POST / HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"\x00garbage" + b"x" * 50_000,
        _request(body, extra=b"Connection: close\r\n") + _request(b"{}"),
    ):
        with _connect(reading) as sock:
            sock.sendall(request)
            (answer,) = _answers(_read_all(sock))
        assert _json(answer)["sha256"] == hashlib.sha256(body).hexdigest()


# ---------------------------------------------------------------- npy_base64 decoded in the body


def _unpool_body(prefix: str, indices: str) -> bytearray:
    x = np.zeros((1, 1, 128, 128), np.int64)  # its bytes hold no t or f
    text = base64.b64encode(_npy(x)).decode()
    return bytearray(f'{{{prefix}"input":{{"npy_base64":"{text}"}},"indices":{indices},"kernel_size":2}}'.encode())


def test_booleans_beside_a_large_npy_base64_are_refused():
    """The letters counted for booleans are the document's, not the decoded bytes that now
    stand where its text was (and over the keys just before it)."""
    from app.codecs import Limits
    from app.errors import UndecodableBody
    from app.operations import OPERATIONS
    from app.requests import decode_json_request

    positions = (np.arange(128)[:, None] * 512 + np.arange(128)[None, :] * 2).reshape(1, 1, 128, 128)
    indices = orjson.dumps(positions.tolist()).decode().replace("[[[[0,2,4,", "[[[[true,true,true,", 1)
    limits = Limits(max_elements=10**8, max_ndim=8, max_work=10**12)
    with pytest.raises(UndecodableBody, match="holds true"):
        decode_json_request(_unpool_body('"output_encoding":"flat",', indices), OPERATIONS["max-unpool2d"], limits)
    _, tensors = decode_json_request(
        _unpool_body('"output_encoding":"flat",', orjson.dumps(positions.tolist()).decode()),
        OPERATIONS["max-unpool2d"],
        limits,
    )
    assert np.array_equal(tensors["indices"].array, positions)


def test_a_repeated_npy_base64_key_counts_its_last_value_as_json_does():
    from app.codecs import Limits
    from app.errors import UndecodableBody
    from app.operations import OPERATIONS
    from app.requests import decode_json_request

    text = base64.b64encode(_npy(np.ones((1, 1, 128, 128), np.float32))).decode()
    limits = Limits(max_elements=10**8, max_ndim=8, max_work=10**12)
    for body in (
        f'{{"input":{{"npy_base64":"{text}","npy_base64":"\\u0000"}},"kernel_size":2}}',
        f'{{"input":{{"npy_base64":"{text}"}},"input":{{"npy_base64":"\\u0000"}},"kernel_size":2}}',
    ):
        with pytest.raises(UndecodableBody):  # "\x00" is what orjson reads: no .npy
            decode_json_request(bytearray(body.encode()), OPERATIONS["max2d"], limits)
