"""Slow clients lock no one out: a body is paced (408 past its time or below its
rate), and the body budget counts bytes that arrived, not sizes declared."""

from __future__ import annotations

import asyncio
import socket
import time

import httpx
import orjson

from tests.conftest import json_post_scope

SMALL = {"input": [[[[1.0, 2.0], [3.0, 4.0]]]], "kernel_size": 2}


async def _trickle(app, length: int, every: float, sent: list[dict]) -> None:
    """A request that declares `length` bytes and sends one every `every` seconds."""

    async def receive():
        await asyncio.sleep(every)
        return {"type": "http.request", "body": b" ", "more_body": True}

    async def send(message):
        sent.append(message)

    await app(json_post_scope("/pool/max2d", length), receive, send)


def _status(sent: list[dict]) -> tuple[int, dict]:
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], {**dict(start["headers"]), b"body": body}


def test_a_body_below_its_rate_is_408_and_closes(make_client):
    client = make_client(body_min_rate=100, body_timeout_s=30)
    sent: list[dict] = []
    started = time.perf_counter()
    asyncio.run(_trickle(client.app, 10_000, 0.2, sent))
    status, headers = _status(sent)
    assert status == 408 and time.perf_counter() - started < 5
    assert headers[b"content-type"] == b"application/problem+json" and headers[b"connection"] == b"close"
    assert orjson.loads(headers[b"body"])["status"] == 408


def test_a_body_past_its_time_is_408(make_client):
    client = make_client(body_min_rate=1, body_timeout_s=0.5)
    sent: list[dict] = []
    asyncio.run(_trickle(client.app, 10_000, 0.05, sent))
    assert _status(sent)[0] == 408


def test_slow_bodies_declaring_the_largest_size_reserve_nothing(make_client):
    client = make_client(max_concurrency=1, max_queue=0)  # a budget of two largest bodies
    trickles: list[list[dict]] = [[] for _ in range(20)]

    async def scenario() -> int:
        tasks = [asyncio.ensure_future(_trickle(client.app, 64 * 2**20, 0.5, sent)) for sent in trickles]
        await asyncio.sleep(0.2)
        transport = httpx.ASGITransport(app=client.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            status = (await http.post("/pool/max2d", json=SMALL)).status_code
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return status

    assert asyncio.run(scenario()) == 200


def test_twenty_slow_uploads_do_not_stop_a_small_request_on_a_real_server(server):
    host, port = server.removeprefix("http://").split(":")
    sockets = []
    try:
        for _ in range(20):
            sock = socket.create_connection((host, int(port)), timeout=5)
            sock.sendall(
                b"POST /pool/max2d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 67108864\r\n\r\n{"
            )
            sockets.append(sock)
        time.sleep(0.2)
        started = time.perf_counter()
        response = httpx.post(f"{server}/pool/max2d", json=SMALL, timeout=10)
        assert response.status_code == 200 and time.perf_counter() - started < 2
        assert httpx.get(f"{server}/healthz", timeout=5).status_code == 200
    finally:
        for sock in sockets:
            sock.close()
