"""The app as `create_app` composes it: whatever extends it the usual way wraps the
pooling endpoint too, the schema documents exactly the paths the endpoint
serves, the endpoint answers its own 405s, CORS sits outside the key check,
and the torch-free layers stay torch-free."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from starlette.types import ASGIApp, Receive, Scope, Send

from app.operations import OPERATIONS
from app.paths import served_paths
from tests.conftest import Client, assert_problem

GRID = [[[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]]]
POOL = {"input": GRID, "kernel_size": 2}
INFER = {
    "parameters": {"kernel_size": 2},
    "inputs": [
        {"name": "input", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [v for row in GRID[0][0] for v in row]}
    ],
}
ROUTES = [("/pool/max2d", POOL), ("/v2/models/max2d/infer", INFER)]


@pytest.fixture
def fresh():
    client = Client()
    yield client
    client.close()


class Stamp:
    """An ASGI middleware as a user would write one: adds a header to every answer."""

    def __init__(self, app: ASGIApp, value: str) -> None:
        self.app = app
        self.value = value.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def stamped(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-stamp", self.value)]}
            await send(message)

        await self.app(scope, receive, stamped)


def test_add_middleware_wraps_the_pooling_endpoint_too(fresh):
    fresh.app.add_middleware(Stamp, value="outer")
    for path, body in ROUTES:
        response = fresh.post(path, json=body)
        assert response.status_code == 200 and response.headers["x-stamp"] == "outer", path
    assert fresh.get("/healthz").headers["x-stamp"] == "outer"
    assert fresh.post("/pool/no-such-op", json=POOL).headers["x-stamp"] == "outer"


def test_http_middleware_decorator_wraps_the_pooling_endpoint_too(fresh):
    seen = []

    @fresh.app.middleware("http")
    async def record(request, call_next):
        seen.append(request.url.path)
        response = await call_next(request)
        response.headers["x-seen"] = "yes"
        return response

    for path, body in ROUTES:
        assert fresh.post(path, json=body).headers["x-seen"] == "yes"
    assert seen == ["/pool/max2d", "/v2/models/max2d/infer"]


def test_opentelemetry_asgi_instrumentation_traces_the_pooling_endpoint(fresh):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    fresh.app.add_middleware(OpenTelemetryMiddleware, tracer_provider=provider)
    for path, body in ROUTES:
        assert fresh.post(path, json=body).status_code == 200
    servers = [span for span in exporter.get_finished_spans() if span.kind.name == "SERVER"]
    assert [span.attributes.get("http.target", span.attributes.get("url.path")) for span in servers] == [
        "/pool/max2d",
        "/v2/models/max2d/infer",
    ]
    assert all(
        span.attributes.get("http.status_code", span.attributes.get("http.response.status_code")) == 200
        for span in servers
    )


def test_the_schema_documents_exactly_the_paths_the_endpoint_serves(client):
    schema = client.get("/openapi.json").json()
    # The router's one POST route is the protocol's repository index; every other POST computes.
    posted = {path for path, methods in schema["paths"].items() if "post" in methods} - {"/v2/repository/index"}
    assert posted == served_paths(OPERATIONS)
    for path in posted:
        # Each is answered by the endpoint itself: a GET is its 405, never the router's 404.
        response = client.get(path.replace("{op}", "max2d").replace("{version}", "1"))
        assert_problem(response, 405)
        assert response.headers["allow"] == "POST"


def test_the_endpoint_answers_other_methods_with_405(client):
    for method in ("GET", "PUT", "DELETE", "PATCH"):
        assert_problem(client.request(method, "/pool/max2d"), 405, detail_has=method)
    problem = assert_problem(client.get("/v2/models/max2d/infer"), 405)
    assert problem["error"] == problem["detail"]
    assert client.get("/pool").status_code == 200  # the listing is FastAPI's


def test_the_protocols_binary_extension_works_cross_origin_with_keys(make_client):
    client = make_client(api_keys=["k1"], cors_origins=["https://app.example"])
    for path in ("/v2/models/max2d/infer", "/v2/models/max2d/versions/1/infer", "/v2/repository/index"):
        preflight = client.request(
            "OPTIONS",
            path,
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type, content-encoding, "
                "inference-header-content-length",
            },
        )
        assert preflight.status_code == 200, (path, preflight.text)
        assert "inference-header-content-length" in preflight.headers["access-control-allow-headers"].lower()
    header = b'{"parameters":{"kernel_size":2},"inputs":[{"name":"input","shape":[1,1,2,2],"datatype":"FP32",'
    header += b'"parameters":{"binary_data_size":16}}],"outputs":[{"name":"output","parameters":{"binary_data":true}}]}'
    answer = client.post(
        "/v2/models/max2d/infer",
        content=header + np.array([1, 2, 3, 4], "<f4").tobytes(),
        headers={
            "origin": "https://app.example",
            "authorization": "Bearer k1",
            "inference-header-content-length": str(len(header)),
        },
    )
    assert answer.status_code == 200
    exposed = answer.headers["access-control-expose-headers"].lower()
    assert "inference-header-content-length" in exposed
    length = int(answer.headers["inference-header-content-length"])
    assert np.frombuffer(answer.content[length:], "<f4").tolist() == [4.0]


def test_a_browser_preflight_is_answered_before_any_key_is_asked_for(make_client):
    client = make_client(api_keys=["k1"], cors_origins=["https://app.example"])
    for path, _ in ROUTES:
        response = client.request(
            "OPTIONS",
            path,
            headers={
                "origin": "https://app.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "x-api-key, content-type",
            },
        )
        assert response.status_code == 200, (path, response.text)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
    # The request itself still needs the key, and its refusal carries the CORS headers.
    refused = client.post("/pool/max2d", json=POOL, headers={"origin": "https://app.example"})
    assert_problem(refused, 401)
    assert refused.headers["access-control-allow-origin"] == "https://app.example"


def test_codecs_and_operation_table_import_neither_torch_nor_fastapi():
    probe = (
        "import sys, app.codecs, app.dtypes, app.operations, app.planning\n"
        "heavy = sorted(m for m in ('torch', 'fastapi', 'starlette') if m in sys.modules)\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_the_gate_and_the_server_entry_import_no_torch():
    probe = "import sys, app.gate, app.paths, app.responses, app.__main__\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_importing_and_building_the_app_starts_no_thread():
    probe = (
        "import threading, app.main\n"
        "before = threading.active_count()\n"
        "application = app.main.create_app()\n"
        "print(before, threading.active_count())"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["1", "1"]
