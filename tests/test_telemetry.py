"""Prometheus metrics and the JSON log line of each request."""

from __future__ import annotations

import io
import json
import logging
import re
import signal
import time

import httpx
import pytest

from app.telemetry import JsonLines
from tests.conftest import PROCESSES, serving

GRID = [[[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]]]


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
    pattern = (
        rf"^{re.escape(name)}\{{{re.escape(wanted)}\}} ([0-9.e+]+)$" if labels else rf"^{re.escape(name)} ([0-9.e+]+)$"
    )
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name} {labels} not in metrics"
    return float(match.group(1))


def test_metrics_count_requests_latency_bytes_and_rejections(make_client):
    client = make_client(max_body_bytes=10_000)
    for _ in range(3):
        assert client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2}).status_code == 200
    client.post("/pool/max2d", json={"input": GRID})  # 422
    client.post("/pool/max2d", content=b"x" * 20_000, headers={"content-type": "application/json"})  # 413
    client.post("/pool/no-such-op", json={})  # 404, labelled unknown rather than by what the client sent
    infer = {
        "parameters": {"kernel_size": 2},
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    }
    assert client.post("/v2/models/max2d/versions/1/infer", json=infer).status_code == 200
    text = client.get("/metrics").text
    native = {"op": "max2d", "protocol": "native"}
    assert metric(text, "pool_requests_total", **native, status="200") == 3
    assert metric(text, "pool_requests_total", **native, status="422") == 1
    assert metric(text, "pool_requests_total", op="unknown", protocol="native", status="404") == 1
    assert metric(text, "pool_requests_total", op="max2d", protocol="v2-rest", status="200") == 1
    assert metric(text, "pool_request_duration_seconds_count", **native) == 5
    assert metric(text, "pool_request_bytes_total", **native) >= 20_000
    assert metric(text, "pool_response_bytes_total", **native) > 0
    assert metric(text, "pool_rejected_total", reason="too_large") == 1
    assert metric(text, "pool_computations_in_flight") == 0 and metric(text, "pool_queue_length") == 0
    assert 'pool_device_info{device="cpu"' in text
    assert "no-such-op" not in text
    # The process's own figures, from prometheus-client's collector.
    assert metric(text, "process_resident_memory_bytes") > 10**6 and metric(text, "process_open_fds") > 0


def test_queue_wait_is_measured_for_computations_in_the_pool(make_client):
    client = make_client(inline_max_work=0)  # every computation in the pool
    for _ in range(4):
        assert client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2}).status_code == 200
    assert client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2, "dry_run": True}).status_code in (
        200,
        422,
    )
    text = client.get("/metrics").text
    assert metric(text, "pool_queue_wait_seconds_count") == 4
    assert 0 < metric(text, "pool_queue_wait_seconds_sum") < 4


def test_metrics_answer_head_and_get(client):
    head = client.request("HEAD", "/metrics")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-type"].startswith("text/plain")
    assert client.get("/metrics").text.startswith("#")


def test_metrics_need_a_key_when_keys_are_set(make_client):
    client = make_client(api_keys=["k1"])
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers={"x-api-key": "k1"}).status_code == 200


def test_each_request_logs_one_json_line(client, monkeypatch):
    stream = io.BytesIO()
    monkeypatch.setattr(client.access_log, "stream", stream)
    client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2}, headers={"x-request-id": "abc-1"})
    client.access_log.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    mine = [line for line in lines if line["request_id"] == "abc-1"]
    assert len(mine) == 1
    line = mine[0]
    assert line["op"] == "max2d" and line["status"] == 200 and line["method"] == "POST"
    assert line["latency_ms"] > 0 and line["bytes_in"] > 0 and line["bytes_out"] > 0
    assert line["level"] == "info" and line["logger"] == "app.access" and line["client"]


def test_error_logs_are_json_lines_too(caplog):
    record = logging.LogRecord("app.errors", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    assert json.loads(JsonLines().format(record))["message"] == "boom x"


@pytest.mark.parametrize("level", ["verbose", ""])
def test_log_level_is_checked_at_start(level):
    from app.settings import Settings

    with pytest.raises(ValueError, match="log_level"):
        Settings(log_level=level)


def test_the_event_loop_lag_is_measured():
    import asyncio

    from app.telemetry import Metrics

    metrics = Metrics("cpu", "x")

    async def scenario() -> None:
        watcher = asyncio.ensure_future(metrics.watch_loop(interval=0.05))
        await asyncio.sleep(0.12)
        time.sleep(0.3)  # something holds the loop
        await asyncio.sleep(0.12)
        watcher.cancel()

    asyncio.run(scenario())
    count = metrics.registry.get_sample_value("pool_event_loop_lag_seconds_count")
    total = metrics.registry.get_sample_value("pool_event_loop_lag_seconds_sum")
    assert count >= 3 and 0.2 < total < 1.0


def test_a_running_server_exports_its_event_loop_lag(server):
    count = 0.0
    for _ in range(50):  # measured four times a second from the server's start
        text = httpx.get(f"{server}/metrics", timeout=5).text
        line = next(line for line in text.splitlines() if line.startswith("pool_event_loop_lag_seconds_count"))
        count = float(line.split()[-1])
        if count >= 1:
            break
        time.sleep(0.1)
    assert count >= 1


def test_every_log_line_is_json_uvicorns_and_grpcs_included(tmp_path):
    """The server's whole log, start to stop: uvicorn's lines, the gRPC server's, the access
    lines and the service's own, each one JSON object with the same fields."""
    from benchmarks.serve import free_port

    with serving(tmp_path, grpc_port=str(free_port()), drain_s="0.2") as url:
        assert httpx.get(f"{url}/healthz").status_code == 200
        PROCESSES[url].send_signal(signal.SIGTERM)
        PROCESSES[url].wait(timeout=30)
    lines = [json.loads(line) for line in (tmp_path / "server.log").read_text().splitlines()]
    assert all({"time", "level", "logger"} <= set(line) for line in lines), lines
    messages = " | ".join(line.get("message", "") for line in lines)
    for said in ("Started server process", "Uvicorn running on", "gRPC server listening", "Finished server process"):
        assert said in messages, messages
    assert any(line["logger"] == "app.access" and line["path"] == "/healthz" for line in lines)
