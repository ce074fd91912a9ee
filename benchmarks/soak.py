"""A bounded load and soak run: valid and hostile requests mixed, at high concurrency,
against a service this script starts on a loopback port.

Every valid answer is checked against torch, computed here in process; every
hostile request must get its exact 4xx. It stops by itself after --seconds or
--requests, whichever comes first, and prints requests per second, answers by
status, wrong answers (must be 0), dropped connections and the server's memory
before and after.

    python -m benchmarks.soak [--seconds 300] [--requests 1000000] [--clients 64]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F

from benchmarks.serve import server


@dataclass(frozen=True)
class Probe:
    name: str
    path: str
    body: bytes
    headers: dict[str, str]
    status: int
    check: Callable[[httpx.Response], bool] | None = None  # for 200s: the answer matches torch


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def json_probe(name: str, op: str, document: dict, status: int, check=None) -> Probe:  # type: ignore[no-untyped-def]
    return Probe(name, f"/pool/{op}", orjson.dumps(document), {"content-type": "application/json"}, status, check)


def same(expected: np.ndarray) -> Callable[[httpx.Response], bool]:
    def check(response: httpx.Response) -> bool:
        got = np.array(response.json()["output"], dtype=np.float64)
        return got.shape == expected.shape and np.allclose(got, expected, rtol=1e-5, atol=1e-6)

    return check


def same_npz(expected: np.ndarray) -> Callable[[httpx.Response], bool]:
    def check(response: httpx.Response) -> bool:
        with np.load(io.BytesIO(response.content)) as archive:
            return np.array_equal(archive["output"], expected)

    return check


def probes() -> list[Probe]:
    rng = np.random.default_rng(1)
    tiny = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    medium = rng.standard_normal((2, 8, 32, 32)).astype(np.float32)
    large = rng.standard_normal((4, 16, 64, 64)).astype(np.float32)
    t = torch.from_numpy
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return [
        json_probe(
            "tiny max2d",
            "max2d",
            {"input": tiny.tolist(), "kernel_size": 2},
            200,
            same(F.max_pool2d(t(tiny), 2).numpy()),
        ),
        json_probe(
            "avg2d same",
            "avg2d",
            {"input": medium.tolist(), "kernel_size": 3, "stride": 1, "padding": "same"},
            200,
            same(F.avg_pool2d(t(medium), 3, 1, 1, count_include_pad=False).numpy()),
        ),
        json_probe(
            "global-avg2d base64",
            "global-avg2d",
            {"input": {"npy_base64": base64.b64encode(npy(medium)).decode()}, "output_encoding": "json"},
            200,
            same(F.adaptive_avg_pool2d(t(medium), 1).numpy()),
        ),
        Probe(
            "large .npy max2d",
            "/pool/max2d?kernel_size=2",
            npy(large),
            {"content-type": "application/x-npy"},
            200,
            same_npz(F.max_pool2d(t(large), 2).numpy()),
        ),
        json_probe("typo", "max2d", {"input": tiny.tolist(), "kernal_size": 2}, 422),
        json_probe("ragged", "max2d", {"input": [[[1, 2], [3]]], "kernel_size": 1}, 400),
        json_probe("unknown op", "max9d", {"input": tiny.tolist()}, 404),
        json_probe("bad base64", "max2d", {"input": {"npy_base64": "@@@"}, "kernel_size": 2}, 400),
        json_probe("kernel too big", "max2d", {"input": tiny.tolist(), "kernel_size": 9}, 422),
        Probe("not json", "/pool/max2d", b"{nope", {"content-type": "application/json"}, 400),
        Probe("form", "/pool/max2d", b"a=1", {"content-type": "application/x-www-form-urlencoded"}, 415),
        Probe("pickle", "/pool/max1d?kernel_size=1", pickled.getvalue(), {"content-type": "application/x-npy"}, 400),
        # Declares 100 GB and sends two bytes: refused before any of it is read.
        Probe(
            "huge declared",
            "/pool/max2d",
            b"{}",
            {"content-type": "application/json", "content-length": str(10**11)},
            413,
        ),
    ]


async def raw_post(port: int, path: str, headers: dict[str, str], body: bytes) -> int:
    """A request written by hand on its own connection: the status of its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode() + body)
        await writer.drain()
        return int((await reader.readline()).split()[1])
    finally:
        writer.close()


