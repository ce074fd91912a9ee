"""End to end: the service started as the README starts it, on a free loopback port, over TCP."""

from __future__ import annotations

import httpx
import numpy as np

from tests.conftest import load_npz, npy_bytes


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
