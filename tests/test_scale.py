"""Three replicas behind nginx (Debian's, with the project's configuration) on loopback
ports, under a bounded mixed load over HTTP and gRPC, while one replica is killed with
SIGKILL and later restarted and another is stopped with SIGTERM: every request gets
torch's answer."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from benchmarks.replicas import nginx_config
from benchmarks.serve import free_port, wait_ready

NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="Debian's nginx is not installed (.ci/run installs it)")


class Replica:
    def __init__(self, port: int, grpc_port: int, log: Path) -> None:
        self.port, self.grpc_port, self.log = port, grpc_port, log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "POOL_DEVICE": "cpu", "POOL_TORCH_THREADS": "1", "POOL_PORT": str(self.port)}
        env.update(POOL_GRPC_PORT=str(self.grpc_port), POOL_DRAIN_S="1", POOL_SHUTDOWN_GRACE_S="5")
        env.update(POOL_LOG_LEVEL="warning")
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app"], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        wait_ready(f"http://127.0.0.1:{self.port}/readyz")

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    replicas = [Replica(free_port(), free_port(), tmp_path / f"replica-{i}.log") for i in range(3)]
    for replica in replicas:
        replica.start()
    port, grpc_port = free_port(), free_port()
    config = nginx_config(tmp_path, port, grpc_port, [(r.port, r.grpc_port) for r in replicas])
    log = (tmp_path / "nginx.log").open("wb")
    nginx = subprocess.Popen(
        [NGINX, "-p", str(tmp_path), "-c", str(config), "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/nginx-health")
        yield f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}", replicas
    finally:
        nginx.terminate()
        nginx.wait(timeout=30)
        log.close()
        for replica in replicas:
            replica.stop()


def test_nothing_is_lost_when_replicas_die_and_stop(cluster):
    url, grpc_target, replicas = cluster
    rng = np.random.default_rng(8)
    tiny = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    medium = rng.standard_normal((2, 4, 32, 32)).astype(np.float32)
    jobs = [
        ("max2d", tiny, {"kernel_size": 2}, F.max_pool2d(torch.from_numpy(tiny), 2)),
        (
            "avg2d",
            medium,
            {"kernel_size": 3, "padding": "same", "stride": 1},
            F.avg_pool2d(torch.from_numpy(medium), 3, 1, 1, count_include_pad=False),
        ),
    ]
    total = 300
    done = {"count": 0}
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(index: int) -> str:
        op, x, params, want = jobs[index % 2]
        outcome = over_grpc(op, x, params, want) if index % 3 == 2 else over_http(op, x, params, want)
        with lock:
            done["count"] += 1
        return outcome

    def over_grpc(op: str, x: np.ndarray, params: dict, want: torch.Tensor) -> str:
        client = triton.InferenceServerClient(grpc_target)
        tensor = triton.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        try:
            for _attempt in range(6):  # UNAVAILABLE (every slot taken, or a replica gone) is retried
                try:
                    got = client.infer(op, [tensor], parameters=params, client_timeout=30).as_numpy("output")
                except InferenceServerException as error:
                    if error.status() == "StatusCode.UNAVAILABLE":
                        time.sleep(0.25)
                        continue
                    return f"wrong ({error.status()})"
                return "right" if np.allclose(got, want.numpy(), rtol=1e-5, atol=1e-6) else "wrong (grpc)"
            return "UNAVAILABLE six times"
        finally:
            client.close()

    def over_http(op: str, x: np.ndarray, params: dict, want: torch.Tensor) -> str:
        with httpx.Client(base_url=url, timeout=30) as http:
            for _attempt in range(6):  # a clean 503 is retried, as its Retry-After says
                try:
                    response = http.post(f"/pool/{op}", json={"input": x.tolist(), **params})
                except httpx.TransportError:
                    outcome = "transport error"
                    break
                if response.status_code == 503:
                    time.sleep(float(response.headers.get("retry-after", "1")) / 4)
                    continue
                got = np.array(response.json()["output"], dtype=np.float32) if response.status_code == 200 else None
                right = got is not None and np.allclose(got, want.numpy(), rtol=1e-5, atol=1e-6)
                outcome = "right" if right else f"wrong ({response.status_code})"
                break
            else:
                outcome = "503 six times"
        return outcome

    def chaos() -> None:
        def when(count: int) -> None:
            while done["count"] < count:
                time.sleep(0.01)

        when(total // 5)
        replicas[0].signal(signal.SIGKILL)  # dies mid-load, with requests in flight
        when(2 * total // 5)
        replicas[0].process.wait(timeout=30)
        replicas[0].start()  # and comes back
        when(3 * total // 5)
        replicas[1].signal(signal.SIGTERM)  # drains and stops

    chaos_thread = threading.Thread(target=chaos, daemon=True)
    chaos_thread.start()
    with ThreadPoolExecutor(max_workers=12) as pool:
        outcomes = list(pool.map(one, range(total)))
    chaos_thread.join(timeout=60)
    # Drained, then uvicorn's graceful shutdown, which ends by re-raising the SIGTERM it caught.
    assert replicas[1].process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert outcomes.count("right") == total, {o: outcomes.count(o) for o in set(outcomes)}
