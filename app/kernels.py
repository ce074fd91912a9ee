"""What each family computes, on `(N, C, *spatial)` torch tensors.

A family's compute function `compute(x, params, plan, extra)` returns the
result `(output, indices or None)`, indices as flat positions within each
spatial plane, for a plan made by `app.planning`. Where torch has the
operation, torch computes it; what torch lacks (padding forms, dilation in avg
and Lp, integer adaptive max) is built from torch tensor operations in
`app.windows` and here. Batch, layout and index layout are the pipeline's:
these functions know nothing of requests or encodings.

A long computation runs in pieces of whole (n, c) planes (`app.execution`), so
a compute function sees any run of planes and must not depend on where it
lies in the batch; what does (fractional pooling's random offsets, unpooling's
whole-tensor indices) a family's `before_pieces` step works out first, for all planes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from app import windows
from app.errors import InvalidParameters
from app.params import (
    AdaptiveAvgParams,
    AdaptiveMaxParams,
    AvgParams,
    FractionalParams,
    GlobalAvgParams,
    GlobalMaxParams,
    LpParams,
    MaxParams,
    UnpoolParams,
)
from app.planning import Plan, WindowPlan

Result = tuple[torch.Tensor, torch.Tensor | None]
Extra = dict[str, torch.Tensor]


def _by_rank(name: str) -> dict[int, Callable[..., Any]]:
    return {rank: getattr(F, name.format(rank)) for rank in (1, 2, 3) if hasattr(F, name.format(rank))}


_MAX = _by_rank("max_pool{}d")
_AVG = _by_rank("avg_pool{}d")
_LP = _by_rank("lp_pool{}d")
_ADAPTIVE_MAX = _by_rank("adaptive_max_pool{}d")
_ADAPTIVE_AVG = _by_rank("adaptive_avg_pool{}d")
_FRACTIONAL = _by_rank("fractional_max_pool{}d")


# ---------------------------------------------------------------- sliding windows: max, avg, lp


def max_compute(x: torch.Tensor, p: MaxParams, plan: Plan, extra: Extra) -> Result:
    w = plan.windows
    assert w is not None
    rank = len(w.kernel)
    if not w.symmetric:
        return windows.max_windows(x, w, p.return_indices)
    # torch's integer max_pool1d exists only in its with-indices form.
    with_indices = p.return_indices or (rank == 1 and not x.is_floating_point())
    kernel, stride, padding, dilation = w.torch_args
    result = _MAX[rank](x, kernel, stride, padding, dilation, w.ceil_mode, with_indices)
    if with_indices:
        out, indices = result
        return out, indices if p.return_indices else None
    return result, None


def _count_include_pad(p: AvgParams, w: WindowPlan) -> bool:
    return p.count_include_pad if p.count_include_pad is not None else w.torch_form


def avg_compute(x: torch.Tensor, p: AvgParams, plan: Plan, extra: Extra) -> Result:
    w = plan.windows
    assert w is not None
    rank = len(w.kernel)
    include_pad = _count_include_pad(p, w)
    if w.symmetric and w.undilated and (rank < 3 or w.input_holds_window):
        if rank == 1:
            # avg_pool1d has no divisor_override; torch itself runs it as a 2-D pool of height 1.
            out = F.avg_pool2d(
                x.unsqueeze(-2),
                (1, w.kernel[0]),
                (1, w.stride[0]),
                (0, w.pads[0][0]),
                w.ceil_mode,
                include_pad,
                p.divisor_override,
            )
            return out.squeeze(-2), None
        kernel, stride, padding, _ = w.torch_args
        return _AVG[rank](x, kernel, stride, padding, w.ceil_mode, include_pad, p.divisor_override), None
    sums = windows.sum_windows(x, w)
    if p.divisor_override is not None:
        return sums / p.divisor_override, None
    return sums / windows.cell_counts(w, include_pad, sums), None


def lp_compute(x: torch.Tensor, p: LpParams, plan: Plan, extra: Extra) -> Result:
    w = plan.windows
    assert w is not None
    rank = len(w.kernel)
    if w.unpadded and w.undilated and not p.absolute and (rank < 3 or w.input_holds_window):
        kernel, stride = list(w.kernel), list(w.stride)
        if rank == 1:  # lp_pool1d multiplies by kernel_size, so it must be an int there
            return _LP[1](x, p.norm_type, kernel[0], stride[0], w.ceil_mode), None
        return _LP[rank](x, p.norm_type, kernel, stride, w.ceil_mode), None
    if math.isinf(p.norm_type):
        # max |x|; zero padding never exceeds it
        magnitude = windows.pad_for_windows(x.abs(), w, 0)
        return _MAX[rank](magnitude, w.kernel, w.stride, 0, w.dilation, False), None
    base = x.abs() if p.absolute else x
    sums = windows.sum_windows(base.pow(p.norm_type), w)
    return sums.pow(1.0 / p.norm_type), None


# ---------------------------------------------------------------- adaptive and global


def adaptive_max_compute(x: torch.Tensor, p: AdaptiveMaxParams, plan: Plan, extra: Extra) -> Result:
    if not x.is_floating_point():
        out, indices = adaptive_max_integer(x, plan.sizes)
        return out, indices if p.return_indices else None
    if p.return_indices:
        out, indices = _ADAPTIVE_MAX[len(plan.sizes)](x, list(plan.sizes), True)
        return out, indices
    return _ADAPTIVE_MAX[len(plan.sizes)](x, list(plan.sizes)), None


def adaptive_avg_compute(x: torch.Tensor, p: AdaptiveAvgParams, plan: Plan, extra: Extra) -> Result:
    return _ADAPTIVE_AVG[len(plan.sizes)](x, list(plan.sizes)), None


def adaptive_max_integer(x: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive max pooling of integers, which torch's kernel refuses, exactly."""
    rank = len(sizes)
    uniform = [_uniform_windows(size, out) for size, out in zip(x.shape[2:], sizes, strict=True)]
    if all(uniform):
        # Windows of one size at one stride: torch's max pooling, which takes integers.
        kernel, stride = zip(*uniform, strict=True)
        return _MAX[rank](x, list(kernel), list(stride), return_indices=True)
    # torch's float kernel finds each window's first largest value as a float64.
    float_kernel = _ADAPTIVE_MAX[rank]
    if x.dtype != torch.int64 or x.numel() == 0:
        out, indices = float_kernel(x.double(), list(sizes), True)  # smaller integers are float64s exactly
        return out.to(x.dtype), indices
    # Positive normal float64s order as their bit patterns do, so int64 values shifted
    # into those patterns (2**52 to 0x7FEF...) are keys that the float kernel ranks as
    # it ranks the integers, however large. The shift never overflows: it moves the
    # largest value at most to the largest finite float64. Values that land outside the
    # keys read as subnormal, negative, infinite or NaN. None of them can beat a key
    # without it showing (a NaN stays its window's result), so each window whose result
    # is a key is exact and the others, rare, are searched cell by cell. When a sample
    # says the values are keys already (large positives, as timestamps are), they are
    # read in place: the sample saves a pass over the input, and decides no result.
    sample = torch.take(x, torch.arange(64, device=x.device) * (x.numel() - 1) // 63)  # first to last
    if bool(((sample >= _SMALLEST_NORMAL_BITS) & (sample <= _LARGEST_FINITE_BITS)).all()):
        shift = 0
    else:
        shift = max(0, _LARGEST_FINITE_BITS - int(x.amax()))
    if shift == 0:
        keys = x
    elif shift <= _INT64_MAX:
        keys = x + shift
    else:  # every value is below -2**52, and the shift itself out of range: two steps
        keys = (x + _INT64_MAX).add_(shift - _INT64_MAX)
    out, indices = float_kernel(keys.view(torch.float64), list(sizes), True)
    values = out.view(torch.int64)  # the kernel's own output: shifted back in place
    undecided = ((values < _SMALLEST_NORMAL_BITS) | (values > _LARGEST_FINITE_BITS)).nonzero()
    values.sub_(shift)
    if len(undecided):
        at = undecided.unbind(1)
        values[at], indices[at] = _first_maxima(x, sizes, undecided)
    return values, indices


def _uniform_windows(size: int, out: int) -> tuple[int, int] | None:
    """The (kernel, stride) of the max pooling whose windows are the adaptive ones, where
    there is one. Adaptive windows run from floor(i * size / out) to
    ceil((i + 1) * size / out): with size = q * out + r, they are q cells every q when
    r is 0, q + 1 cells every q when r is 1 (56 -> 5: 12 cells every 11), and uneven
    otherwise."""
    q, r = divmod(size, out)
    if r == 0:
        return q, q
    if r == 1 and q >= 1:
        return q + 1, q
    return None


_SMALLEST_NORMAL_BITS = 1 << 52  # the bits of float64's smallest normal number
_LARGEST_FINITE_BITS = 0x7FEFFFFFFFFFFFFF  # and of its largest finite one
_INT64_MAX = (1 << 63) - 1


def _adaptive_windows(size: int, out: int, device: torch.device) -> torch.Tensor:
    """The input positions of each adaptive window, (out, widest). Short windows repeat
    their last cell, which changes neither the max nor the first position that holds it."""
    i = torch.arange(out, dtype=torch.int64)
    start = (i * size).div(out, rounding_mode="floor")
    end = ((i + 1) * size + out - 1).div(out, rounding_mode="floor")
    widest = int((end - start).max())
    cells = torch.minimum(start[:, None] + torch.arange(widest, dtype=torch.int64)[None, :], end[:, None] - 1)
    return cells.to(device)


def _first_maxima(x: torch.Tensor, sizes: tuple[int, ...], where: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For the windows at `where` (rows of n, c and output positions), each maximum and
    the first place in the plane, in row-major order, that holds it: every cell read,
    from memory as it lies (channels-last included)."""
    n, spatial, strides = len(where), x.shape[2:], x.stride()
    place = torch.zeros(n, dtype=torch.int64, device=x.device)  # in the plane, row-major
    memory = where[:, 0] * strides[0] + where[:, 1] * strides[1]
    for dim, out in enumerate(sizes):
        cells = _adaptive_windows(spatial[dim], out, x.device)[where[:, 2 + dim]].reshape(n, *[1] * dim, -1)
        place = place.unsqueeze(-1) * spatial[dim] + cells
        memory = memory.unsqueeze(-1) + cells * strides[2 + dim]
    span = 1 + sum((size - 1) * stride for size, stride in zip(x.shape, strides, strict=True))
    values = x.as_strided((span,), (1,)).index_select(0, memory.reshape(-1)).reshape(n, -1)
    # Places only grow along a window's cells, so the first maximum is the first place.
    maxima, first = values.max(-1)
    return maxima, place.reshape(n, -1).gather(-1, first.unsqueeze(-1)).squeeze(-1)


def global_max_compute(x: torch.Tensor, p: GlobalMaxParams, plan: Plan, extra: Extra) -> Result:
    rank = x.dim() - 2
    if x.is_floating_point():
        out, indices = _ADAPTIVE_MAX[rank](x, 1, True)
    else:
        # Exact for integers, which adaptive max pooling does not take.
        kept = (*x.shape[:2], *([1] * rank))
        values, positions = x.flatten(2).max(dim=-1)
        out, indices = values.reshape(kept), positions.reshape(kept)
    return out, indices if p.return_indices else None


def global_avg_compute(x: torch.Tensor, p: GlobalAvgParams, plan: Plan, extra: Extra) -> Result:
    return _ADAPTIVE_AVG[x.dim() - 2](x, 1), None


# ---------------------------------------------------------------- fractional


def fractional_samples(seed: int, batch: int, channels: int, rank: int) -> torch.Tensor:
    """The window offsets, drawn on the CPU in float64 so a seed means the same on any device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(batch, channels, rank, generator=generator, dtype=torch.float64)


def fractional_draw(x: torch.Tensor, p: FractionalParams, plan: Plan, extra: Extra) -> Extra:
    """Every plane's window offsets, drawn for the whole tensor before it is split into pieces."""
    assert p.random_seed is not None  # drawn by `seeded` before any computation
    samples = fractional_samples(p.random_seed, x.shape[0], x.shape[1], len(p.kernel_size))
    return {**extra, "samples": samples.to(x.device)}


def fractional_compute(x: torch.Tensor, p: FractionalParams, plan: Plan, extra: Extra) -> Result:
    rank = len(p.kernel_size)
    samples = extra["samples"].to(dtype=x.dtype)
    out, indices = _FRACTIONAL[rank](
        x, p.kernel_size, output_size=list(plan.sizes), return_indices=True, _random_samples=samples
    )
    return out, indices if p.return_indices else None


# ---------------------------------------------------------------- unpooling


def unpool_positions(x: torch.Tensor, p: UnpoolParams, plan: Plan, extra: Extra) -> Extra:
    """The indices as positions within each plane, all checked, for the whole tensor
    before it is split into pieces."""
    plane = math.prod(plan.sizes)
    indices = extra["indices"].flatten(2)
    if p.global_indices():
        # ONNX counts over the whole (N, C, *spatial) output: take each plane's offset off.
        lead = x.shape[0] * x.shape[1]
        offsets = torch.arange(lead, device=x.device, dtype=torch.int64).reshape(x.shape[0], x.shape[1], 1) * plane
        indices = indices - offsets
    if indices.numel():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= plane:
            where = "outside its (n, c) plane" if p.global_indices() else f"outside the plane of {plane}"
            raise InvalidParameters.at(("indices",), f"an index lies {where} (output spatial size {list(plan.sizes)})")
    return {**extra, "indices": indices}


def unpool_compute(x: torch.Tensor, p: UnpoolParams, plan: Plan, extra: Extra) -> Result:
    flat = x.flatten(2)
    out = torch.zeros((*flat.shape[:2], math.prod(plan.sizes)), dtype=x.dtype, device=x.device)
    # scatter_reduce with amax is deterministic where indices repeat (the largest
    # value wins); torch's max_unpool leaves that case unspecified.
    out.scatter_reduce_(2, extra["indices"], flat, reduce="amax", include_self=False)
    return out.reshape(*x.shape[:2], *plan.sizes), None
