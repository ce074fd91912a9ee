"""Plans: what each family will compute for an input shape, worked out from the
shape and the parameters alone, before any data is touched.

A family's `plan(params, shape)` returns the output shape, the
work the computation will do and whatever it needs (the sliding windows with
their effective padding; the output sizes of adaptive, fractional and
unpooling), or raises an `InvalidParameters` that says, in this service's
words, why the parameters cannot pool this tensor, located at the parameter
alone (the door that received it says where that parameter came from). The
pipeline then refuses work over the cap (422) and an output or a scratch copy
past the element limit (413), before anything is allocated.

Work is counted in cells: every window cell visited, every cell of a padded
copy, every element scattered, and `STEP` cells for each step of a loop in
Python whose length the request sets (dilated sums walk the kernel), so that a
request's cost is known, and capped, before anything is allocated.

Sliding windows know every padding form the frameworks have: torch's symmetric
ints, `"valid"`, `"same"` (the odd cell at the end, ONNX SAME_UPPER, Keras,
TF), `"same_lower"`, and ONNX's `[begin, end]` pairs, combined with stride,
dilation and ceil_mode, as ONNX defines them.

Planning is arithmetic on shapes (numpy where it is vectorised): no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from functools import cached_property

from app.errors import InvalidParameters
from app.params import AdaptiveAvgParams, FractionalParams, PoolParams, UnpoolParams, WindowParams

Shape = tuple[int, ...]
Pads = tuple[tuple[int, int], ...]


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
    def torch_args(self) -> tuple[int | tuple[int, ...], ...]:
        """kernel, stride, padding (torch's symmetric form: the begin pads) and dilation
        as torch's pooling takes them, each an int where every dimension agrees: torch
        reads an int faster than a tuple, which matters when the pooling itself takes
        microseconds."""
        padding = tuple(begin for begin, _ in self.pads)
        return tuple(
            values[0] if len(set(values)) == 1 else values
            for values in (self.kernel, self.stride, padding, self.dilation)
        )


@dataclass(frozen=True)
class Plan:
    out_shape: Shape
    work: int  # cells the computation visits (see the module's docstring)
    padding: list[list[int]] | None = None  # effective [begin, end] per spatial dimension
    windows: WindowPlan | None = None
    sizes: tuple[int, ...] = ()  # output spatial sizes of adaptive, fractional and unpooling
    scratch: int = 0  # elements of the largest intermediate copy (a padded input)


# What one step of a Python loop over tensors costs, in cells: a torch call's own
# overhead, whatever its size.
STEP = 1 << 14


def _with_sizes(shape: Shape, sizes: list[int] | tuple[int, ...]) -> Shape:
    return (*shape[: -len(sizes)], *sizes)


# ---------------------------------------------------------------- sliding windows: max, avg, lp


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
    padding: list[int] | str | list[list[int]],
    kernel: list[int],
    stride: list[int],
    dilation: list[int],
    spatial: Shape,
) -> tuple[Pads, bool]:
    """Per-dimension (begin, end) pads for any padding form, and whether it was torch's int form."""
    rank = len(kernel)
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * rank, False
        lower = padding == "same_lower"
        return tuple(same_pads(spatial[d], kernel[d], stride[d], dilation[d], lower) for d in range(rank)), False
    if padding and isinstance(padding[0], list):
        return tuple((pair[0], pair[1]) for pair in padding if isinstance(pair, list)), False
    ints = [pad for pad in padding if isinstance(pad, int)]
    for dim, (pad, k) in enumerate(zip(ints, kernel, strict=True)):
        if pad > k // 2:
            raise InvalidParameters.at(
                ("padding",),
                f"padding {pad} in spatial dimension {dim} exceeds half the kernel size {k}; "
                "use [begin, end] pairs for larger padding",
            )
    return tuple((p, p) for p in ints), True


def floor_sum(n: int, m: int, a: int, b: int) -> int:
    """The sum of floor((a * i + b) / m) for 0 <= i < n, in O(log m) steps (the
    Euclid-like reduction of AtCoder's library), for any integers a, b and m > 0."""
    total = 0
    a, total = a % m, total + (n * (n - 1) // 2) * (a // m)
    b, total = b % m, total + n * (b // m)
    while True:
        if a >= m:
            total += (n * (n - 1) // 2) * (a // m)
            a %= m
        if b >= m:
            total += n * (b // m)
            b %= m
        top = a * n + b
        if top < m:
            return total
        n, b, m, a = top // m, top % m, a, m


def _every_window_touches_input(size: int, kernel: int, stride: int, begin: int, dilation: int, count: int) -> bool:
    """Whether every window has a cell inside the input, by arithmetic whatever the
    counts. A window starting inside the input has one (its first cell), so only
    the last window and those starting in the begin padding need a look. Window i
    starts at s = i * stride - begin; one starting in the padding reaches the input
    when s + (kernel - 1) * dilation >= 0 (true for all once true for the first),
    and its first cell there is s mod dilation, which lies inside the input unless
    it is >= size: those windows are counted with floor sums."""
    if (count - 1) * stride - begin > size - 1:
        return False
    in_padding = min(count, -(-begin // stride))
    if in_padding == 0:
        return True
    if -begin + (kernel - 1) * dilation < 0:
        return False
    if dilation <= size:
        return True
    # floor(s / d) - floor((s - size) / d) is 1 exactly when s mod d < size.
    inside = floor_sum(in_padding, dilation, stride, -begin) - floor_sum(in_padding, dilation, stride, -begin - size)
    return inside == in_padding


def plan_windows(params: WindowParams, shape: Shape) -> WindowPlan:
    """The windows for an input of canonical `shape` (N, C, *spatial)."""
    rank = len(params.kernel_size)
    spatial = shape[-rank:]
    kernel = params.kernel_size
    stride = params.stride or kernel
    dilation = params.dilation
    pads, torch_form = resolve_pads(params.padding, kernel, stride, dilation, spatial)
    out = []
    for dim, size in enumerate(spatial):
        count = window_count(size, kernel[dim], stride[dim], pads[dim], dilation[dim], params.ceil_mode)
        if count < 1:
            reach = dilation[dim] * (kernel[dim] - 1) + 1
            raise InvalidParameters.at(
                ("kernel_size",),
                f"the output would be empty: spatial dimension {dim} has size {size} "
                f"(+{sum(pads[dim])} padding) but the window spans {reach}",
            )
        out.append(count)
    for dim, size in enumerate(spatial):
        if not _every_window_touches_input(size, kernel[dim], stride[dim], pads[dim][0], dilation[dim], out[dim]):
            raise InvalidParameters.at(("padding",), f"a window in spatial dimension {dim} lies wholly in the padding")
    return WindowPlan(
        tuple(kernel), tuple(stride), tuple(dilation), pads, tuple(out), tuple(spatial), params.ceil_mode, torch_form
    )


def sliding_plan(params: WindowParams, shape: Shape) -> Plan:
    """Max, average and Lp pooling. The work: every cell of every window torch pools
    (where uneven padding is applied as torch's symmetric padding, the windows of
    that wider padding, of which only the planned ones are kept), a padded copy of
    the input as far as the windows reach (the scratch), and, where dilated sums
    walk the kernel (`averaging_plan`), their passes."""
    w = plan_windows(params, shape)
    lead = math.prod(shape[: -len(w.out)])
    extents = _extents(w)
    scratch = lead * math.prod(extents)
    wide = [
        max(out, window_count(size, k, s, (max(b, e), max(b, e)), d, True))
        for size, (b, e), out, s, d, k in zip(w.spatial, w.pads, w.out, w.stride, w.dilation, w.kernel, strict=True)
    ]
    work = lead * math.prod(wide) * math.prod(w.kernel) + scratch
    return Plan(_with_sizes(shape, w.out), work, [list(p) for p in w.pads], w, scratch=scratch)


def _extents(w: WindowPlan) -> list[int]:
    """Per dimension, the input and its padding, or as far as the windows reach."""
    return [
        max(size + b + e, (n - 1) * s + d * (k - 1) + 1)
        for size, (b, e), n, s, d, k in zip(w.spatial, w.pads, w.out, w.stride, w.dilation, w.kernel, strict=True)
    ]


def _dilated_sum_work(w: WindowPlan, lead: int) -> int:
    """A dilated sum adds, one dimension after another, each kernel cell's strided
    slice of what the previous dimensions left: a Python step and a pass over that
    slice per kernel cell."""
    extents, work = _extents(w), 0
    for dim, kernel in enumerate(w.kernel):
        part = lead * math.prod(w.out[: dim + 1]) * math.prod(extents[dim + 1 :])
        work += kernel * (part + STEP)
    return work


def averaging_plan(params: WindowParams, shape: Shape) -> Plan:
    """Average and Lp pooling: as max, but where torch's own 3-D average pooling
    refuses an input smaller than the window, so does the torch form of padding."""
    plan = sliding_plan(params, shape)
    w = plan.windows
    assert w is not None
    if len(w.kernel) == 3 and w.torch_form and not w.input_holds_window:
        raise InvalidParameters.at(
            ("kernel_size",),
            f"the input's spatial size {list(w.spatial)} is smaller than the window {list(w.kernel)}; "
            "torch's 3-D average pooling refuses that even with padding ([begin, end] pairs pool it)",
        )
    if not w.undilated:
        plan = replace(plan, work=plan.work + _dilated_sum_work(w, math.prod(shape[: -len(w.out)])))
    return plan


# ---------------------------------------------------------------- adaptive, global, fractional, unpooling


def adaptive_plan(params: AdaptiveAvgParams, shape: Shape) -> Plan:
    """The work: every cell of every window; window i of n over L cells spans
    [floor(i * L / n), ceil((i + 1) * L / n)), at most ceil(L / n) + 1 cells."""
    rank = len(params.output_size)
    spatial = shape[-rank:]
    sizes = tuple(s if s is not None else inp for s, inp in zip(params.output_size, spatial, strict=True))
    window = math.prod(-(-size // out) + 1 for size, out in zip(spatial, sizes, strict=True))
    lead = math.prod(shape[:-rank])
    return Plan(_with_sizes(shape, sizes), lead * (math.prod(sizes) * window + math.prod(spatial)), sizes=sizes)


def global_plan(params: PoolParams, shape: Shape) -> Plan:
    sizes = (1,) * (len(shape) - 2)
    return Plan(_with_sizes(shape, sizes), math.prod(shape), sizes=sizes)


def fractional_plan(params: FractionalParams, shape: Shape) -> Plan:
    rank = len(params.kernel_size)
    spatial = shape[-rank:]
    if params.output_size is not None and params.output_ratio is None:
        sizes, given = list(params.output_size), "output_size"
    elif params.output_ratio is not None and params.output_size is None:
        sizes = [int(size * ratio) for size, ratio in zip(spatial, params.output_ratio, strict=True)]
        given = "output_ratio"
    else:
        raise InvalidParameters.at(("output_size",), "give exactly one of output_size and output_ratio")
    for dim, (size, out, kernel) in enumerate(zip(spatial, sizes, params.kernel_size, strict=True)):
        if out < 1:
            raise InvalidParameters.at(
                (given,), f"the output would be empty in spatial dimension {dim} (input size {size})"
            )
        # torch allows the last window to end at the border in 2-D but not in 3-D.
        reach = out + kernel - 1 if rank == 2 else out + kernel
        if reach > size:
            bound = "exceeds" if rank == 2 else "reaches"
            raise InvalidParameters.at(
                (given,),
                f"spatial dimension {dim}: output size {out} plus kernel size {kernel} minus 1 "
                f"{bound} the input size {size}",
            )
    lead = math.prod(shape[:-rank])
    work = lead * (math.prod(sizes) * math.prod(params.kernel_size) + math.prod(spatial))
    return Plan(_with_sizes(shape, sizes), work, sizes=tuple(sizes))


def unpool_plan(params: UnpoolParams, shape: Shape) -> Plan:
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
                raise InvalidParameters.at(
                    ("output_size",), f"a full output_size must start with the input's {list(shape[:-rank])}"
                )
            sizes = sizes[-rank:]
        elif len(sizes) != rank:
            raise InvalidParameters.at(
                ("output_size",), f"output_size has {rank} spatial sizes or {len(shape)} full-shape entries"
            )
        for d in range(rank):
            if not default[d] - stride[d] < sizes[d] < default[d] + stride[d]:
                raise InvalidParameters.at(
                    ("output_size",),
                    f"output_size in spatial dimension {d} must lie strictly between "
                    f"{default[d] - stride[d]} and {default[d] + stride[d]}",
                )
    if min(sizes) < 1:
        raise InvalidParameters.at(("padding",), f"the unpooled output would be empty (size {sizes})")
    lead = math.prod(shape[:-rank])
    # Zeros for the output, then each input element checked and scattered.
    return Plan(_with_sizes(shape, sizes), lead * (math.prod(sizes) + 2 * math.prod(spatial)), sizes=tuple(sizes))
