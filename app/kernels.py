"""What each family of pooling computes, on `(N, C, *spatial)` torch tensors.

Each family has two functions:

- `*_plan(params, shape, max_elements)`: the output shape (and the effective
  padding) for an input shape, or an `InvalidParameters` that says, in this
  service's words, why the parameters cannot pool this tensor. It runs before
  any computation, and refuses outputs past the element limit (`TooLarge`)
  before any work proportional to them.
- `*_compute(x, params, plan, extra)`: the result `(output, indices or None)`,
  indices as flat positions within each spatial plane.

Where torch has the operation, torch computes it; what torch lacks (padding
forms, dilation in avg and Lp, integer adaptive max) is built from torch
tensor operations in `app.windows` and here. Batch, layout and index layout
are the pipeline's: these functions know nothing of HTTP or encodings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from app import windows
from app.errors import InvalidParameters

Shape = tuple[int, ...]
Result = tuple[torch.Tensor, torch.Tensor | None]


@dataclass(frozen=True)
class Plan:
    out_shape: Shape
    padding: list[list[int]] | None = None  # effective [begin, end] per spatial dimension
    windows: windows.WindowPlan | None = None
    sizes: tuple[int, ...] = ()  # output spatial sizes of adaptive, fractional and unpooling


def _fail(param: str, msg: str) -> InvalidParameters:
    return InvalidParameters.at(("body", param), msg)


def _by_rank(name: str) -> dict[int, Callable[..., Any]]:
    return {rank: getattr(F, name.format(rank)) for rank in (1, 2, 3) if hasattr(F, name.format(rank))}


_MAX = _by_rank("max_pool{}d")
_AVG = _by_rank("avg_pool{}d")
_LP = _by_rank("lp_pool{}d")
_ADAPTIVE_MAX = _by_rank("adaptive_max_pool{}d")
_ADAPTIVE_AVG = _by_rank("adaptive_avg_pool{}d")
_FRACTIONAL = _by_rank("fractional_max_pool{}d")


def _with_sizes(shape: Shape, sizes: list[int] | tuple[int, ...]) -> Shape:
    return (*shape[: -len(sizes)], *sizes)


# ---------------------------------------------------------------- sliding windows: max, avg, lp


def sliding_plan(params: Any, shape: Shape, max_elements: int) -> Plan:
    plan = windows.plan_windows(params, shape, max_elements)
    return Plan(_with_sizes(shape, plan.out), [list(pad) for pad in plan.pads], plan)


def averaging_plan(params: Any, shape: Shape, max_elements: int) -> Plan:
    """Average and Lp pooling: as max, but where torch's own 3-D average pooling
    refuses an input smaller than the window, so does the torch form of padding."""
    plan = sliding_plan(params, shape, max_elements)
    w = plan.windows
    assert w is not None
    if len(w.kernel) == 3 and w.torch_form and not w.input_holds_window:
        raise _fail(
            "kernel_size",
            f"the input's spatial size {list(w.spatial)} is smaller than the window {list(w.kernel)}; "
            "torch's 3-D average pooling refuses that even with padding ([begin, end] pairs pool it)",
        )
    return plan


def max_compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
    w = plan.windows
    assert w is not None
    rank = len(w.kernel)
    if not w.symmetric:
        return windows.max_windows(x, w, p.return_indices)
    # torch's integer max_pool1d exists only in its with-indices form.
    with_indices = p.return_indices or (rank == 1 and not x.is_floating_point())
    result = _MAX[rank](x, w.kernel, w.stride, w.torch_padding, w.dilation, w.ceil_mode, with_indices)
    if with_indices:
        out, indices = result
        return out, indices if p.return_indices else None
    return result, None


def _count_include_pad(p: Any, w: windows.WindowPlan) -> bool:
    return p.count_include_pad if p.count_include_pad is not None else w.torch_form


def avg_compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
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
        return _AVG[rank](x, w.kernel, w.stride, w.torch_padding, w.ceil_mode, include_pad, p.divisor_override), None
    sums = windows.sum_windows(x, w)
    if p.divisor_override is not None:
        return sums / p.divisor_override, None
    return sums / windows.cell_counts(w, include_pad, sums), None


def lp_compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
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


def adaptive_plan(params: Any, shape: Shape, max_elements: int) -> Plan:
    rank = len(params.output_size)
    sizes = tuple(s if s is not None else inp for s, inp in zip(params.output_size, shape[-rank:], strict=True))
    return Plan(_with_sizes(shape, sizes), sizes=sizes)


def adaptive_max_compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
    if not x.is_floating_point():
        out, indices = adaptive_max_integer(x, plan.sizes)
        return out, indices if p.return_indices else None
    if p.return_indices:
        out, indices = _ADAPTIVE_MAX[len(plan.sizes)](x, list(plan.sizes), True)
        return out, indices
    return _ADAPTIVE_MAX[len(plan.sizes)](x, list(plan.sizes)), None


def adaptive_avg_compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
    return _ADAPTIVE_AVG[len(plan.sizes)](x, list(plan.sizes)), None


def adaptive_max_integer(x: torch.Tensor, sizes: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive max pooling of integers, which torch's kernel refuses, exactly."""
    rank = len(sizes)
    spatial = x.shape[2:]
    if all(size % out == 0 for size, out in zip(spatial, sizes, strict=True)):
        # Windows of equal size, side by side: torch's max pooling, which takes integers.
        kernel = [size // out for size, out in zip(spatial, sizes, strict=True)]
        return _MAX[rank](x, kernel, kernel, return_indices=True)
    # torch's float kernel finds each window's first largest value as a float64.
    float_kernel = _ADAPTIVE_MAX[rank]
    if x.dtype != torch.int64 or x.numel() == 0:
        out, indices = float_kernel(x.double(), list(sizes), True)  # smaller integers are float64s exactly
        return out.to(x.dtype), indices
    if abs(int(x[(0,) * x.dim()])) < _FLOAT64_EXACT:
        # Most int64 data is small, and float64 holds it exactly: try that first. Every
        # window maximum strictly within 2**53 of zero proves it: nothing rounded could
        # then have tied with it or beaten it.
        out, indices = float_kernel(x.double(), list(sizes), True)
        if bool(((out > -_FLOAT64_EXACT) & (out < _FLOAT64_EXACT)).all()):
            return out.long(), indices
    low, high = (int(bound) for bound in torch.aminmax(x))
    # Positive float64s order as their bit patterns do, so a value's distance from a
    # base, read as the bits of a float64, is a key the float kernel ranks exactly as
    # it ranks the integers, however large. Keys run from the smallest normal float64
    # to the largest finite one (never subnormal, infinite or NaN): 2**63 - 2**53
    # values. Values spread wider than that, from one end of int64 to the other, share
    # the lowest key below `least`, and the rare windows whose maximum lies down there
    # are searched cell by cell.
    if _SMALLEST_NORMAL_BITS <= low and high <= _LARGEST_FINITE_BITS:
        # Large positive values, as timestamps are, are their own keys, read in place.
        out, indices = float_kernel(x.view(torch.float64), list(sizes), True)
        return out.view(torch.int64), indices
    least = max(low, high - _KEY_VALUES + 2)
    base = least - 1 - _SMALLEST_NORMAL_BITS  # the value whose key is the lowest
    clamped = x.clamp_min(least - 1) if least > low else None  # shifted in place below
    if base >= _INT64_MIN:
        keys = clamped.sub_(base) if clamped is not None else x - base
    else:  # values near int64's least: `base` itself is out of range, so two steps
        keys = (clamped if clamped is not None else x).sub(least).add_(least - base)
    out, indices = float_kernel(keys.view(torch.float64), list(sizes), True)
    values = out.view(torch.int64) - (least - base) + least
    if least > low:
        low_windows = (values < least).nonzero()
        if len(low_windows):
            at = low_windows.unbind(1)
            values[at], indices[at] = _first_maxima(x, sizes, low_windows)
    return values, indices


_FLOAT64_EXACT = 1 << 53  # every integer within this of zero is a float64
_SMALLEST_NORMAL_BITS = 1 << 52  # the bits of float64's smallest normal number
_LARGEST_FINITE_BITS = 0x7FEFFFFFFFFFFFFF  # and of its largest finite one
_KEY_VALUES = _LARGEST_FINITE_BITS - _SMALLEST_NORMAL_BITS + 1
_INT64_MIN = -(1 << 63)


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
    the first place in the plane, in row-major order, that holds it: every cell read."""
    spatial = x.shape[2:]
    flat = torch.zeros(len(where), dtype=torch.int64, device=x.device)
    for dim, out in enumerate(sizes):
        cells = _adaptive_windows(spatial[dim], out, x.device)
        flat = flat.unsqueeze(-1) * spatial[dim] + cells[where[:, 2 + dim]].reshape(len(where), *[1] * dim, -1)
    flat = flat.reshape(len(where), -1)
    planes = x.reshape(x.shape[0] * x.shape[1], -1)
    values = planes[(where[:, 0] * x.shape[1] + where[:, 1]).unsqueeze(-1), flat]
    maxima = values.amax(-1)
    first = torch.where(values == maxima.unsqueeze(-1), flat, torch.iinfo(torch.int64).max).amin(-1)
    return maxima, first


def global_plan(rank: int) -> Callable[[Any, Shape, int], Plan]:
    def plan(params: Any, shape: Shape, max_elements: int) -> Plan:
        return Plan(_with_sizes(shape, [1] * rank), sizes=(1,) * rank)

    return plan


def global_max_compute(rank: int) -> Callable[[torch.Tensor, Any, Plan, dict[str, torch.Tensor]], Result]:
    def compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
        kept = (*x.shape[:2], *([1] * rank))
        if x.is_floating_point():
            out, indices = _ADAPTIVE_MAX[rank](x, 1, True)
        else:
            # Exact for integers, which adaptive max pooling does not take.
            values, positions = x.flatten(2).max(dim=-1)
            out, indices = values.reshape(kept), positions.reshape(kept)
        return out, indices if p.return_indices else None

    return compute


def global_avg_compute(rank: int) -> Callable[[torch.Tensor, Any, Plan, dict[str, torch.Tensor]], Result]:
    def compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
        return _ADAPTIVE_AVG[rank](x, 1), None

    return compute


# ---------------------------------------------------------------- fractional


def fractional_plan(params: Any, shape: Shape, max_elements: int) -> Plan:
    rank = len(params.kernel_size)
    spatial = shape[-rank:]
    if (params.output_size is None) == (params.output_ratio is None):
        raise _fail("output_size", "give exactly one of output_size and output_ratio")
    if params.output_size is not None:
        sizes, given = list(params.output_size), "output_size"
    else:
        sizes = [int(size * ratio) for size, ratio in zip(spatial, params.output_ratio, strict=True)]
        given = "output_ratio"
    for dim, (size, out, kernel) in enumerate(zip(spatial, sizes, params.kernel_size, strict=True)):
        if out < 1:
            raise _fail(given, f"the output would be empty in spatial dimension {dim} (input size {size})")
        # torch allows the last window to end at the border in 2-D but not in 3-D.
        reach = out + kernel - 1 if rank == 2 else out + kernel
        if reach > size:
            bound = "exceeds" if rank == 2 else "reaches"
            raise _fail(
                given,
                f"spatial dimension {dim}: output size {out} plus kernel size {kernel} minus 1 "
                f"{bound} the input size {size}",
            )
    return Plan(_with_sizes(shape, sizes), sizes=tuple(sizes))


def fractional_samples(seed: int, batch: int, channels: int, rank: int) -> torch.Tensor:
    """The window offsets, drawn on the CPU in float64 so a seed means the same on any device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(batch, channels, rank, generator=generator, dtype=torch.float64)


def fractional_compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
    rank = len(p.kernel_size)
    samples = fractional_samples(p.random_seed, x.shape[0], x.shape[1], rank).to(device=x.device, dtype=x.dtype)
    out, indices = _FRACTIONAL[rank](
        x, p.kernel_size, output_size=list(plan.sizes), return_indices=True, _random_samples=samples
    )
    return out, indices if p.return_indices else None


# ---------------------------------------------------------------- unpooling


def unpool_plan(params: Any, shape: Shape, max_elements: int) -> Plan:
    rank = len(params.kernel_size)
    stride = params.stride or params.kernel_size
    spatial = shape[-rank:]
    default = [(size - 1) * stride[d] - 2 * params.padding[d] + params.kernel_size[d] for d, size in enumerate(spatial)]
    if params.output_size is None:
        sizes = default
    else:
        sizes = list(params.output_size)
        if len(sizes) == len(shape):
            if tuple(sizes[:-rank]) != shape[:-rank]:
                raise _fail("output_size", f"a full output_size must start with the input's {list(shape[:-rank])}")
            sizes = sizes[-rank:]
        elif len(sizes) != rank:
            raise _fail("output_size", f"output_size has {rank} spatial sizes or {len(shape)} full-shape entries")
        for d in range(rank):
            if not default[d] - stride[d] < sizes[d] < default[d] + stride[d]:
                raise _fail(
                    "output_size",
                    f"output_size in spatial dimension {d} must lie strictly between "
                    f"{default[d] - stride[d]} and {default[d] + stride[d]}",
                )
    if min(sizes) < 1:
        raise _fail("padding", f"the unpooled output would be empty (size {sizes})")
    return Plan(_with_sizes(shape, sizes), sizes=tuple(sizes))


def unpool_compute(x: torch.Tensor, p: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Result:
    plane = math.prod(plan.sizes)
    indices = extra["indices"].flatten(2)
    if p.indices_layout == "global":
        # ONNX counts over the whole (N, C, *spatial) output: take each plane's offset off.
        lead = x.shape[0] * x.shape[1]
        offsets = torch.arange(lead, device=x.device, dtype=torch.int64).reshape(x.shape[0], x.shape[1], 1) * plane
        indices = indices - offsets
    if indices.numel():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= plane:
            where = "outside its (n, c) plane" if p.indices_layout == "global" else f"outside the plane of {plane}"
            raise _fail("indices", f"an index lies {where} (output spatial size {list(plan.sizes)})")
    flat = x.flatten(2)
    out = torch.zeros((*flat.shape[:2], plane), dtype=x.dtype, device=x.device)
    # scatter_reduce with amax is deterministic where indices repeat (the largest
    # value wins); torch's max_unpool leaves that case unspecified.
    out.scatter_reduce_(2, indices, flat, reduce="amax", include_self=False)
    return out.reshape(*x.shape[:2], *plan.sizes), None
