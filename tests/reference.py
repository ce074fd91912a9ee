"""Sample cases for every catalogue operation and what torch computes for them.

The references call `torch.nn.functional` directly, independently of the
service's kernels, so a test compares the service with torch itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.operations import Operation


@dataclass(frozen=True)
class Case:
    params: dict[str, Any]
    spatial: tuple[int, ...]
    batch: int | None = 2  # None: unbatched (C, *spatial)
    channels: int = 3

    def shape(self) -> tuple[int, ...]:
        lead = (self.channels,) if self.batch is None else (self.batch, self.channels)
        return (*lead, *self.spatial)


def cases(spec: Operation) -> list[Case]:
    r = spec.rank
    sp = {1: (9,), 2: (7, 6), 3: (5, 6, 4)}[r]
    family = spec.family.name
    if family == "max":
        return [
            Case({"kernel_size": 2, "return_indices": True}, sp),
            Case(
                {"kernel_size": 3, "stride": 2, "padding": 1, "dilation": 1, "ceil_mode": True, "return_indices": True},
                sp,
                batch=None,
            ),
            Case({"kernel_size": [2] * r, "stride": 1, "dilation": 2}, sp),
        ]
    if family == "avg":
        return [
            Case({"kernel_size": 2}, sp),
            Case(
                {"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "count_include_pad": False},
                sp,
                batch=None,
            ),
            Case({"kernel_size": 3, "stride": 2, "padding": 1, "ceil_mode": True, "divisor_override": 5}, sp),
        ]
    if family == "lp":
        return [
            Case({"norm_type": 2, "kernel_size": 2}, sp),
            Case({"norm_type": 1.5, "kernel_size": 3, "stride": 2, "ceil_mode": True}, sp, batch=None),
            Case({"norm_type": "Infinity", "kernel_size": 2, "stride": 1}, sp),
        ]
    if family == "adaptive-max":
        return [
            Case({"output_size": 3, "return_indices": True}, sp),
            Case({"output_size": [None] * (r - 1) + [4]}, sp, batch=None),
        ]
    if family == "adaptive-avg":
        return [Case({"output_size": 3}, sp), Case({"output_size": [None] * (r - 1) + [4]}, sp, batch=None)]
    if family == "global-max":
        return [Case({"return_indices": True}, sp), Case({}, sp, batch=None)]
    if family == "global-avg":
        return [Case({}, sp), Case({}, sp, batch=None)]
    if family == "fractional-max":
        return [
            Case({"kernel_size": 2, "output_size": 2, "random_seed": 11, "return_indices": True}, sp),
            Case({"kernel_size": 2, "output_ratio": 0.5, "random_seed": 5}, sp, batch=None),
        ]
    if family == "max-unpool":
        return [
            Case({"kernel_size": 2}, sp),
            # The source of the indices had twice the size: say so, as torch needs.
            Case({"kernel_size": 3, "stride": 2, "padding": 1, "output_size": [2 * s for s in sp]}, sp, batch=None),
        ]
    raise AssertionError(f"no cases for {family}")


def _spatial_list(value: Any, rank: int) -> list[Any]:
    return list(value) if isinstance(value, list) else [value] * rank


def fractional_samples(seed: int, batch: int, channels: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, rank, generator=generator, dtype=torch.float64).to(dtype)


def reference(spec: Operation, x: torch.Tensor, params: dict[str, Any], indices: torch.Tensor | None = None):
    """(output, indices or None) as torch computes them for the op's parameters."""
    r = spec.rank
    p = dict(params)
    want = p.pop("return_indices", False)
    fam = spec.family.name
    if fam == "max":
        out, idx = getattr(F, f"max_pool{r}d")(x, return_indices=True, **p)
        return out, idx if want else None
    if fam == "avg":
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
    if fam == "lp":
        norm = p.pop("norm_type")
        norm = float("inf") if norm == "Infinity" else norm
        return getattr(F, f"lp_pool{r}d")(x, norm, **p), None
    if fam in ("adaptive-max", "adaptive-avg"):
        size = [s if s is not None else x.shape[-r + d] for d, s in enumerate(_spatial_list(p["output_size"], r))]
        if fam == "adaptive-max" and not x.is_floating_point():
            out, idx = adaptive_max_numpy(x.numpy(), size)
            return torch.from_numpy(out), torch.from_numpy(idx) if want else None
        if fam == "adaptive-max":
            out, idx = getattr(F, f"adaptive_max_pool{r}d")(x, size, return_indices=True)
            return out, idx if want else None
        return getattr(F, f"adaptive_avg_pool{r}d")(x, size), None
    if fam == "global-max":
        if not x.is_floating_point():
            flat = x.flatten(-r)
            values, positions = flat.max(dim=-1)
            shape = (*x.shape[:-r], *([1] * r))
            return values.reshape(shape), positions.reshape(shape) if want else None
        out, idx = getattr(F, f"adaptive_max_pool{r}d")(x, 1, return_indices=True)
        return out, idx if want else None
    if fam == "global-avg":
        return getattr(F, f"adaptive_avg_pool{r}d")(x, 1), None
    if fam == "fractional-max":
        batched = x if x.dim() == r + 2 else x.unsqueeze(0)
        if "output_ratio" in p:  # torch's fractional pooling fails on a bare float ratio
            p["output_ratio"] = _spatial_list(p["output_ratio"], r)
        samples = fractional_samples(p.pop("random_seed"), batched.shape[0], batched.shape[1], r, x.dtype)
        out, idx = getattr(F, f"fractional_max_pool{r}d")(batched, return_indices=True, _random_samples=samples, **p)
        if x.dim() == r + 1:
            out, idx = out.squeeze(0), idx.squeeze(0)
        return out, idx if want else None
    if fam == "max-unpool":
        out = getattr(F, f"max_unpool{r}d")(x.double(), indices, **p)
        if x.is_floating_point():
            return getattr(F, f"max_unpool{r}d")(x, indices, **p), None
        # torch's max_unpool takes floats only: place integers with numpy, at
        # the positions torch's float64 result has (unique indices here).
        lead = x.shape[:-r]
        values = x.numpy().reshape(*lead, -1)
        placed = np.zeros((*lead, int(np.prod(out.shape[-r:]))), dtype=values.dtype)
        np.put_along_axis(placed, indices.numpy().reshape(*lead, -1), values, axis=-1)
        return torch.from_numpy(placed.reshape(out.shape)), None
    raise AssertionError(fam)


