"""Beyond-torch paths against torch's native op on equal work, in process.

Each line runs one of the service's own compute paths (the catalogue's plan
and compute, as a request would) and the torch call that does the same
amount of pooling, alternately, and prints the medians and their ratio.
The target is a ratio of at most 2.

    python benchmarks/beyond_torch.py [--repeat 15] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from app.layout import Layout, global_indices
from app.operations import OPERATIONS


def service(op: str, x: torch.Tensor, channels_last: bool = False, **params: Any) -> Callable[[], Any]:
    spec = OPERATIONS[op]
    model = spec.params.model_validate({"input": None, **params})
    layout = Layout(spec.rank, True, channels_last)
    plan = spec.family.plan(model, layout.canonical_shape(tuple(x.shape)))

    def run() -> Any:
        out, indices = spec.family.compute(layout.canonical(x), model, plan, {})
        if indices is not None and model.indices_layout == "global":
            indices = global_indices(indices, tuple(layout.canonical_shape(tuple(x.shape))))
        return layout.present(out).contiguous(), indices

    return run


def median_ms(fn: Callable[[], Any], repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def compare(name: str, ours: Callable[[], Any], native: Callable[[], Any], repeat: int) -> float:
    ours(), native()  # warm up
    a, b = [], []
    for _ in range(repeat):  # interleaved, so drift on a noisy machine hits both alike
        a += median_ms(ours, 1)
        b += median_ms(native, 1)
    ratio = statistics.median(a) / statistics.median(b)
    print(f"{name:<58} {statistics.median(a):9.2f} ms {statistics.median(b):9.2f} ms {ratio:7.2f}x")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(8, 64, 112, 112)
    xi = torch.randint(-(2**40), 2**40, (8, 64, 56, 56), dtype=torch.int64)
    xbig = xi * 2**20  # beyond 2**53 and far apart: no float64 holds these exactly
    stamps = 1_764_000_000_000_000_000 + xi  # nanosecond timestamps: beyond 2**53, close together
    spread = torch.randint(-(2**63), 2**63 - 1, xi.shape, dtype=torch.int64)  # over all of int64
    xf = xi.to(torch.float64)  # equal work: the same element size
    r = args.repeat
    print(f"torch {torch.__version__}, {args.threads} threads, input {tuple(x.shape)} float32, median of {r}")
    print(f"{'beyond-torch path vs native torch on equal work':<58} {'service':>12} {'torch':>12} {'ratio':>8}")
    ratios = []
    with torch.inference_mode():
        ratios.append(
            compare(
                "max2d k3 s2, pads [[1,0],[1,0]] vs padding 1",
                service("max2d", x, kernel_size=3, stride=2, padding=[[1, 0], [1, 0]]),
                lambda: F.max_pool2d(x, 3, 2, 1),
                r,
            )
        )
        ratios.append(
            compare(
                "  the same with return_indices",
                service("max2d", x, kernel_size=3, stride=2, padding=[[1, 0], [1, 0]], return_indices=True),
                lambda: F.max_pool2d(x, 3, 2, 1, return_indices=True),
                r,
            )
        )
        ratios.append(
            compare(
                "max2d k2 s1 'same' (pads 0,1) vs padding 0",
                service("max2d", x, kernel_size=2, stride=1, padding="same"),
                lambda: F.max_pool2d(x, 2, 1),
                r,
            )
        )
        ratios.append(
            compare(
                "avg2d k2 s1 'same' (pads 0,1) vs k2 s1",
                service("avg2d", x, kernel_size=2, stride=1, padding="same"),
                lambda: F.avg_pool2d(x, 2, 1),
                r,
            )
        )
        ratios.append(
            compare(
                "avg2d k3 s2 pads [[1,0],[1,0]] vs padding 1",
                service("avg2d", x, kernel_size=3, stride=2, padding=[[1, 0], [1, 0]]),
                lambda: F.avg_pool2d(x, 3, 2, 1),
                r,
            )
        )
        ratios.append(
            compare(
                "avg2d k3 s1 dilation 2 vs k3 s1",
                service("avg2d", x, kernel_size=3, stride=1, dilation=2),
                lambda: F.avg_pool2d(x, 3, 1),
                r,
            )
        )
        ratios.append(
            compare(
                "lp2d p=2 k2 s2 pads [[0,1],[0,1]] vs lp_pool2d k2 s2",
                service("lp2d", x, norm_type=2, kernel_size=2, stride=2, padding=[[0, 1], [0, 1]]),
                lambda: F.lp_pool2d(x, 2, 2, 2),
                r,
            )
        )
        ratios.append(
            compare(
                "lp2d p=3 k3 s2 absolute vs lp_pool2d k3 s2",
                service("lp2d", x, norm_type=3, kernel_size=3, stride=2, absolute=True),
                lambda: F.lp_pool2d(x, 3, 3, 2),
                r,
            )
        )
        integer_rows = [
            ("adaptive-max2d int64 56->7 vs float64 adaptive_max_pool2d", xi, 7),
            ("adaptive-max2d int64 56->5 (12 cells every 11) vs float64", xi, 5),
            ("adaptive-max2d int64 56->6 (uneven windows) vs float64", xi, 6),
            ("  the same with int64 timestamps (beyond 2**53)", stamps, 6),
            ("  the same with int64 values beyond 2**53, 2**60 apart", xbig, 6),
            ("  the same with int64 values spread over all of int64", spread, 6),
        ]
        for name, values, size in integer_rows:
            ours = service("adaptive-max2d", values, output_size=size, return_indices=True)
            ratios.append(compare(name, ours, lambda size=size: F.adaptive_max_pool2d(xf, size, True), r))
        ratios.append(
            compare(
                "max2d k2 channels_last vs channels_first",
                service("max2d", x.permute(0, 2, 3, 1).contiguous(), channels_last=True, kernel_size=2),
                lambda: F.max_pool2d(x, 2),
                r,
            )
        )
        ratios.append(
            compare(
                "max2d k2 indices_layout global vs plane",
                service("max2d", x, kernel_size=2, return_indices=True, indices_layout="global"),
                lambda: F.max_pool2d(x, 2, return_indices=True),
                r,
            )
        )
    print(f"worst ratio {max(ratios):.2f}x (target: at most 2x)")


if __name__ == "__main__":
    main()
