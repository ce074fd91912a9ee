"""How long the costliest requests the work cap admits take to compute.

For every family, in each dtype class it takes (float32; int64 for the max-type
families; fractional pooling in float32), it builds requests whose planned work
lies just under the cap (`POOL_MAX_WORK`, default from the settings): windows
that are few but huge (a small input, a large kernel, padding), and many small
ones over a large input. Each is planned and computed by the service's own
pipeline, in process, on one thread per core, and timed.

    python -m benchmarks.work_cap [--cap N] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from app.codecs import Limits, Tensor
from app.execution import Executor
from app.layout import Layout
from app.operations import OPERATIONS
from app.pipeline import Job, compute, plan_output
from app.settings import Settings

Build = Callable[[int], tuple[tuple[int, ...], dict[str, Any]]]


def big_windows(rank: int) -> Build:
    """One pixel per plane, windows of n cells a side over n - 1 padding cells."""
    return lambda n: ((1, 1, *([1] * rank)), {"kernel_size": n, "stride": 1, "padding": [[n - 1, n - 1]] * rank})


def many_windows(rank: int) -> Build:
    """n x n (x n) planes of 8 channels, 3-cell windows at stride 1."""
    return lambda n: ((1, 8, *([n] * rank)), {"kernel_size": 3, "stride": 1, "padding": 1})


def dilated(rank: int) -> Build:
    """One dilated window of n cells a side: its sum walks the kernel cell by cell."""
    return lambda n: (
        (1, 1, *([64] * rank)),
        {"kernel_size": n, "dilation": 2, "stride": 1 << 30, "padding": [[0, 2 * n]] * rank},
    )


def whole(rank: int) -> Build:
    return lambda n: ((1, 4, *([n] * rank)), {})


def adaptive(rank: int) -> Build:
    return lambda n: ((1, 8, *([n] * rank)), {"output_size": [max(1, n // 3)] * rank})


def fractional(rank: int) -> Build:
    return lambda n: ((1, 4, *([n] * rank)), {"kernel_size": 5, "output_size": [n - 5] * rank, "random_seed": 1})


def unpool(rank: int) -> Build:
    return lambda n: ((1, 4, *([n] * rank)), {"kernel_size": 2})


ROWS: list[tuple[str, str, Build, dict[str, Any]]] = [
    ("max2d", "float32", big_windows(2), {}),
    ("max2d", "int64", big_windows(2), {}),
    ("max2d", "float32", many_windows(2), {}),
    ("max3d", "float32", many_windows(3), {}),
    ("avg2d", "float32", big_windows(2), {}),
    ("avg2d", "float32", dilated(2), {}),
    ("lp2d", "float32", big_windows(2), {"norm_type": 3}),
    ("lp1d", "float32", dilated(1), {"norm_type": 2}),
    ("adaptive-max2d", "float32", adaptive(2), {}),
    ("adaptive-max2d", "int64", adaptive(2), {}),
    ("adaptive-avg3d", "float32", adaptive(3), {}),
    ("global-max3d", "int64", whole(3), {}),
    ("fractional-max2d", "float32", fractional(2), {}),
    ("fractional-max3d", "float32", fractional(3), {}),
    ("max-unpool2d", "float32", unpool(2), {}),
]


def largest_under(cap: int, work: Callable[[int], int | None]) -> int:
    """The largest n whose work is at most `cap` (work grows with n; None: not admitted)."""
    low = next((n for n in range(1, 64) if work(n) is not None), 1)
    high = 2 * low
    while (w := work(high)) is not None and w <= cap and high < 1 << 20:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        w = work(middle)
        low, high = (middle, high) if w is not None and w <= cap else (low, middle)
    return low


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap", type=int, default=Settings.model_fields["max_work"].default)
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()
    settings = Settings(device="cpu", torch_threads=args.threads)
    executor = Executor(settings)
    limits = Limits(max_elements=settings.max_elements, max_ndim=settings.max_ndim, max_work=args.cap)
    print(f"torch {torch.__version__}, {args.threads} threads, cap {args.cap:,} cells")
    print(f"{'op':<18} {'dtype':<8} {'input shape':<22} {'work':>15} {'seconds':>8}")
    worst = 0.0
    for op, dtype, build, extra in ROWS:
        operation = OPERATIONS[op]

        def planned(n: int, operation: Any = operation, build: Build = build, extra: dict[str, Any] = extra) -> Any:
            shape, params = build(n)
            if math.prod(shape) > limits.max_elements:  # refused (413) before planning
                return None
            try:
                model = operation.params.model_validate({**params, **extra})
                return model, shape, plan_output(operation, model, shape, limits)
            except Exception:
                return None

        def work_of(n: int, planned: Any = planned) -> int | None:
            found = planned(n)
            return None if found is None else found[2].work

        n = largest_under(args.cap, work_of)
        found = planned(n)
        if found is None:
            print(f"{op:<18} {dtype:<8} no plannable request")
            continue
        model, shape, plan = found
        rng = np.random.default_rng(0)
        values = rng.integers(-1000, 1000, size=shape).astype(dtype)
        tensors = {"input": Tensor(values, dtype, "npy")}
        if operation.family.extra_tensors:
            plane = math.prod(plan.sizes)
            flat = rng.integers(0, plane, size=shape, dtype=np.int64)
            tensors["indices"] = Tensor(flat, "int64", "npy")
        layout = Layout(operation.rank, True, False)
        job = Job(operation, model.seeded(), layout, plan, tensors, "npy", executor, None)  # type: ignore[arg-type]
        with torch.inference_mode():
            started = time.perf_counter()
            compute(job)
            seconds = time.perf_counter() - started
        worst = max(worst, seconds)
        print(f"{op:<18} {dtype:<8} {list(shape)!s:<22} {plan.work:>15,} {seconds:8.2f}")
    print(f"slowest: {worst:.2f} s (target: about 2 s)")


if __name__ == "__main__":
    main()
