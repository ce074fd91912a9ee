"""The catalogue: every operation of `app.operations` with the kernels that compute it.

Each family names, per rank, the function that plans its output and the one
that computes it (`app.kernels`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from app import kernels
from app.operations import OPERATIONS, Family, Operation
from app.params import PoolParams

PlanFn = Callable[[Any, tuple[int, ...], int], kernels.Plan]
ComputeFn = Callable[[torch.Tensor, Any, kernels.Plan, dict[str, torch.Tensor]], kernels.Result]


def _same(fn: Any) -> Callable[[int], Any]:
    return lambda rank: fn


# family -> (plan, compute), each by rank
KERNELS: dict[str, tuple[Callable[[int], PlanFn], Callable[[int], ComputeFn]]] = {
    "max": (_same(kernels.sliding_plan), _same(kernels.max_compute)),
    "avg": (_same(kernels.averaging_plan), _same(kernels.avg_compute)),
    "lp": (_same(kernels.averaging_plan), _same(kernels.lp_compute)),
    "adaptive-max": (_same(kernels.adaptive_plan), _same(kernels.adaptive_max_compute)),
    "adaptive-avg": (_same(kernels.adaptive_plan), _same(kernels.adaptive_avg_compute)),
    "global-max": (kernels.global_plan, kernels.global_max_compute),
    "global-avg": (kernels.global_plan, kernels.global_avg_compute),
    "fractional-max": (_same(kernels.fractional_plan), _same(kernels.fractional_compute)),
    "max-unpool": (_same(kernels.unpool_plan), _same(kernels.unpool_compute)),
}


@dataclass(frozen=True)
class OpSpec:
    operation: Operation
    plan: PlanFn
    compute: ComputeFn

    @property
    def name(self) -> str:
        return self.operation.name

    @property
    def family(self) -> Family:
        return self.operation.family

    @property
    def rank(self) -> int:
        return self.operation.rank

    @property
    def params(self) -> type[PoolParams]:
        return self.operation.params

    @property
    def reference(self) -> str:
        return self.operation.reference


def _build() -> dict[str, OpSpec]:
    catalogue = {}
    for name, operation in OPERATIONS.items():
        plan, compute = KERNELS[operation.family.name]
        catalogue[name] = OpSpec(operation, plan(operation.rank), compute(operation.rank))
    return catalogue


CATALOGUE: dict[str, OpSpec] = _build()
