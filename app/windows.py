"""Sliding windows computed in torch, for every padding form `app.planning` resolves:

- max: torch's own max pooling over the explicitly padded tensor (the pad is
  the dtype's lowest value, so a padded cell never wins), then indices mapped
  back to the unpadded input;
- sums (average, Lp): a strided view of the windows, summed;
- divisors: per dimension, how many cells of each window fall in the input
  (or in the input plus its padding), multiplied across dimensions, since a
  window is a product of one range per dimension.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from app.planning import WindowPlan, window_count


def cells_between(starts: torch.Tensor, kernel: int, dilation: int, low: int, high: int) -> torch.Tensor:
    """For windows starting at `starts`, how many of their cells start + j * dilation
    (0 <= j < kernel) lie in [low, high): arithmetic, not a walk over the cells."""
    first = (low - starts + dilation - 1).div(dilation, rounding_mode="floor").clamp(min=0)
    last = (high - 1 - starts).div(dilation, rounding_mode="floor").clamp(max=kernel - 1)
    return (last - first + 1).clamp(min=0)


def lowest(dtype: torch.dtype) -> float | int:
    return -math.inf if dtype.is_floating_point else torch.iinfo(dtype).min


def pad_for_windows(x: torch.Tensor, plan: WindowPlan, value: float | int) -> torch.Tensor:
    """`x` with the begin padding, and exactly as long as the windows reach: end padding
    plus any ceil_mode overhang (filled the same way; it never counts), or cropped where
    no window reaches, so that torch's unpadded pooling finds exactly the planned windows."""
    widths: list[int] = []
    for dim in reversed(range(len(plan.kernel))):  # F.pad lists the last dimension first
        begin = plan.pads[dim][0]
        reach = (plan.out[dim] - 1) * plan.stride[dim] + plan.dilation[dim] * (plan.kernel[dim] - 1) + 1
        widths += [begin, reach - begin - plan.spatial[dim]]
    if not any(widths):
        return x
    return F.pad(x, widths, value=value)


def torch_window_slices(plan: WindowPlan) -> tuple[list[int], tuple[Any, ...]] | None:
    """Symmetric padding and output slices that make torch's own pooling (with its
    implicit padding, under ceil_mode) produce exactly the planned windows, if any do.

    With padding P = max(begin, end) on both sides, torch's windows start at
    j * stride - P; the planned ones start at i * stride - begin, so they are
    torch's windows from j = (P - begin) / stride on, when that is whole."""
    padding: list[int] = []
    slices: list[slice] = []
    for dim, ((begin, end), kernel, stride) in enumerate(zip(plan.pads, plan.kernel, plan.stride, strict=True)):
        both = max(begin, end)
        if both > kernel // 2 or (both - begin) % stride:
            return None
        first = (both - begin) // stride
        available = window_count(plan.spatial[dim], kernel, stride, (both, both), plan.dilation[dim], True)
        if first + plan.out[dim] > available:
            return None
        padding.append(both)
        slices.append(slice(first, first + plan.out[dim]))
    return padding, (Ellipsis, *slices)


def sum_windows(x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
    """The sum of every window, padded cells counting as zero."""
    rank = len(plan.kernel)
    if plan.undilated:
        # torch's average pooling with a divisor of 1 sums; its padding is zeros.
        pool = F.avg_pool2d if rank == 1 else getattr(F, f"avg_pool{rank}d")
        native = torch_window_slices(plan) if plan.input_holds_window or rank < 3 else None
        if native is not None:
            padding, window = native
            source, kernel, stride = x, list(plan.kernel), list(plan.stride)
        else:
            padding, window = [0] * rank, (...,)
            source, kernel, stride = pad_for_windows(x, plan, 0), list(plan.kernel), list(plan.stride)
        if rank == 1:  # avg_pool1d has no divisor_override: a 2-D pool of height 1 is the same
            sums = pool(source.unsqueeze(-2), [1, *kernel], [1, *stride], [0, *padding], True, True, 1).squeeze(-2)
        else:
            sums = pool(source, kernel, stride, padding, True, True, 1)
        return sums[window]
    # Dilated: a window is a product of one range per dimension, so its sum is
    # separable; along each dimension, add the kernel's strided slices.
    sums = pad_for_windows(x, plan, 0)
    for dim in range(rank):
        axis = 2 + dim
        step, gap, count = plan.stride[dim], plan.dilation[dim], plan.out[dim]
        total = None
        for j in range(plan.kernel[dim]):
            part = sums.narrow(axis, j * gap, (count - 1) * step + 1)
            part = part[(slice(None),) * axis + (slice(None, None, step),)]
            total = part.clone() if total is None else total.add_(part)
        assert total is not None
        sums = total
    return sums


def cell_counts(plan: WindowPlan, include_pad: bool, like: torch.Tensor) -> torch.Tensor:
    """How many cells of each window lie in the input (or, with `include_pad`, in the
    input and its padding, never in the ceil_mode overhang); shaped to broadcast."""
    counts = torch.ones((), dtype=torch.float64)
    for dim in range(len(plan.kernel)):
        begin, end = plan.pads[dim]
        low, high = (0, plan.spatial[dim] + begin + end) if include_pad else (begin, begin + plan.spatial[dim])
        starts = torch.arange(plan.out[dim], dtype=torch.int64) * plan.stride[dim]
        per_dim = cells_between(starts, plan.kernel[dim], plan.dilation[dim], low, high).to(torch.float64)
        counts = counts.unsqueeze(-1) * per_dim
    return counts.to(device=like.device, dtype=like.dtype)


def max_windows(x: torch.Tensor, plan: WindowPlan, want_indices: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Max of every window, and its argmax as a flat index in the unpadded input plane."""
    rank = len(plan.kernel)
    pool = getattr(F, f"max_pool{rank}d")
    # torch's integer max_pool1d exists only in its with-indices form.
    with_indices = want_indices or (rank == 1 and not x.is_floating_point())
    native = torch_window_slices(plan)
    if native is not None:
        # torch's own padding never wins and its indices are already the input's.
        padding, window = native
        result = pool(x, plan.kernel, plan.stride, padding, plan.dilation, True, with_indices)
        if not with_indices:
            return result[window], None
        out, flat = result
        return out[window], flat[window] if want_indices else None
    padded = pad_for_windows(x, plan, lowest(x.dtype))
    result = pool(padded, plan.kernel, plan.stride, 0, plan.dilation, False, with_indices)
    if not with_indices:
        return result, None
    out, flat = result
    if not want_indices:
        return out, None
    return out, _unpad_indices(flat, tuple(padded.shape[2:]), plan)


def _unpad_indices(flat: torch.Tensor, padded_spatial: tuple[int, ...], plan: WindowPlan) -> torch.Tensor:
    """Flat indices in the padded plane -> flat indices in the input plane.

    A padded cell wins only where every input cell of its window holds the
    lowest value too; it is then moved, per dimension, to the window's first
    cell inside the input, as torch's own padded max pooling reports it."""
    rank = len(plan.kernel)
    coords = []
    rest = flat
    for dim in reversed(range(rank)):
        coords.append(rest.remainder(padded_spatial[dim]))
        rest = rest.div(padded_spatial[dim], rounding_mode="floor")
    coords.reverse()
    result = torch.zeros_like(flat)
    for dim in range(rank):
        coord = coords[dim] - plan.pads[dim][0]
        dilation = plan.dilation[dim]
        steps = (-coord + dilation - 1).div(dilation, rounding_mode="floor")
        coord = torch.where(coord < 0, coord + steps * dilation, coord)
        result = result * plan.spatial[dim] + coord
    return result
