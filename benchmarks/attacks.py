"""How the service answers everyone else while it is attacked.

Starts `python -m app` on a loopback port (default settings) and runs each
attack for a while, alone, while a probe asks for `/healthz` and pools a tiny
tensor every 50 ms on connections of its own. For each attack it prints the
probe's latencies (median, 99th percentile, worst) and the server's event-loop
lag over the attack (`pool_event_loop_lag_seconds`: mean and the bucket that
holds the worst sample).

    python -m benchmarks.attacks [--seconds 8]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson

from benchmarks.serve import free_port, wait_ready
from benchmarks.soak import loop_lag

TINY = orjson.dumps({"input": [[[[1.0, 2.0], [3.0, 4.0]]]], "kernel_size": 2})
COSTLIEST = orjson.dumps({"input": [[[[1.0]]]], "kernel_size": 125, "stride": 1, "padding": [[124, 124]] * 2})
# Sixteen planes near the cap, so that it runs in pieces and stops when its client leaves.
PLANES = orjson.dumps({"input": [[[[1.0]]] * 16], "kernel_size": 75, "stride": 1, "padding": [[74, 74]] * 2})


def _json_body(rows: int, per_row: int) -> bytes:
    row = b"[" + b",".join([b"1.5"] * per_row) + b"]"
    return b'{"input":[[[' + b",".join([row] * rows) + b']]],"kernel_size":2,"output_encoding":"flat"}'


def _post(port: int, body: bytes, timeout: float = 60) -> int:
    try:
        headers = {"content-type": "application/json"}
        return httpx.post(
            f"http://127.0.0.1:{port}/pool/max2d", content=body, headers=headers, timeout=timeout
        ).status_code
    except httpx.HTTPError:
        return 0


def costliest(port: int, stop: threading.Event) -> int:
    """The costliest request the work cap admits, back to back."""
    count = 0
    while not stop.is_set():
        _post(port, COSTLIEST)
        count += 1
    return count


def abandoned(port: int, stop: threading.Event) -> int:
    """Sixteen planes near the cap, the client gone a tenth of a second later."""
    count = 0
    while not stop.is_set():
        _post(port, PLANES, timeout=0.1)
        count += 1
    return count


def large_json(port: int, stop: threading.Event) -> int:
    """60 MiB nested JSON bodies, answered as JSON."""
    body, count = _json_body(4000, 4000), 0
    while not stop.is_set():
        _post(port, body)
        count += 1
    return count


def _drip(socks: list[socket.socket], data: bytes, every: float, stop: threading.Event) -> None:
    """Send `data` on every socket each `every` seconds until `stop`."""
    while not stop.wait(every):
        for sock in socks:
            try:
                sock.sendall(data)
            except OSError:
                pass  # closed by the server, as it may


def slow_bodies(port: int, stop: threading.Event) -> int:
    """Twenty bodies that declare 64 MiB and send a byte a second."""
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(b"POST /pool/max2d HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        sock.sendall(b"Content-Length: 67108864\r\n\r\n")
        socks.append(sock)
    _drip(socks, b" ", 1, stop)
    for sock in socks:
        sock.close()
    return len(socks)


def idle_connections(port: int, stop: threading.Event) -> int:
    """900 connections that send nothing and 100 that trickle a head, a header line every half second."""
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(900)]
    trickling = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
    for sock in trickling:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
    _drip(trickling, b"X: y\r\n", 0.5, stop)
    for sock in idle + trickling:
        sock.close()
    return len(idle) + len(trickling)


def large_heads(port: int, stop: threading.Event) -> int:
    """Heads of 1 MiB, back to back (each a 431)."""
    count = 0
    header = b"X-Big: " + b"a" * (1 << 20) + b"\r\n"
    while not stop.is_set():
        with socket.create_connection(("127.0.0.1", port)) as sock:
            try:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + header + b"\r\n")
            except OSError:
                pass
            try:
                sock.recv(1024)
            except OSError:
                pass
        count += 1
    return count


def quiet(port: int, stop: threading.Event) -> int:
    stop.wait()
    return 0


ATTACKS: list[tuple[str, Callable[[int, threading.Event], int], int]] = [
    ("none", quiet, 1),
    ("costliest admitted compute, 2 clients", costliest, 2),
    ("16-plane compute, abandoned at 0.1 s, 2 clients", abandoned, 2),
    ("60 MiB JSON bodies, 1 client", large_json, 1),
    ("20 slow bodies of a declared 64 MiB", slow_bodies, 1),
    ("1000 idle or trickling connections", idle_connections, 1),
    ("1 MiB heads, 1 client", large_heads, 1),
]


def probe(port: int, stop: threading.Event, health: list[float], tiny: list[float]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
        while not stop.is_set():
            started = time.perf_counter()
            client.get("/healthz").raise_for_status()
            middle = time.perf_counter()
            client.post("/pool/max2d", content=TINY, headers={"content-type": "application/json"}).raise_for_status()
            health.append(middle - started)
            tiny.append(time.perf_counter() - middle)
            stop.wait(0.05)


def figures(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{statistics.median(ordered) * 1e3:7.1f} {p99 * 1e3:7.1f} {ordered[-1] * 1e3:7.1f}"


def lag_over(before: dict[str, float], after: dict[str, float]) -> str:
    lag = {bound: after[bound] - before.get(bound, 0.0) for bound in after}
    samples, total = lag.pop("+Inf"), lag.pop("sum")
    worst = next((bound for bound, count in lag.items() if count >= samples), "+Inf")
    bound = f"≤ {float(worst) * 1e3:g}" if worst != "+Inf" else "> max"
    return f"{total / max(samples, 1) * 1e3:6.2f} {bound:>9}"


def _record(attack: Callable[[int, threading.Event], int], port: int, stop: threading.Event, sent: list[int]) -> None:
    sent.append(attack(port, stop))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=8)
    args = parser.parse_args()
    port = free_port()
    env = {**os.environ, "POOL_PORT": str(port), "POOL_LOG_LEVEL": "warning"}
    process = subprocess.Popen(
        [sys.executable, "-m", "app"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", process=process)
        print(f"{args.seconds:g} s per attack; latencies in ms (median, p99, worst); loop lag in ms (mean, worst)")
        print(f"{'attack':<50} {'sent':>5}  {'/healthz':^23}  {'tiny max2d':^23}  {'loop lag':^16}")
        for name, attack, clients in ATTACKS:
            stop = threading.Event()
            health: list[float] = []
            tiny: list[float] = []
            sent: list[int] = []
            before = loop_lag(port)
            workers = [
                threading.Thread(target=_record, args=(attack, port, stop, sent), daemon=True) for _ in range(clients)
            ]
            for worker in workers:
                worker.start()
            time.sleep(0.5)  # the attack under way
            prober = threading.Thread(target=probe, args=(port, stop, health, tiny))
            prober.start()
            time.sleep(args.seconds)
            stop.set()
            prober.join()
            for worker in workers:
                worker.join(timeout=120)
            time.sleep(0.5)
            after: Any = loop_lag(port)
            print(f"{name:<50} {sum(sent):>5}  {figures(health)}  {figures(tiny)}  {lag_over(before, after)}")
    finally:
        process.terminate()
        process.wait(timeout=30)


if __name__ == "__main__":
    main()
