"""The service on a GPU against the service on the CPU, and the large workload timed on both.

1. Every worked example of the catalogue (each op, each option beyond torch) and
   every dtype each op takes, sent to an app on the target device and to one on
   the CPU, in process: the answers must agree (exactly for max-type ops and
   integers, to rounding for averages). Fractional pooling with a seed and
   unpooling with repeated indices must agree too: those are deterministic.
2. The large workload, max2d k=2 s=2 on 8x64x112x112 float32: the pooling alone
   on each device (synchronised), and end to end, a .npy body through a running
   server on each device.

    POOL_DEVICE=cuda python -m benchmarks.gpu_check     # on a GPU machine
    POOL_DEVICE=cpu python -m benchmarks.gpu_check      # a dry run: the CPU against itself

Exits non-zero if any answer disagrees.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import statistics
import sys
import time
from typing import Any

import httpx
import numpy as np
import orjson
import torch
import torch.nn.functional as F

from app.dtypes import FLOAT_DTYPES
from app.main import create_app
from app.operations import OPERATIONS
from app.settings import Settings
from benchmarks.serve import npy, post, server

LARGE_PATH = "/pool/max2d?kernel_size=2&stride=2"
SAMPLE = np.random.default_rng(5).integers(-40, 40, size=(2, 3, 9, 8)).astype(np.float64) / 4  # exact in every dtype


def requests() -> list[tuple[str, str, dict[str, Any]]]:
    cases = []
    for name, spec in OPERATIONS.items():
        for label, example in spec.family.examples(spec.rank).items():
            if not example["value"].get("dry_run"):
                cases.append((name, label, example["value"]))
        first = next(iter(spec.family.examples(spec.rank).values()))["value"]
        if "input" not in first or spec.family.extra_tensors:
            continue
        x = (
            SAMPLE[(...,) + (0,) * (3 - spec.rank)]
            if spec.rank < 2
            else SAMPLE
            if spec.rank == 2
            else SAMPLE[..., None]
        )
        params = {k: v for k, v in first.items() if k not in ("input", "dtype", "data_format")}
        for dtype in spec.family.dtypes:
            cases.append((name, dtype, {**params, "input": x.tolist(), "dtype": dtype}))
    return cases


def same(a: Any, b: Any, exact: bool) -> bool:
    if a is None or b is None:
        return a is b
    left, right = np.array(a, dtype=np.float64), np.array(b, dtype=np.float64)
    if left.shape != right.shape:
        return False
    if exact:
        return bool(np.array_equal(left, right, equal_nan=True))
    return bool(np.allclose(left, right, rtol=2e-3, atol=1e-5, equal_nan=True))


async def answers(device: str, cases: list[tuple[str, str, dict[str, Any]]]) -> list[dict[str, Any]]:
    app = create_app(Settings(device=device))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://pool") as client:
        results = []
        for name, _, document in cases:
            # Nested JSON answers whatever the input's form, so the two sides compare as numbers.
            response = await client.post(f"/pool/{name}", content=orjson.dumps({**document, "output_encoding": "json"}))
            results.append({"status": response.status_code, **(response.json() if response.status_code == 200 else {})})
    app.state.runtime.executor.close()
    return results


def check(device: str) -> int:
    cases = requests()
    on_device = asyncio.run(answers(device, cases))
    on_cpu = asyncio.run(answers("cpu", cases))
    failures = 0
    for (name, label, document), got, want in zip(cases, on_device, on_cpu, strict=True):
        spec = OPERATIONS[name]
        exact = spec.family.dtypes != FLOAT_DTYPES or document.get("dtype", "float32") not in FLOAT_DTYPES
        agree = got["status"] == want["status"] and (
            got["status"] != 200
            or (same(got["output"], want["output"], exact) and same(got["indices"], want["indices"], True))
        )
        if not agree:
            failures += 1
            print(f"  DIFFERS  {name} [{label}]: {device} {got['status']}, cpu {want['status']}")
    print(f"{len(cases)} requests over {len(OPERATIONS)} ops, {device} against cpu: {len(cases) - failures} agree")
    return failures


def timed(fn: Any, repeat: int, sync: Any = lambda: None) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def timings(device: str, repeat: int) -> None:
    x = np.random.default_rng(0).standard_normal((8, 64, 112, 112)).astype(np.float32)
    body = npy(x)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"large workload, max2d k=2 s=2 on {x.shape} float32 ({x.nbytes / 2**20:.1f} MiB); {name}")
    for where in dict.fromkeys([device, "cpu"]):
        tensor = torch.from_numpy(x).to(where)
        sync = torch.cuda.synchronize if where.startswith("cuda") else (lambda: None)
        with torch.inference_mode():
            alone = timed(lambda tensor=tensor: F.max_pool2d(tensor, 2, 2), repeat, sync)
        os.environ["POOL_DEVICE"] = where
        with server("app.main:app", torch.get_num_threads()) as (port, _):
            connection = http.client.HTTPConnection("127.0.0.1", port)
            end_to_end = timed(
                lambda c=connection: post(c, LARGE_PATH, body, "application/x-npy", "application/x-npz"), repeat
            )
            connection.close()
        print(f"  {where:<8} compute alone {alone:8.2f} ms   end to end (.npy in, .npz out) {end_to_end:8.2f} ms")


def main() -> None:
    device = os.environ.get("POOL_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    print(f"torch {torch.__version__}, device {device}, CUDA available: {torch.cuda.is_available()}")
    failures = check(device)
    timings(device, repeat=int(os.environ.get("GPU_CHECK_REPEAT", "10")))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
