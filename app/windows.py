"""Sliding windows with every padding the frameworks know, as ONNX defines them.

Padding is torch's symmetric ints, `"valid"`, `"same"` (the odd cell at the
end, ONNX SAME_UPPER, Keras, TF), `"same_lower"`, or ONNX's `[begin, end]`
pairs, combined with stride, dilation and ceil_mode. `plan_windows` resolves
them to per-dimension `(begin, end)` pads and output sizes, refusing what
cannot be pooled; the compute functions run on torch tensors:

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
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch
import torch.nn.functional as F

from app.errors import InvalidParameters, TooLarge

Pads = tuple[tuple[int, int], ...]
SAME_FORMS = ("same", "same_lower")


@dataclass(frozen=True)
class WindowPlan:
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: Pads  # effective (begin, end) per spatial dimension
    out: tuple[int, ...]
    spatial: tuple[int, ...]  # the input's spatial sizes
    ceil_mode: bool
    torch_form: bool  # padding was given as ints, torch's form

    @cached_property  # asked on every request; a plan lives in the plan cache
    def symmetric(self) -> bool:
        """Padding torch can apply itself: the same on both sides, at most half the kernel."""
        return all(b == e and b <= k // 2 for (b, e), k in zip(self.pads, self.kernel, strict=True))

    @property
    def undilated(self) -> bool:
        return all(d == 1 for d in self.dilation)

    @property
    def unpadded(self) -> bool:
        return all(b == 0 and e == 0 for b, e in self.pads)

    @property
    def input_holds_window(self) -> bool:
        """Whether the unpadded input spans a whole window in every dimension, which
        torch's 3-D average pooling demands (its 1-D and 2-D kernels do not)."""
        return all(size >= d * (k - 1) + 1 for size, k, d in zip(self.spatial, self.kernel, self.dilation, strict=True))

    @cached_property
    def torch_padding(self) -> tuple[int, ...]:
        return tuple(b for b, _ in self.pads)


def _fail(param: str, msg: str) -> InvalidParameters:
    return InvalidParameters.at(("body", param), msg)


def window_count(size: int, kernel: int, stride: int, pads: tuple[int, int], dilation: int, ceil_mode: bool) -> int:
    """Windows along one dimension (torch's `pooling_output_shape`, ONNX's rule):
    under ceil_mode a last window that would start inside the end padding is dropped."""
    begin, end = pads
    span = size + begin + end - dilation * (kernel - 1) - 1
    count = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (count - 1) * stride >= size + begin:
        count -= 1
    return count


def same_pads(size: int, kernel: int, stride: int, dilation: int, lower: bool) -> tuple[int, int]:
    """TF/Keras/ONNX "same": ceil(size / stride) windows; never negative padding."""
    out = -(-size // stride)
    total = max(0, (out - 1) * stride + dilation * (kernel - 1) + 1 - size)
    small, large = total // 2, total - total // 2
    return (large, small) if lower else (small, large)


def resolve_pads(
    padding: Any, kernel: list[int], stride: list[int], dilation: list[int], spatial: tuple[int, ...]
) -> tuple[Pads, bool]:
    """Per-dimension (begin, end) pads for any padding form, and whether it was torch's int form."""
    rank = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * rank, False
        lower = padding == "same_lower"
        return tuple(same_pads(spatial[d], kernel[d], stride[d], dilation[d], lower) for d in range(rank)), False
    if padding and isinstance(padding[0], list):
        return tuple((b, e) for b, e in padding), False
    for dim, (pad, k) in enumerate(zip(padding, kernel, strict=True)):
        if pad > k // 2:
            raise _fail(
                "padding",
                f"padding {pad} in spatial dimension {dim} exceeds half the kernel size {k}; "
                "use [begin, end] pairs for larger padding",
            )
    return tuple((p, p) for p in padding), True


def cells_between(starts: torch.Tensor, kernel: int, dilation: int, low: int, high: int) -> torch.Tensor:
    """For windows starting at `starts`, how many of their cells start + j * dilation
    (0 <= j < kernel) lie in [low, high): arithmetic, not a walk over the cells."""
    first = (low - starts + dilation - 1).div(dilation, rounding_mode="floor").clamp(min=0)
    last = (high - 1 - starts).div(dilation, rounding_mode="floor").clamp(max=kernel - 1)
    return (last - first + 1).clamp(min=0)


def _every_window_touches_input(size: int, kernel: int, stride: int, begin: int, dilation: int, count: int) -> bool:
    """Whether every window has a cell inside the input. A window starting inside the
    input has one (its first cell), so only those starting in the begin padding and
    the last one need a look."""
    if (count - 1) * stride - begin > size - 1:
        return False
    in_padding = min(count, -(-begin // stride))
    if in_padding == 0:
        return True
    starts = torch.arange(in_padding, dtype=torch.int64) * stride - begin
    return bool((cells_between(starts, kernel, dilation, 0, size) > 0).all())


def plan_windows(params: Any, shape: tuple[int, ...], max_elements: int) -> WindowPlan:
    """The windows for an input of canonical `shape` (N, C, *spatial); an output or a
    padded copy of the input past the element limit is refused before any other work."""
    rank = len(params.kernel_size)
    spatial = shape[-rank:]
    kernel = params.kernel_size
    stride = params.stride or kernel
    dilation = params.__dict__.get("dilation") or [1] * rank  # fields a family lacks are absent
    padding = params.__dict__.get("padding")
    if padding is None:
        padding = [0] * rank
    pads, torch_form = resolve_pads(padding, kernel, stride, dilation, spatial)
    out = []
    for dim, size in enumerate(spatial):
        count = window_count(size, kernel[dim], stride[dim], pads[dim], dilation[dim], params.ceil_mode)
        if count < 1:
            reach = dilation[dim] * (kernel[dim] - 1) + 1
            raise _fail(
                "kernel_size",
                f"the output would be empty: spatial dimension {dim} has size {size} "
                f"(+{sum(pads[dim])} padding) but the window spans {reach}",
            )
        out.append(count)
    lead = math.prod(shape[:-rank])
    if lead * math.prod(out) > max_elements:
        raise TooLarge(f"the output would have {lead * math.prod(out)} elements; the limit is {max_elements}")
    extents = [
        max(size + b + e, (n - 1) * s + d * (k - 1) + 1)
        for size, (b, e), n, s, d, k in zip(spatial, pads, out, stride, dilation, kernel, strict=True)
    ]
    if lead * math.prod(extents) > 2 * max_elements:
        raise TooLarge(
            f"the padded input would span {lead * math.prod(extents)} elements; the limit is {2 * max_elements}"
        )
    for dim, size in enumerate(spatial):
        if not _every_window_touches_input(size, kernel[dim], stride[dim], pads[dim][0], dilation[dim], out[dim]):
            raise _fail("padding", f"a window in spatial dimension {dim} lies wholly in the padding")
    return WindowPlan(
        tuple(kernel), tuple(stride), tuple(dilation), pads, tuple(out), tuple(spatial), params.ceil_mode, torch_form
    )


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
