"""Shared fixtures: an app built with test settings, talked to through httpx."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio.from_thread
import httpx
import numpy as np
import pytest

from app.main import create_app
from app.settings import Settings
from benchmarks.serve import free_port, wait_ready

# The gRPC server only where a test asks for it, on a free port (grpc_port=...): apps and
# servers run side by side here, and the default port is one for all.
os.environ["POOL_GRPC_PORT"] = "0"


class Client:
    """A synchronous face on `httpx.AsyncClient` over `httpx.ASGITransport`:
    the app runs in process, on an event loop in a helper thread."""

    def __init__(self, app_options: dict[str, Any] | None = None, **settings: Any) -> None:
        app_options = app_options or {}
        self.app = create_app(Settings(**{"device": "cpu", "torch_threads": 1, **settings}), **app_options)
        # Request lines go nowhere (a test that reads them reads this stream), so nothing
        # is written after pytest's closing summary.
        self.access_log = self.app.state.runtime.access_log
        self.access_log.stream = io.BytesIO()
        self._portal_context = anyio.from_thread.start_blocking_portal()
        self._portal = self._portal_context.__enter__()
        transport = httpx.ASGITransport(app=self.app)
        self._client = httpx.AsyncClient(transport=transport, base_url="http://testserver")

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._portal.call(lambda: self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self._portal.call(self._client.aclose)
        self._portal_context.__exit__(None, None, None)
        self.app.state.runtime.executor.close()
        self.access_log.close()


PROCESSES: dict[str, subprocess.Popen[bytes]] = {}  # each served URL's server, for tests that signal it


@contextlib.contextmanager
def serving(log_dir: Path, **settings: str) -> Iterator[str]:
    """The service started as the README starts it (`python -m app`), on a free loopback
    port, with these `POOL_*` settings besides: its base URL."""
    port = free_port()
    env = {**os.environ, "POOL_DEVICE": "cpu", "POOL_TORCH_THREADS": "1", "POOL_PORT": str(port)}
    env.update({f"POOL_{name.upper()}": value for name, value in settings.items()})
    log_path = log_dir / "server.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "app"], env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        PROCESSES[url] = process
        try:
            try:
                wait_ready(f"{url}/readyz", process=process)
            except RuntimeError:
                pytest.fail(f"the server did not become ready:\n{log_path.read_text()}")
            yield url
        finally:
            process.terminate()
            process.wait(timeout=30)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serving(tmp_path_factory.mktemp("server")) as url:
        yield url


@pytest.fixture(scope="session")
def client() -> Iterator[Client]:
    test_client = Client()
    yield test_client
    test_client.close()


@pytest.fixture
def make_client() -> Iterator[Callable[..., Client]]:
    """A client for an app with other settings (small limits, say)."""
    opened: list[Client] = []

    def build(**settings: Any) -> Client:
        opened.append(Client(**settings))
        return opened[-1]

    yield build
    for test_client in opened:
        test_client.close()


def json_post_scope(path: str, length: int) -> dict:
    """The ASGI scope of a JSON POST of `length` bytes, for tests that drive the app's
    `receive` and `send` themselves."""
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"content-length", str(length).encode())],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }


def npy_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def npz_bytes(**arrays: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.savez(out, **arrays)
    return out.getvalue()


def load_npz(body: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(body), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def assert_problem(response, status: int, *, loc: list | None = None, detail_has: str | None = None) -> dict:
    """An error answered as problem+json with this status (and a field or text it names)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    assert "Traceback" not in response.text
    if loc is not None:
        assert loc in [error["loc"] for error in problem["errors"]], problem
    if detail_has is not None:
        assert detail_has.lower() in problem["detail"].lower(), problem
    return problem
