"""The test side of each family's record, as torch's OpInfo keeps it beside the op:
sample cases for every rank, the reference it is compared with (torch itself,
called directly, or numpy where torch has no kernel), and error cases.

`FAMILY_TESTS` holds one `FamilyTests` per family of `app.operations.FAMILIES`;
`tests/test_families.py` fails if a family lacks one, or a rank lacks a case.
The generated tests (`tests/test_ops.py`, `tests/test_families.py`, ...) read
cases and references through `cases` and `reference` below.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.operations import Operation
from tests.reference import Case, adaptive_max_numpy, fractional_samples

Reference = Callable[[int, torch.Tensor, dict[str, Any], torch.Tensor | None], tuple[Any, Any]]
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 6, 4)}


@dataclass(frozen=True)
class ErrorCase:
    """Parameters that pool the family's first sample input in no way: a 422 at `loc`,
    the parameter's own path (the door adds where it came from)."""

    params: dict[str, Any]
    loc: tuple[str | int, ...]


@dataclass(frozen=True)
class FamilyTests:
    cases: Callable[[int], list[Case]]
    reference: Reference  # (rank, x, params, indices) -> (output, indices or None)
    errors: Callable[[int], list[ErrorCase]]
    exact: bool = False  # results equal torch's bit for bit (max-type), else within float tolerance


def _spatial_list(value: Any, rank: int) -> list[Any]:
    return list(value) if isinstance(value, list) else [value] * rank


def _with_indices(out_idx: tuple[torch.Tensor, torch.Tensor], want: bool) -> tuple[torch.Tensor, Any]:
    out, idx = out_idx
    return out, idx if want else None


# ---------------------------------------------------------------- max


def max_cases(r: int) -> list[Case]:
    sp = SPATIAL[r]
    return [
        Case({"kernel_size": 2, "return_indices": True}, sp),
        Case(
            {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1, "ceil_mode": True, "return_indices": True},
            sp,
            batch=None,
        ),
        Case({"kernel_size": [2] * r, "stride": 1, "dilation": 2}, sp),
    ]


def max_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    p = dict(params)
    want = p.pop("return_indices", False)
    return _with_indices(getattr(F, f"max_pool{r}d")(x, return_indices=True, **p), want)


def window_errors(r: int) -> list[ErrorCase]:
    return [
        ErrorCase({"kernel_size": 0}, ("kernel_size", 0)),
        ErrorCase({"kernel_size": 3, "padding": 2}, ("padding",)),
        ErrorCase({"kernel_size": 20}, ("kernel_size",)),
        ErrorCase({"kernel_size": 2, "padding": [[3, 0]] * r}, ("padding",)),
    ]


# ---------------------------------------------------------------- avg


