"""End to end: the service started as the README starts it, on a free loopback port, over TCP."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests.conftest import load_npz, npy_bytes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = _free_port()
    env = {**os.environ, "POOL_DEVICE": "cpu", "POOL_TORCH_THREADS": "1", "POOL_PORT": str(port)}
    log_path = tmp_path_factory.mktemp("server") / "uvicorn.log"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "app"],  # the README's way: uvicorn with uvloop and httptools
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"uvicorn did not become ready:\n{log_path.read_text()}")
            time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_real_server_answers_json_binary_and_errors(server):
    with httpx.Client(base_url=server, timeout=30) as http:
        grid = [[[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]]]
        answer = http.post("/pool/max2d", json={"input": grid, "kernel_size": 2, "return_indices": True})
        assert "server" not in answer.headers  # no version banner
        assert answer.headers["x-content-type-options"] == "nosniff"
        body = answer.json()
        assert body["output"] == [[[[6.0, 8.0], [3.0, 4.0]]]] and body["indices"] == [[[[5, 7], [8, 15]]]]

        x = np.arange(2 * 3 * 8 * 8, dtype=np.float32).reshape(2, 3, 8, 8)
        response = http.post(
            "/pool/avg2d?kernel_size=2", content=npy_bytes(x), headers={"content-type": "application/x-npy"}
        )
        assert response.headers["content-type"] == "application/x-npz"
        expected = x.reshape(2, 3, 4, 2, 4, 2).mean(axis=(3, 5))
        np.testing.assert_allclose(load_npz(response.content)["output"], expected)

        problem = http.post("/pool/max2d", json={"input": grid, "kernal_size": 2})
        assert problem.status_code == 422 and problem.headers["content-type"] == "application/problem+json"
        assert http.get("/docs").status_code == 200
