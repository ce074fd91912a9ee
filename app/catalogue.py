"""The catalogue: every pooling operation, declared once.

Families × ranks build `CATALOGUE`, from which the routes, their OpenAPI
schemas and examples, `GET /pool` and the tests are generated. Adding an op
is one entry here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from app import kernels
from app.codecs import DTYPES, FLOAT_DTYPES
from app.params import PoolParams, build_params_model

PlanFn = Callable[[Any, tuple[int, ...]], kernels.Plan]
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


def _ramp(*shape: int) -> list[Any]:
    """A nested list counting 0, 1, 2, … in the given shape (for examples)."""
    flat = [float(i) for i in range(math.prod(shape))]
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]  # type: ignore[misc]
    return flat


GRID = [[[[1.0, 1.0, 2.0, 4.0], [5.0, 6.0, 7.0, 8.0], [3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]]]]


def _max_examples(rank: int) -> dict[str, dict[str, Any]]:
    if rank == 1:
        return {
            "torch-maxpool1d": {
                "summary": "nn.MaxPool1d(3, stride=2) on a (1, 2, 8) ramp, with indices",
                "value": {"input": _ramp(1, 2, 8), "kernel_size": 3, "stride": 2, "return_indices": True},
            }
        }
    if rank == 2:
        return {
            "grid": {
                "summary": "2×2 windows over a 4×4 map, with indices",
                "value": {"input": GRID, "kernel_size": 2, "return_indices": True},
            },
            "torch-maxpool2d": {
                "summary": "nn.MaxPool2d((3, 2), stride=(2, 1)) on a (1, 1, 6, 5) ramp",
                "value": {"input": _ramp(1, 1, 6, 5), "kernel_size": [3, 2], "stride": [2, 1]},
            },
            "flat": {
                "summary": "a flat tensor, answered flat",
                "value": {
                    "input": {"data": [1, 1, 2, 4, 5, 6, 7, 8, 3, 2, 1, 0, 1, 2, 3, 4], "shape": [1, 4, 4]},
                    "kernel_size": 2,
                },
            },
        }
    return {"cube": {"summary": "2×2×2 windows", "value": {"input": _ramp(1, 1, 2, 4, 4), "kernel_size": 2}}}


def _avg_examples(rank: int) -> dict[str, dict[str, Any]]:
    if rank == 1:
        return {
            "torch-avgpool1d": {
                "summary": "nn.AvgPool1d(3, stride=2) on [[[1, 2, 3, 4, 5, 6, 7]]]",
                "value": {"input": [[[1, 2, 3, 4, 5, 6, 7]]], "kernel_size": 3, "stride": 2},
            }
        }
    spatial = (4,) * rank
    return {
        "padded": {
            "summary": "3-wide windows with padding 1, padding counted",
            "value": {"input": _ramp(1, 1, *spatial), "kernel_size": 3, "stride": 1, "padding": 1},
        }
    }


def _lp_examples(rank: int) -> dict[str, dict[str, Any]]:
    spatial = (4,) * rank
    return {
        "l2": {
            "summary": "L2 norm of each window",
            "value": {"input": _ramp(1, 1, *spatial), "norm_type": 2, "kernel_size": 2},
        }
    }


def _adaptive_max_examples(rank: int) -> dict[str, dict[str, Any]]:
    if rank == 1:
        return {
            "torch-adaptivemaxpool1d": {
                "summary": "nn.AdaptiveMaxPool1d(5) on a (1, 2, 8) ramp",
                "value": {"input": _ramp(1, 2, 8), "output_size": 5, "return_indices": True},
            }
        }
    if rank == 2:
        return {
            "torch-adaptivemaxpool2d": {
                "summary": "nn.AdaptiveMaxPool2d((None, 7)) on a (1, 1, 8, 9) ramp: the height is kept",
                "value": {"input": _ramp(1, 1, 8, 9), "output_size": [None, 7]},
            },
            "square": {"summary": "to 2×2", "value": {"input": GRID, "output_size": 2, "return_indices": True}},
        }
    return {"cube": {"summary": "to 1×2×2", "value": {"input": _ramp(1, 1, 2, 4, 4), "output_size": [1, 2, 2]}}}


def _adaptive_avg_examples(rank: int) -> dict[str, dict[str, Any]]:
    spatial = (5,) * rank
    return {
        "to-2": {"summary": "to size 2 in each dimension", "value": {"input": _ramp(1, 1, *spatial), "output_size": 2}}
    }


def _global_examples(rank: int) -> dict[str, dict[str, Any]]:
    spatial = (3,) * rank
    return {"head": {"summary": "each channel to one value", "value": {"input": _ramp(1, 2, *spatial)}}}


def _fractional_examples(rank: int) -> dict[str, dict[str, Any]]:
    spatial = (5,) * rank
    return {
        "seeded": {
            "summary": "to size 3, reproducible through random_seed",
            "value": {
                "input": _ramp(1, 1, *spatial),
                "kernel_size": 2,
                "output_size": 3,
                "random_seed": 7,
                "return_indices": True,
            },
        },
        "ratio": {
            "summary": "half the size",
            "value": {"input": _ramp(1, 1, *(8,) * rank), "kernel_size": 2, "output_ratio": 0.5, "random_seed": 7},
        },
    }


def _unpool_examples(rank: int) -> dict[str, dict[str, Any]]:
    if rank == 2:
        return {
            "grid": {
                "summary": "undo max2d on the 4×4 grid (its output and indices)",
                "value": {"input": [[[[6.0, 8.0], [3.0, 4.0]]]], "indices": [[[[5, 7], [8, 15]]]], "kernel_size": 2},
            }
        }
    if rank == 1:
        return {
            "pairs": {
                "summary": "undo 2-wide max pooling",
                "value": {"input": [[[5.0, 7.0]]], "indices": [[[1, 2]]], "kernel_size": 2},
            }
        }
    return {
        "cube": {
            "summary": "undo 2×2×2 max pooling",
            "value": {"input": [[[[[9.0]]]]], "indices": [[[[[7]]]]], "kernel_size": 2},
        }
    }


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
        examples=_max_examples,
    ),
    Family(
        "avg",
        (1, 2, 3),
        "avg_pool{}d",
        "Average pooling",
        (*SLIDING, "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override"),
        _same(kernels.sliding_plan),
        _same(kernels.avg_compute),
        examples=_avg_examples,
    ),
    Family(
        "lp",
        (1, 2, 3),
        "lp_pool{}d",
        "Power-average (Lp) pooling",
        ("norm_type", *SLIDING, "padding", "dilation", "ceil_mode", "absolute"),
        _same(kernels.sliding_plan),
        _same(kernels.lp_compute),
        examples=_lp_examples,
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
        examples=_adaptive_max_examples,
    ),
    Family(
        "adaptive-avg",
        (1, 2, 3),
        "adaptive_avg_pool{}d",
        "Adaptive average pooling to a fixed output size",
        ("adaptive_output_size",),
        _same(kernels.adaptive_plan),
        _same(kernels.adaptive_avg_compute),
        examples=_adaptive_avg_examples,
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
        examples=_global_examples,
    ),
    Family(
        "global-avg",
        (1, 2, 3),
        "adaptive_avg_pool{}d",
        "Global average pooling: each channel to one value",
        ("keepdims",),
        kernels.global_plan,
        kernels.global_avg_compute,
        examples=_global_examples,
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
        examples=_fractional_examples,
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
        examples=_unpool_examples,
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
