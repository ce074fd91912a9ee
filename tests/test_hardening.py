"""API keys, overload shedding, time limits, disconnects, request ids and headers."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import httpx
import numpy as np
import orjson
import pytest

from app import pipeline
from app.errors import ClientGone, Overloaded
from app.execution import Executor
from app.settings import Settings
from tests.conftest import assert_problem, load_npz, npy_bytes

GRID = [[[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]]]
KEY = "s3cret-key-0123456789"
OK_BODY = {"input": GRID, "kernel_size": 2}


# ---------------------------------------------------------------- API keys


@pytest.fixture
def locked(make_client):
    return make_client(api_keys=[KEY, "another-key"])


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": "Bearer wrong"},
        {"x-api-key": "wrong"},
        {"authorization": KEY},
        {"authorization": "Basic " + KEY},
    ],
)
def test_compute_routes_refuse_a_missing_or_wrong_key(locked, headers):
    response = locked.post("/pool/max2d", json=OK_BODY, headers=headers)
    assert_problem(response, 401, detail_has="API key")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    "headers", [{"authorization": f"Bearer {KEY}"}, {"authorization": "bearer another-key"}, {"x-api-key": KEY}]
)
def test_a_valid_key_in_either_header_is_accepted(locked, headers):
    response = locked.post("/pool/max2d", json=OK_BODY, headers=headers)
    assert response.status_code == 200 and response.json()["output"] == [[[[6.0, 8.0], [3.0, 4.0]]]]


def test_the_key_is_checked_before_anything_else(locked):
    assert_problem(locked.post("/pool/no-such-op", json={}), 401)
    too_big = locked.post("/pool/max2d", content=b"x" * 100, headers={"content-length": str(10**12)})
    assert_problem(too_big, 401)


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/info", "/pool", "/docs", "/redoc", "/openapi.json"])
def test_health_docs_schema_info_and_catalogue_stay_open(locked, path):
    assert locked.get(path).status_code == 200
    assert locked.get("/info").json()["auth"] is True


def test_keys_never_reach_logs_or_settings_repr(locked, caplog):
    caplog.set_level(logging.DEBUG)
    locked.post("/pool/max2d", json=OK_BODY, headers={"authorization": f"Bearer {KEY}"})
    locked.post("/pool/max2d", json={"input": "bad"}, headers={"x-api-key": KEY})
    locked.post("/pool/max2d", json=OK_BODY, headers={"x-api-key": KEY + "x"})
    assert KEY not in caplog.text
    assert KEY not in repr(Settings(api_keys=[KEY]))


def test_docs_let_a_person_enter_a_key(locked):
    schema = locked.get("/openapi.json").json()
    schemes = schema["components"]["securitySchemes"]
    assert schemes["bearer"]["scheme"] == "bearer" and schemes["apiKey"]["name"] == "X-API-Key"
    assert schema["paths"]["/pool/max2d"]["post"]["security"]


# ---------------------------------------------------------------- overload and time limits


def test_the_pool_sheds_work_past_its_slots_and_queue_at_once():
    executor = Executor(Settings(device="cpu", max_concurrency=1, max_queue=1))
    release = threading.Event()

    async def scenario() -> list[str]:
        first = asyncio.ensure_future(executor.run(release.wait, 10))
        second = asyncio.ensure_future(executor.run(lambda: "queued"))
        await asyncio.sleep(0.05)
        outcomes = []
        try:
            await executor.run(lambda: "third")
        except Overloaded as exc:
            outcomes.append(f"503 {exc.headers['Retry-After']}")
        release.set()
        outcomes += [str(await first), await second, await executor.run(lambda: "after")]
        return outcomes

    assert asyncio.run(scenario()) == ["503 1", "True", "queued", "after"]
    executor.close()


def test_a_client_that_leaves_gives_back_its_queue_place():
    executor = Executor(Settings(device="cpu", max_concurrency=1, max_queue=1))
    release = threading.Event()
    ran = []

    async def scenario() -> int:
        busy = asyncio.ensure_future(executor.run(release.wait, 10))
        await asyncio.sleep(0.05)

        async def gone_now() -> None:
            return None

        with pytest.raises(ClientGone):
            await executor.run(lambda: ran.append("never"), gone=gone_now)
        release.set()
        await busy
        for _ in range(200):  # slots come back on the loop, a moment after the threads finish
            if executor.taken == 0:
                break
            await asyncio.sleep(0.01)
        return executor.taken

    assert asyncio.run(scenario()) == 0 and ran == []
    executor.close()


def test_too_slow_requests_get_504(make_client, monkeypatch):
    release = threading.Event()
    real_finish = pipeline.finish

    def slow_finish(job):
        release.wait(5)
        return real_finish(job)

    monkeypatch.setattr(pipeline, "finish", slow_finish)
    client = make_client(max_concurrency=1, max_queue=0, inline_max_work=0, request_timeout_s=0.3)
    response = client.post("/pool/max2d", json=OK_BODY)
    assert_problem(response, 504, detail_has="longer than")
    release.set()
    monkeypatch.setattr(pipeline, "finish", real_finish)
    executor = client.app.state.runtime.executor
    for _ in range(100):  # the slot frees when the thread finishes, a moment after the 503
        if executor.taken == 0:
            break
        time.sleep(0.02)
    assert client.post("/pool/max2d", json=OK_BODY).status_code == 200


# ---------------------------------------------------------------- request ids, headers, 500s, CORS


def test_every_answer_carries_a_request_id_and_nosniff(client):
    for response in (
        client.post("/pool/max2d", json=OK_BODY),
        client.post("/pool/max2d", json={"input": GRID}),
        client.get("/healthz"),
        client.get("/nothing"),
    ):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert len(response.headers["x-request-id"]) == 32
    echoed = client.post("/pool/max2d", json=OK_BODY, headers={"x-request-id": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    replaced = client.get("/healthz", headers={"x-request-id": "bad id with spaces"})
    assert replaced.headers["x-request-id"] != "bad id with spaces"


def test_a_bug_is_a_bare_500_with_the_request_id_logged(make_client, monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise KeyError("internal detail that must not leak")

    monkeypatch.setattr(pipeline, "prepare", broken)
    response = make_client().post("/pool/max2d", json=OK_BODY, headers={"x-request-id": "bug-7"})
    problem = assert_problem(response, 500)
    assert problem["request_id"] == "bug-7" and "internal detail" not in response.text
    assert "bug-7" in caplog.text and "internal detail" in caplog.text


def test_cors_is_off_by_default_and_configurable(client, make_client):
    preflight = {"origin": "https://app.example", "access-control-request-method": "POST"}
    assert "access-control-allow-origin" not in client.request("OPTIONS", "/pool/max2d", headers=preflight).headers
    allowed = make_client(cors_origins=["https://app.example"])
    answer = allowed.request("OPTIONS", "/pool/max2d", headers=preflight)
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"
    pooled = allowed.post("/pool/max2d", json=OK_BODY, headers={"origin": "https://app.example"})
    assert pooled.headers["access-control-allow-origin"] == "https://app.example"


# ---------------------------------------------------------------- hostile bodies


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (orjson.dumps(OK_BODY), {"content-length": "5"}, 400),
        (b"{}", {"content-length": "not-a-number"}, 400),
        (b"[" * 5000 + b"]" * 5000, {}, 400),
        (orjson.dumps({"input": GRID, "kernel_size": [[[[[[2]]]]]]}), {}, 422),
        (
            npy_bytes(np.zeros((2, 2), np.float32)).replace(b"(2, 2)", b"(9, 9)"),
            {"content-type": "application/x-npy"},
            400,
        ),
    ],
)
def test_hostile_bodies_get_a_clean_4xx_and_the_server_carries_on(client, body, headers, status):
    response = client.post(
        "/pool/max2d?kernel_size=2" if "x-npy" in str(headers) else "/pool/max2d",
        content=body,
        headers={"content-type": "application/json", **headers},
    )
    assert_problem(response, status)
    assert client.post("/pool/max2d", json=OK_BODY).json()["output"] == [[[[6.0, 8.0], [3.0, 4.0]]]]


# ---------------------------------------------------------------- bodies in flight


def test_request_bodies_in_flight_share_one_budget():
    from app.requests import BodyBudget, BodyPace, Incoming, PaceKeeper, read_body

    budget = BodyBudget(2000, retry_after_s=3)
    pace = PaceKeeper(BodyPace(timeout_s=60, min_rate=1))
    hold = asyncio.Event()

    def arriving(first: bytes):
        chunks = iter([first])

        async def receive():
            chunk = next(chunks, None)
            if chunk is None:
                await hold.wait()
                return {"type": "http.request", "body": b"", "more_body": False}
            return {"type": "http.request", "body": chunk, "more_body": True}

        return receive

    async def scenario() -> list[object]:
        # The budget counts what arrived, not what was declared.
        first = asyncio.ensure_future(
            read_body(Incoming({"content-length": "1800"}, None, arriving(b"x" * 1500)), 10_000, budget, pace)
        )
        await asyncio.sleep(0.01)
        outcomes: list[object] = [budget.held]
        try:
            await read_body(Incoming({"content-length": "1000"}, None, arriving(b"y" * 600)), 10_000, budget, pace)
        except Overloaded as exc:
            outcomes.append(exc.headers["Retry-After"])
        outcomes.append(budget.held)
        first.cancel()  # the client went away mid-upload: its share comes back
        with pytest.raises(asyncio.CancelledError):
            await first
        outcomes.append(budget.held)
        return outcomes

    assert asyncio.run(scenario()) == [1500, "3", 1500, 0]


def test_a_large_body_buffer_is_reused_only_when_nothing_views_it():
    from app.requests import BodyBudget

    budget = BodyBudget(1 << 30, retry_after_s=3)
    body = budget.buffer(2 << 20)
    view = np.frombuffer(body, dtype=np.uint8)
    budget.recycle(body)  # still viewed: it must not be handed out again
    assert budget.buffer(2 << 20) is not body
    del view
    budget.recycle(body)
    assert budget.buffer(2 << 20) is body and len(body) == 2 << 20
    assert budget.buffer(2 << 20) is not body  # handed out once


def test_large_bodies_of_one_size_back_to_back_each_get_their_own_answer(client):
    rng = np.random.default_rng(5)
    for _ in range(3):
        x = rng.standard_normal((4, 64, 64, 64)).astype(np.float32)  # 4 MiB: its buffer is reused
        response = client.post(
            "/pool/max2d?kernel_size=2", content=npy_bytes(x), headers={"content-type": "application/x-npy"}
        )
        got = load_npz(response.content)["output"]
        np.testing.assert_array_equal(got, x.reshape(4, 64, 32, 2, 32, 2).max(axis=(3, 5)))


def test_the_budget_comes_back_after_every_request(client):
    budget = client.app.state.runtime.bodies
    client.post("/pool/max2d", json=OK_BODY)
    client.post("/pool/max2d", json={"input": "bad"})
    client.post("/pool/max2d", content=b"{nope", headers={"content-type": "application/json"})
    assert budget.held == 0


def test_a_bug_outside_the_endpoint_is_logged_as_the_500_it_is(make_client):
    client = make_client()

    def broken() -> dict:
        raise KeyError("a bug in a router route")

    client.app.openapi = broken

    async def fetch() -> int:
        transport = httpx.ASGITransport(app=client.app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://pool") as plain:
            return (await plain.get("/openapi.json")).status_code

    assert asyncio.run(fetch()) == 500
    client.access_log.flush()
    lines = [orjson.loads(line) for line in client.access_log.stream.getvalue().splitlines()]
    assert [line["status"] for line in lines if line["path"] == "/openapi.json"] == [500]