def avg_cases(r: int) -> list[Case]:
    sp = SPATIAL[r]
    return [
        Case({"kernel_size": 2}, sp),
        Case(
            {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
            sp,
            batch=None,
        ),
        Case({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "divisor_override": 5}, sp),
    ]


def avg_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    p = dict(params)
    if r == 1:
        # torch's avg_pool1d has no divisor_override; its 2-D form with height 1 is the same kernel.
        k, s = p["kernel_size"], p.get("stride") or p["kernel_size"]
        out = F.avg_pool2d(
            x.unsqueeze(-2),
            (1, k),
            (1, s),
            (0, p.get("padding", 0)),
            p.get("ceil_mode", False),
            p.get("count_include_pad", True),
            p.get("divisor_override"),
        )
        return out.squeeze(-2), None
    return getattr(F, f"avg_pool{r}d")(x, **p), None


def avg_errors(r: int) -> list[ErrorCase]:
    return [
        *window_errors(r),
        ErrorCase({"kernel_size": 2, "return_indices": True}, ("return_indices",)),
        ErrorCase({"kernel_size": 2, "divisor_override": 0}, ("divisor_override",)),
    ]


# ---------------------------------------------------------------- lp


def lp_cases(r: int) -> list[Case]:
    sp = SPATIAL[r]
    return [
        Case({"norm_type": 2, "kernel_size": 2}, sp),
        Case({"norm_type": 1.5, "kernel_size": 3, "stride": 2, "ceil_mode": True}, sp, batch=None),
        Case({"norm_type": "Infinity", "kernel_size": 2, "stride": 1}, sp),
    ]


def lp_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    p = dict(params)
    norm = p.pop("norm_type")
    norm = float("inf") if norm == "Infinity" else norm
    return getattr(F, f"lp_pool{r}d")(x, norm, **p), None


def lp_errors(r: int) -> list[ErrorCase]:
    return [
        ErrorCase({"kernel_size": 2}, ("norm_type",)),
        ErrorCase({"kernel_size": 2, "norm_type": 0}, ("norm_type",)),
        ErrorCase({"kernel_size": 20, "norm_type": 2}, ("kernel_size",)),
        ErrorCase({"kernel_size": 2, "norm_type": 2, "padding": [[3, 0]] * r}, ("padding",)),
    ]


# ---------------------------------------------------------------- adaptive and global


def adaptive_cases(r: int) -> list[Case]:
    sp = SPATIAL[r]
    return [Case({"output_size": 3}, sp), Case({"output_size": [None] * (r - 1) + [4]}, sp, batch=None)]


def adaptive_max_cases(r: int) -> list[Case]:
    first, *rest = adaptive_cases(r)
    return [Case({**first.params, "return_indices": True}, first.spatial), *rest]


def _adaptive_sizes(r: int, x: torch.Tensor, output_size: Any) -> list[int]:
    return [s if s is not None else x.shape[-r + d] for d, s in enumerate(_spatial_list(output_size, r))]


def adaptive_max_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    want = params.get("return_indices", False)
    size = _adaptive_sizes(r, x, params["output_size"])
    if not x.is_floating_point():
        out, idx = adaptive_max_numpy(x.numpy(), size)
        return torch.from_numpy(out), torch.from_numpy(idx) if want else None
    return _with_indices(getattr(F, f"adaptive_max_pool{r}d")(x, size, return_indices=True), want)


def adaptive_avg_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    return getattr(F, f"adaptive_avg_pool{r}d")(x, _adaptive_sizes(r, x, params["output_size"])), None


def adaptive_errors(r: int) -> list[ErrorCase]:
    return [ErrorCase({"output_size": [0] * r}, ("output_size", 0)), ErrorCase({}, ("output_size",))]


def global_max_cases(r: int) -> list[Case]:
    return [Case({"return_indices": True}, SPATIAL[r]), Case({}, SPATIAL[r], batch=None)]


def global_avg_cases(r: int) -> list[Case]:
    return [Case({}, SPATIAL[r]), Case({"keepdims": True}, SPATIAL[r], batch=None)]


def global_max_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    want = params.get("return_indices", False)
    if not x.is_floating_point():
        values, positions = x.flatten(-r).max(dim=-1)
        shape = (*x.shape[:-r], *([1] * r))
        return values.reshape(shape), positions.reshape(shape) if want else None
    return _with_indices(getattr(F, f"adaptive_max_pool{r}d")(x, 1, return_indices=True), want)


def global_avg_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    return getattr(F, f"adaptive_avg_pool{r}d")(x, 1), None


def global_errors(r: int) -> list[ErrorCase]:
    return [ErrorCase({"keepdims": "maybe"}, ("keepdims",)), ErrorCase({"kernel_size": 2}, ("kernel_size",))]


# ---------------------------------------------------------------- fractional


def fractional_cases(r: int) -> list[Case]:
    sp = SPATIAL[r]
    return [
        Case({"kernel_size": 2, "output_size": 2, "random_seed": 11, "return_indices": True}, sp),
        Case({"kernel_size": 2, "output_ratio": 0.5, "random_seed": 5}, sp, batch=None),
    ]


def fractional_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    p = dict(params)
    want = p.pop("return_indices", False)
    batched = x if x.dim() == r + 2 else x.unsqueeze(0)
    if "output_ratio" in p:  # torch's fractional pooling fails on a bare float ratio
        p["output_ratio"] = _spatial_list(p["output_ratio"], r)
    samples = fractional_samples(p.pop("random_seed"), batched.shape[0], batched.shape[1], r, x.dtype)
    out, idx = getattr(F, f"fractional_max_pool{r}d")(batched, return_indices=True, _random_samples=samples, **p)
    if x.dim() == r + 1:
        out, idx = out.squeeze(0), idx.squeeze(0)
    return out, idx if want else None


def fractional_errors(r: int) -> list[ErrorCase]:
    return [
        ErrorCase({"kernel_size": 2}, ("output_size",)),
        ErrorCase({"kernel_size": 2, "output_size": 100}, ("output_size",)),
        ErrorCase({"kernel_size": 2, "output_ratio": 1.5}, ("output_ratio", 0)),
    ]


# ---------------------------------------------------------------- unpooling


def unpool_cases(r: int) -> list[Case]:
    sp = SPATIAL[r]
    return [
        Case({"kernel_size": 2}, sp),
        # The source of the indices had twice the size: say so, as torch needs.
        Case({"kernel_size": 3, "stride": 2, "padding": 1, "output_size": [2 * s for s in sp]}, sp, batch=None),
    ]


def unpool_reference(r: int, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None) -> Any:
    assert indices is not None
    unpool = getattr(F, f"max_unpool{r}d")
    if x.is_floating_point():
        return unpool(x, indices, **params), None
    # torch's max_unpool takes floats only: place integers with numpy, at the
    # positions torch's float64 result has (unique indices here).
    shape = unpool(x.double(), indices, **params).shape
    lead = x.shape[:-r]
    values = x.numpy().reshape(*lead, -1)
    placed = np.zeros((*lead, int(np.prod(shape[-r:]))), dtype=values.dtype)
    np.put_along_axis(placed, indices.numpy().reshape(*lead, -1), values, axis=-1)
    return torch.from_numpy(placed.reshape(shape)), None


def unpool_errors(r: int) -> list[ErrorCase]:
    return [
        ErrorCase({"kernel_size": 2, "output_size": [99] * r}, ("output_size",)),
        ErrorCase({"kernel_size": 0}, ("kernel_size", 0)),
    ]


FAMILY_TESTS: dict[str, FamilyTests] = {
    "max": FamilyTests(max_cases, max_reference, window_errors, exact=True),
    "avg": FamilyTests(avg_cases, avg_reference, avg_errors),
    "lp": FamilyTests(lp_cases, lp_reference, lp_errors),
    "adaptive-max": FamilyTests(adaptive_max_cases, adaptive_max_reference, adaptive_errors, exact=True),
    "adaptive-avg": FamilyTests(adaptive_cases, adaptive_avg_reference, adaptive_errors),
    "global-max": FamilyTests(global_max_cases, global_max_reference, global_errors, exact=True),
    "global-avg": FamilyTests(global_avg_cases, global_avg_reference, global_errors),
    "fractional-max": FamilyTests(fractional_cases, fractional_reference, fractional_errors, exact=True),
    "max-unpool": FamilyTests(unpool_cases, unpool_reference, unpool_errors, exact=True),
}


def cases(operation: Operation) -> list[Case]:
    return FAMILY_TESTS[operation.family.name].cases(operation.rank)


def reference(operation: Operation, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None = None):
    """(output, indices or None) as the reference computes them for the op's parameters."""
    return FAMILY_TESTS[operation.family.name].reference(operation.rank, x, params, indices)


def errors(operation: Operation) -> list[ErrorCase]:
    return FAMILY_TESTS[operation.family.name].errors(operation.rank)
