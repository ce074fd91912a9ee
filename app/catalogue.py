"""The catalogue: every pooling operation, declared once.

Families × ranks build `CATALOGUE`, from which the routes, their OpenAPI
schemas and examples, `GET /pool` and the tests are generated. Adding an op
is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app import examples, kernels
from app.codecs import DTYPES, FLOAT_DTYPES
from app.params import PoolParams, build_params_model

PlanFn = Callable[[Any, tuple[int, ...], int], kernels.Plan]
ComputeFn = Callable[[torch.Tensor, Any, kernels.Plan, dict[str, torch.Tensor]], kernels.Result]

SLIDING = ("kernel_size", "stride")


@dataclass(frozen=True)
class Family:
    name: str
    ranks: tuple[int, ...]
    reference: str  # torch function, `{}` for the rank
    summary: str
    fields: tuple[str, ...]
    plan: Callable[[int], PlanFn]
    compute: Callable[[int], ComputeFn]
    dtypes: tuple[str, ...] = FLOAT_DTYPES
    has_indices: bool = False  # argmax indices on request
    extra_tensors: tuple[str, ...] = ()  # tensors besides `input`
    examples: Callable[[int], dict[str, dict[str, Any]]] = field(default=lambda rank: {})


@dataclass(frozen=True)
class OpSpec:
    name: str
    family: Family
    rank: int
    params: type[PoolParams]
    plan: PlanFn
    compute: ComputeFn

    @property
    def reference(self) -> str:
        return "torch.nn.functional." + self.family.reference.format(self.rank)


def _same(fn: Any) -> Callable[[int], Any]:
    return lambda rank: fn


FAMILIES: tuple[Family, ...] = (
    Family(
        "max",
        (1, 2, 3),
        "max_pool{}d",
        "Max pooling",
        (*SLIDING, "padding", "dilation", "ceil_mode", "return_indices", "indices_layout"),
        _same(kernels.sliding_plan),
        _same(kernels.max_compute),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.max_examples,
    ),
    Family(
        "avg",
        (1, 2, 3),
        "avg_pool{}d",
        "Average pooling",
        (*SLIDING, "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override"),
        _same(kernels.averaging_plan),
        _same(kernels.avg_compute),
        examples=examples.avg_examples,
    ),
    Family(
        "lp",
        (1, 2, 3),
        "lp_pool{}d",
        "Power-average (Lp) pooling",
        ("norm_type", *SLIDING, "padding", "dilation", "ceil_mode", "absolute"),
        _same(kernels.averaging_plan),
        _same(kernels.lp_compute),
        examples=examples.lp_examples,
    ),
    Family(
        "adaptive-max",
        (1, 2, 3),
        "adaptive_max_pool{}d",
        "Adaptive max pooling to a fixed output size",
        ("adaptive_output_size", "return_indices", "indices_layout"),
        _same(kernels.adaptive_plan),
        _same(kernels.adaptive_max_compute),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.adaptive_max_examples,
    ),
    Family(
        "adaptive-avg",
        (1, 2, 3),
        "adaptive_avg_pool{}d",
        "Adaptive average pooling to a fixed output size",
        ("adaptive_output_size",),
        _same(kernels.adaptive_plan),
        _same(kernels.adaptive_avg_compute),
        examples=examples.adaptive_avg_examples,
    ),
    Family(
        "global-max",
        (1, 2, 3),
        "adaptive_max_pool{}d",
        "Global max pooling: each channel to one value",
        ("return_indices", "indices_layout", "keepdims"),
        kernels.global_plan,
        kernels.global_max_compute,
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.global_examples,
    ),
    Family(
        "global-avg",
        (1, 2, 3),
        "adaptive_avg_pool{}d",
        "Global average pooling: each channel to one value",
        ("keepdims",),
        kernels.global_plan,
        kernels.global_avg_compute,
        examples=examples.global_examples,
    ),
    Family(
        "fractional-max",
        (2, 3),
        "fractional_max_pool{}d",
        "Fractional max pooling with pseudo-random windows",
        ("kernel_size", "fractional_output_size", "output_ratio", "return_indices", "indices_layout", "random_seed"),
        _same(kernels.fractional_plan),
        _same(kernels.fractional_compute),
        has_indices=True,
        examples=examples.fractional_examples,
    ),
    Family(
        "max-unpool",
        (1, 2, 3),
        "max_unpool{}d",
        "Max unpooling: the inverse of max pooling, zeros elsewhere",
        ("indices", *SLIDING, "unpool_padding", "unpool_output_size", "indices_layout"),
        _same(kernels.unpool_plan),
        _same(kernels.unpool_compute),
        dtypes=DTYPES,
        extra_tensors=("indices",),
        examples=examples.unpool_examples,
    ),
)


def _build() -> dict[str, OpSpec]:
    catalogue = {}
    for family in FAMILIES:
        for rank in family.ranks:
            name = f"{family.name}{rank}d"
            catalogue[name] = OpSpec(
                name,
                family,
                rank,
                build_params_model(name, rank, family.fields),
                family.plan(rank),
                family.compute(rank),
            )
    return catalogue


CATALOGUE: dict[str, OpSpec] = _build()
