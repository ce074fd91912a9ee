"""Requests per second of the small workload (W1: max2d k=2 on 1x1x4x4, nested JSON,
return_indices) through nginx, with 1, 2 and 3 replicas on loopback ports.

    python -m benchmarks.replicas [--seconds 10] [--connections 64]

Needs Debian's nginx and wrk. Each replica is one uvicorn process with one torch
thread; on this 2-core machine nginx, wrk and the replicas share the two cores,
so the figures show where the cores run out, not how far replicas scale.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

from benchmarks.serve import free_port, wait_ready, wrk

ROOT = Path(__file__).resolve().parent.parent


def nginx_config(work: Path, port: int, grpc_port: int, replicas: list[tuple[int, int]]) -> Path:
    """The project's nginx.conf for replicas on loopback ports ((HTTP, gRPC) each), listening
    on `port` and `grpc_port`, with its temporary files and replica lists under `work`."""
    (work / "upstreams.conf").write_text(
        "".join(f"server 127.0.0.1:{http} max_fails=1 fail_timeout=2s;\n" for http, _ in replicas)
    )
    (work / "grpc_upstreams.conf").write_text(
        "".join(f"server 127.0.0.1:{grpc} max_fails=1 fail_timeout=2s;\n" for _, grpc in replicas)
    )
    config = (ROOT / "deploy" / "nginx" / "nginx.conf").read_text()
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    config = config.replace("listen 8081 http2;", f"listen 127.0.0.1:{grpc_port} http2;")
    config = config.replace("/tmp/", f"{work}/")
    if os.geteuid() == 0:
        config = "user root;\n" + config  # its workers write body buffers under `work`
    (work / "nginx.conf").write_text(config)
    return work / "nginx.conf"


def run(replicas: int, seconds: int, connections: int, body: bytes) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="pool-replicas-"))
    processes = []
    try:
        ports = [(free_port(), free_port()) for _ in range(replicas)]
        for port, grpc_port in ports:
            env = {**os.environ, "POOL_DEVICE": "cpu", "POOL_TORCH_THREADS": "1", "POOL_PORT": str(port)}
            env.update(POOL_GRPC_PORT=str(grpc_port), POOL_LOG_LEVEL="warning", PYTHONPATH=str(ROOT))
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", "app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            )
        for port, _ in ports:
            wait_ready(f"http://127.0.0.1:{port}/readyz")
        front = free_port()
        config = nginx_config(work, front, free_port(), ports)
        config.write_text(config.read_text().replace("worker_processes auto;", "worker_processes 1;"))
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        processes.append(
            subprocess.Popen(
                [nginx, "-p", str(work), "-c", str(config), "-g", "daemon off;"], stderr=subprocess.DEVNULL
            )
        )
        wait_ready(f"http://127.0.0.1:{front}/nginx-health")
        wrk(front, body, 2)  # warm up
        return wrk(front, body, seconds, connections)
    finally:
        for process in processes:
            process.terminate()
            process.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=64)
    args = parser.parse_args()
    tiny = np.random.default_rng(0).standard_normal((1, 1, 4, 4)).astype(np.float32)
    body = orjson.dumps({"input": tiny.tolist(), "kernel_size": 2, "return_indices": True})
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, W1 through nginx, {args.connections} connections")
    for replicas in (1, 2, 3):
        figures = run(replicas, args.seconds, args.connections, body)
        latency = f"p50 {figures['p50']:.2f} ms   p99 {figures['p99']:.2f} ms"
        print(f"{replicas} replica(s): {figures['rps']:8.0f} requests/s   {latency}")


if __name__ == "__main__":
    main()
