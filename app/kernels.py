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


_SMALLEST_NORMAL_BITS = 1 << 52  # the bits of float64's smallest normal number
_LARGEST_FINITE_BITS = 0x7FEFFFFFFFFFFFFF  # and of its largest finite one
_INT64_MIN = -(1 << 63)


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
    low, high = (int(bound) for bound in torch.aminmax(x))
    base = 0 if low >= _SMALLEST_NORMAL_BITS else low - _SMALLEST_NORMAL_BITS
    if base >= _INT64_MIN and high - base <= _LARGEST_FINITE_BITS:
        # Positive float64s order as their bit patterns do. Each value's distance from
        # `base`, read as the bits of a float64, is then a key the float kernel ranks
        # as it ranks the integers themselves, however large, and none is subnormal,
        # infinite or NaN. Large positive values (timestamps) are their own keys, read
        # in place; others take one pass to shift.
        keys = (x - base if base else x).view(torch.float64)
        out, indices = float_kernel(keys, list(sizes), True)
        return out.view(torch.int64) + base, indices
    # Values spread over nearly all of int64: their float64 roundings keep their order but
    # may merge a window's largest values. Where the value picked is the window's exact
    # maximum it is also the first place that holds it; where it is not, the window is
    # searched cell by cell.
    _, indices = float_kernel(x.double(), list(sizes), True)
    exact = window_max(x, sizes)
    picked = x.flatten(2).gather(2, indices.flatten(2)).reshape(indices.shape)
    wrong = (picked != exact).nonzero()
    if len(wrong):
        indices[wrong.unbind(1)] = _first_maxima(x, sizes, wrong, exact[wrong.unbind(1)])
    return exact, indices


_MAX_CLASSES = 32  # beyond this many classes of windows in a dimension, gathering costs less (56 rows: 33)


def window_max(x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """The exact maximum of every adaptive window, of any dtype. Max is separable:
    one dimension at a time, the outer ones first, which torch reduces in long
    vectorised runs along the rows."""
    values = x
    for dim, out in enumerate(sizes):
        values = _window_max_along(values, 2 + dim, out)
    return values


def _window_max_along(t: torch.Tensor, axis: int, out: int) -> torch.Tensor:
    size = t.shape[axis]
    classes, per_class = _window_classes(size, out)
    if axis == t.dim() - 1 or len(classes) > _MAX_CLASSES:
        cells, _ = _adaptive_windows(size, out, t.device)
        return t.index_select(axis, cells.flatten()).unflatten(axis, tuple(cells.shape)).amax(axis + 1)
    parts = []
    for c in classes:
        # The class's windows as a view: (..., window, cell, ...).
        shape = [*t.shape[:axis], per_class, c.width, *t.shape[axis + 1 :]]
        stride = [*t.stride()[:axis], c.step * t.stride(axis), t.stride(axis), *t.stride()[axis + 1 :]]
        parts.append(t.as_strided(shape, stride, t.storage_offset() + c.start * t.stride(axis)).amax(axis + 1))
    # Window k of class c is output position k * classes + c.
    return torch.stack(parts, axis + 1).flatten(axis, axis + 1)


@dataclass(frozen=True)
class _WindowClass:
    """Every `classes`-th adaptive window along one dimension: all of one width and a
    fixed step apart, so one strided view holds them all."""

    start: int  # where the class's first window starts
    width: int
    step: int  # positions from one of its windows to the next


def _window_classes(size: int, out: int) -> tuple[list[_WindowClass], int]:
    """The classes of adaptive windows along one dimension, and windows per class.

    Window i spans [floor(i*size/out), ceil((i+1)*size/out)); window i + out/g, for
    g = gcd(size, out), starts and ends exactly size/g later. So window i belongs
    to class i mod (out/g), and every class holds g windows."""
    common = math.gcd(size, out)
    every, step = out // common, size // common
    classes = []
    for first in range(every):
        start = first * size // out
        classes.append(_WindowClass(start, -(-(first + 1) * size // out) - start, step))
    return classes, common


def _adaptive_windows(size: int, out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cells, starts): the input positions of each adaptive window, (out, widest), and
    where each starts. Short windows repeat their last cell, which changes neither the
    max nor the first position that holds it."""
    i = torch.arange(out, dtype=torch.int64)
    start = (i * size).div(out, rounding_mode="floor")
    end = ((i + 1) * size + out - 1).div(out, rounding_mode="floor")
    widest = int((end - start).max())
    cells = torch.minimum(start[:, None] + torch.arange(widest, dtype=torch.int64)[None, :], end[:, None] - 1)
    return cells.to(device), start.to(device)


def _first_maxima(x: torch.Tensor, sizes: tuple[int, ...], where: torch.Tensor, maxima: torch.Tensor) -> torch.Tensor:
    """For the windows at `where` (rows of n, c and output positions), the first place in
    the plane, in row-major order, that holds its maximum: every cell compared."""
    spatial = x.shape[2:]
    flat = torch.zeros(len(where), dtype=torch.int64, device=x.device)
    for dim, out in enumerate(sizes):
        cells, _ = _adaptive_windows(spatial[dim], out, x.device)
        flat = flat.unsqueeze(-1) * spatial[dim] + cells[where[:, 2 + dim]].reshape(len(where), *[1] * dim, -1)
    flat = flat.reshape(len(where), -1)
    planes = x.reshape(x.shape[0] * x.shape[1], -1)
    values = planes[(where[:, 0] * x.shape[1] + where[:, 1]).unsqueeze(-1), flat]
    return torch.where(values == maxima.unsqueeze(-1), flat, torch.iinfo(torch.int64).max).amin(-1)


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
