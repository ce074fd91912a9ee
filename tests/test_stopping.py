"""Computations that can be stopped: a long one runs in pieces of whole planes with a
checkpoint between them, so a request that ran out of time (504) or whose client
left frees its compute slot within about a piece's time, not when the work is done;
and the pieces, put together, are exactly the whole."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from app import execution
from app.operations import OPERATIONS
from app.settings import Settings
from tests.conftest import assert_problem, json_post_scope
from tests.test_ops import DTYPE_MATRIX, MATRIX, check_case


def _long(planes: int, kernel: int = 100) -> dict:
    """max2d over `planes` one-pixel planes, each with kernel**4 window cells to visit."""
    pad = kernel - 1
    return {
        "input": [[[[float(c)]] for c in range(planes)]],
        "kernel_size": kernel,
        "stride": 1,
        "padding": [[pad, pad], [pad, pad]],
    }


def _pooled(kernel: int = 40) -> dict:
    """A small request whose work is over the inline limit: it needs a compute slot."""
    return {"input": [[[[1.0, 2.0], [3.0, 4.0]]]], "kernel_size": kernel, "stride": 1, "padding": [[39, 39]] * 2}


@given(st.integers(1, 40), st.integers(1, 40), st.integers(1, 10**12))
def test_pieces_cover_every_plane_once_in_order(batch, channels, work):
    split = execution.pieces(batch, channels, work)
    planes = [(n, c) for n in range(batch) for c in range(channels)]
    if split is None:
        return
    covered = [
        (n, c)
        for piece in split
        for n in range(batch)[piece[0]]
        for c in range(channels)[piece[1] if len(piece) > 1 else slice(None)]
    ]
    assert covered == planes
    per_plane = -(-work // (batch * channels))
    for piece in split:
        size = len(range(batch)[piece[0]]) * (len(range(channels)[piece[1]]) if len(piece) > 1 else channels)
        assert size == 1 or size * per_plane <= execution.PIECE_WORK


@pytest.fixture(params=["planes", "batch entries"])
def tiny_pieces(request, monkeypatch):
    """Every computation split into single planes, or into single batch entries."""
    if request.param == "planes":
        monkeypatch.setattr(execution, "PIECE_WORK", 1)
    else:
        monkeypatch.setattr(
            execution, "pieces", lambda batch, channels, work: [(slice(n, n + 1),) for n in range(batch)]
        )


@pytest.mark.parametrize(("op", "case"), MATRIX)
def test_pieces_give_the_whole_answer(client, tiny_pieces, op, case):
    check_case(client, OPERATIONS[op], case, "json")


@pytest.mark.parametrize(("op", "case", "dtype"), DTYPE_MATRIX)
def test_pieces_give_the_whole_answer_in_every_dtype(client, tiny_pieces, op, case, dtype):
    form = "json" if dtype == "bfloat16" else "npz" if OPERATIONS[op].family.extra_tensors else "npy"
    check_case(client, OPERATIONS[op], case, form, dtype, accept="application/json")


def test_a_timed_out_computation_is_a_504_and_frees_its_slot(make_client):
    client = make_client(max_concurrency=1, max_queue=0, request_timeout_s=0.5, max_work=10**11)
    started = time.perf_counter()
    response = client.post("/pool/max2d", json=_long(60))  # seconds of work, unsplit
    assert_problem(response, 504, detail_has="longer than 0.5 s")
    assert "retry-after" not in response.headers  # it ran: not safe to send elsewhere blindly
    assert time.perf_counter() - started < 3
    # The slot is free again within about a piece's time, long before the work would end.
    deadline = time.perf_counter() + 3
    while (status := client.post("/pool/max2d", json=_pooled()).status_code) == 503:
        assert time.perf_counter() < deadline, "the stopped computation kept its slot"
        time.sleep(0.05)
    assert status == 200
    assert client.app.state.runtime.executor.taken == 0


def test_a_computation_whose_client_left_frees_its_slot(make_client):
    client = make_client(max_concurrency=1, max_queue=0, max_work=10**11)
    executor = client.app.state.runtime.executor
    body = orjson.dumps(_long(60))
    sent: list[dict] = []

    async def scenario() -> float:
        delivered = False

        async def receive():
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.sleep(0.3)
            return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        await client.app(json_post_scope("/pool/max2d", len(body)), receive, send)
        left = time.perf_counter()
        while executor.taken:
            await asyncio.sleep(0.02)
        return time.perf_counter() - left

    freed_after = asyncio.run(scenario())
    assert sent == []  # nobody to answer
    assert freed_after < 2, f"the slot stayed taken {freed_after:.2f} s after the client left"


def test_a_computation_cancelled_by_shutdown_stops_at_its_next_checkpoint():
    executor = execution.Executor(Settings(device="cpu", torch_threads=1, max_concurrency=1))
    ran: list[int] = []

    def long_work() -> None:
        for step in range(1000):  # ten seconds, unless stopped
            execution.checkpoint()
            ran.append(step)
            time.sleep(0.01)

    async def scenario() -> float:
        task = asyncio.ensure_future(executor.run(long_work))
        await asyncio.sleep(0.2)
        task.cancel()  # as the server does when its grace period is over
        with pytest.raises(asyncio.CancelledError):
            await task
        cancelled = time.perf_counter()
        while executor.taken:
            await asyncio.sleep(0.01)
        return time.perf_counter() - cancelled

    try:
        assert asyncio.run(scenario()) < 1
        assert 5 < len(ran) < 200
    finally:
        executor.close()


def _long_infer(planes: int, **parameters: int) -> dict:
    """`_long` as the protocol's inference request, with its own parameters."""
    body = _long(planes)
    return {
        "parameters": {key: body[key] for key in ("kernel_size", "padding", "stride")} | parameters,
        "inputs": [{"name": "input", "shape": [1, planes, 1, 1], "datatype": "FP32", "data": list(range(planes))}],
    }


@pytest.mark.parametrize("large_body", [False, True])
def test_the_protocols_timeout_bounds_its_request(make_client, large_body):
    """Triton's `timeout` (microseconds) stops the computation as the service's limit does;
    a large body, decoded in the pool, keeps it from there."""
    inline = 1 if large_body else 2**20
    client = make_client(max_concurrency=1, max_queue=0, max_work=10**11, inline_max_bytes=inline)
    started = time.perf_counter()
    response = client.post("/v2/models/max2d/infer", json=_long_infer(60, timeout=300_000, priority=3))
    assert_problem(response, 504, detail_has="the request's timeout")
    assert assert_problem(response, 504)["error"]
    assert time.perf_counter() - started < 3
    deadline = time.perf_counter() + 3
    while client.app.state.runtime.executor.taken:
        assert time.perf_counter() < deadline, "the stopped computation kept its slot"
        time.sleep(0.05)
    # Without a timeout, or with a generous one, the same parameters answer.
    quick = _long_infer(2, timeout=60_000_000)
    assert client.post("/v2/models/max2d/infer", json=quick).status_code == 200
    refused = client.post("/v2/models/max2d/infer", json=_long_infer(2, timeout=-1))
    assert assert_problem(refused, 400)["error"] == "parameters.timeout: is a non-negative integer"