def memory_mib(pid: int) -> float:
    match = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match.group(1)) / 1024 if match else 0.0


async def soak(port: int, seconds: float, limit: int, clients: int) -> dict[str, object]:
    cases = probes()
    weights = [40, 10, 10, 3, 6, 5, 5, 5, 5, 3, 3, 2, 3]
    statuses: Counter[str] = Counter()
    wrong: Counter[str] = Counter()
    dropped = 0
    sent = 0
    deadline = time.monotonic() + seconds
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async def worker(seed: int) -> None:
        nonlocal dropped, sent
        chooser = random.Random(seed)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=60) as http:
            while time.monotonic() < deadline and sent < limit:
                probe = chooser.choices(cases, weights)[0]
                sent += 1
                try:
                    if "content-length" in probe.headers:  # a lie httpx would not tell
                        status = await raw_post(port, probe.path, probe.headers, probe.body)
                        statuses[str(status)] += 1
                        if status != probe.status:
                            wrong[probe.name] += 1
                        continue
                    response = await http.post(probe.path, content=probe.body, headers=probe.headers)
                except (httpx.HTTPError, OSError):
                    dropped += 1
                    continue
                statuses[str(response.status_code)] += 1
                if response.status_code == 503:
                    continue  # shed under load: a clean answer, to be retried
                if response.status_code != probe.status or (probe.check is not None and not probe.check(response)):
                    wrong[probe.name] += 1

    start = time.monotonic()
    await asyncio.gather(*(worker(i) for i in range(clients)))
    elapsed = time.monotonic() - start
    return {"seconds": elapsed, "requests": sent, "statuses": statuses, "wrong": wrong, "dropped": dropped}


def loop_lag(port: int) -> dict[str, float]:
    """The server's event-loop lag histogram, cumulative: bucket bound -> samples, and the sum."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    figures = {}
    for line in text.splitlines():
        if line.startswith("pool_event_loop_lag_seconds_bucket"):
            figures[line.split('le="')[1].split('"')[0]] = float(line.split()[-1])
        elif line.startswith("pool_event_loop_lag_seconds_sum"):
            figures["sum"] = float(line.split()[-1])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    with server("app.main:app", args.threads) as (port, pid):
        # warm up once, then measure
        asyncio.run(soak(port, 2, 200, 4))
        before, lag_before = memory_mib(pid), loop_lag(port)
        result = asyncio.run(soak(port, args.seconds, args.requests, args.clients))
        after, lag_after = memory_mib(pid), loop_lag(port)
    seconds = float(result["seconds"])  # type: ignore[arg-type]
    requests = int(result["requests"])  # type: ignore[call-overload]
    print(f"{requests} requests in {seconds:.0f} s from {args.clients} clients: {requests / seconds:.0f} requests/s")
    print("answers by status:", dict(sorted(result["statuses"].items())))  # type: ignore[attr-defined]
    print("wrong answers:", sum(result["wrong"].values()), dict(result["wrong"]))  # type: ignore[attr-defined]
    print("dropped connections:", result["dropped"])
    print(f"server memory: {before:.0f} MiB before, {after:.0f} MiB after")
    lag = {bound: lag_after[bound] - lag_before.get(bound, 0.0) for bound in lag_after}
    samples = lag.pop("+Inf")
    total = lag.pop("sum")
    within = ", ".join(f"{float(bound) * 1000:g} ms: {count / samples:.1%}" for bound, count in lag.items())
    print(f"event-loop lag, {samples:.0f} samples: mean {total / samples * 1000:.2f} ms; within {within}")


if __name__ == "__main__":
    main()