def adaptive_max_numpy(x: np.ndarray, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Adaptive max pooling element by element (torch has no integer kernel):
    window i of n over L cells is [floor(i*L/n), ceil((i+1)*L/n)); the first maximum wins."""
    rank = len(sizes)
    spatial = x.shape[-rank:]
    lead = x.shape[:-rank]
    out = np.empty((*lead, *sizes), dtype=x.dtype)
    idx = np.empty((*lead, *sizes), dtype=np.int64)
    for position in np.ndindex(*sizes):
        bounds = [
            (position[d] * spatial[d] // sizes[d], -(-(position[d] + 1) * spatial[d] // sizes[d])) for d in range(rank)
        ]
        window = x[(..., *(slice(lo, hi) for lo, hi in bounds))].reshape(*lead, -1)
        best = window.argmax(axis=-1)
        out[(..., *position)] = np.take_along_axis(window, best[..., None], axis=-1)[..., 0]
        local = np.unravel_index(best, [hi - lo for lo, hi in bounds])
        coords = [c + lo for c, (lo, _) in zip(local, bounds, strict=True)]
        idx[(..., *position)] = np.ravel_multi_index(coords, spatial)
    return out, idx


def unpool_inputs(spec: Operation, case: Case, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and indices for max-unpool, made by torch's own max pooling of a random map."""
    p = case.params
    big_spatial = tuple(2 * s for s in case.spatial)
    lead = case.shape()[: len(case.shape()) - spec.rank]
    source = torch.randn(*lead, *big_spatial, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out, idx = getattr(F, f"max_pool{spec.rank}d")(
        source, p["kernel_size"], p.get("stride"), p.get("padding", 0), return_indices=True
    )
    return out.to(dtype), idx


def sample(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    """Random values with ties and negatives, exactly representable in `dtype`."""
    rng = np.random.default_rng(seed)
    if dtype in ("uint8",):
        return rng.integers(0, 255, size=shape).astype(np.uint8)
    if dtype.startswith("int"):
        info = np.iinfo(np.dtype(dtype))
        low, high = max(info.min, -(2**62)), min(info.max, 2**62)
        return rng.integers(low, high, size=shape, dtype=np.int64).astype(dtype)
    # Quarter steps in [-8, 8] are exact in every float dtype, bfloat16 included.
    return (rng.integers(-32, 33, size=shape) / 4).astype(np.float32 if dtype == "bfloat16" else dtype)


# ---------------------------------------------------------------- windows, element by element


def every_window_meets_input(spatial, kernel, stride, dilation, pads, ceil_mode) -> bool:
    """Element by element: is there at least one window, and does each hold an input cell?"""
    for size, k, s, d, (begin, end) in zip(spatial, kernel, stride, dilation, pads, strict=True):
        count = window_count(size, k, s, d, (begin, end), ceil_mode)
        if count < 1:
            return False
        for i in range(count):
            if not any(0 <= i * s - begin + j * d < size for j in range(k)):
                return False
    return True


def cells_in_padded_input(spatial, kernel, stride, dilation, pads, ceil_mode) -> np.ndarray:
    """How many cells of each window lie in the input or its padding, element by element."""
    counts = np.ones(())
    for size, k, s, d, (begin, end) in zip(spatial, kernel, stride, dilation, pads, strict=True):
        count = window_count(size, k, s, d, (begin, end), ceil_mode)
        per_dim = [sum(i * s + j * d < begin + size + end for j in range(k)) for i in range(count)]
        counts = np.multiply.outer(counts, np.array(per_dim, dtype=np.float64))
    return counts


def window_count(size, kernel, stride, dilation, pads, ceil_mode):
    reach = size + sum(pads) - dilation * (kernel - 1) - 1
    count = (math.ceil(reach / stride) if ceil_mode else math.floor(reach / stride)) + 1
    if ceil_mode and (count - 1) * stride >= size + pads[0]:
        count -= 1
    return count
