"""What each family of pooling computes, on batched `(N, C, *spatial)` torch tensors.

Each family has two functions:

- `*_shape(params, shape)`: the output shape for an input shape, or an
  `InvalidParameters` that says, in this service's words, why torch would
  refuse the parameters for this tensor. It runs before any computation, so
  the output's size can be checked against the limits first.
- `*_compute(x, params, extra)`: the result `(output, indices or None)`.

They know nothing about HTTP or encodings.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from app.errors import InvalidParameters

Shape = tuple[int, ...]
Result = tuple[torch.Tensor, torch.Tensor | None]


def _fail(param: str, msg: str) -> InvalidParameters:
    return InvalidParameters.at(("body", param), msg)


def _spatial(shape: Shape, rank: int) -> Shape:
    return shape[-rank:]


def _by_rank(name: str) -> dict[int, Callable[..., Any]]:
    return {rank: getattr(F, name.format(rank)) for rank in (1, 2, 3) if hasattr(F, name.format(rank))}


_MAX = _by_rank("max_pool{}d")
_AVG = _by_rank("avg_pool{}d")
_LP = _by_rank("lp_pool{}d")
_ADAPTIVE_MAX = _by_rank("adaptive_max_pool{}d")
_ADAPTIVE_AVG = _by_rank("adaptive_avg_pool{}d")
_FRACTIONAL = _by_rank("fractional_max_pool{}d")


# ---------------------------------------------------------------- sliding windows: max, avg, lp


def window_count(size: int, kernel: int, stride: int, pad: int, dilation: int, ceil_mode: bool) -> int:
    """Windows along one dimension, by torch's rule (`pooling_output_shape`).

    Under ceil_mode a last window that would start inside the end padding is dropped.
    """
    span = size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    count = span // stride + 1
    if ceil_mode and (count - 1) * stride >= size + pad:
        count -= 1
    return count


def sliding_shape(params: Any, shape: Shape) -> Shape:
    rank = len(params.kernel_size)
    kernel = params.kernel_size
    stride = params.stride or kernel
    padding = getattr(params, "padding", [0] * rank)
    dilation = getattr(params, "dilation", [1] * rank)
    for dim in range(rank):
        if padding[dim] > kernel[dim] // 2:
            raise _fail(
                "padding",
                f"padding {padding[dim]} in spatial dimension {dim} exceeds half the kernel size {kernel[dim]}",
            )
    out = []
    for dim, size in enumerate(_spatial(shape, rank)):
        count = window_count(size, kernel[dim], stride[dim], padding[dim], dilation[dim], params.ceil_mode)
        if count < 1:
            reach = dilation[dim] * (kernel[dim] - 1) + 1
            raise _fail(
                "kernel_size",
                f"the output would be empty: spatial dimension {dim} has size {size} "
                f"(+{2 * padding[dim]} padding) but the window spans {reach}",
            )
        out.append(count)
    return (*shape[:-rank], *out)


def max_compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
    rank = len(p.kernel_size)
    # torch's max_pool1d lacks integer kernels unless it returns indices.
    with_indices = p.return_indices or (rank == 1 and not x.is_floating_point())
    result = _MAX[rank](x, p.kernel_size, p.stride or p.kernel_size, p.padding, p.dilation, p.ceil_mode, with_indices)
    if with_indices:
        out, indices = result
        return out, indices if p.return_indices else None
    return result, None


def avg_compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
    rank = len(p.kernel_size)
    stride = p.stride or p.kernel_size
    if rank == 1:
        # avg_pool1d has no divisor_override; torch itself runs it as a 2-D pool of height 1.
        out = F.avg_pool2d(
            x.unsqueeze(-2),
            (1, p.kernel_size[0]),
            (1, stride[0]),
            (0, p.padding[0]),
            p.ceil_mode,
            p.count_include_pad,
            p.divisor_override,
        )
        return out.squeeze(-2), None
    return _AVG[rank](x, p.kernel_size, stride, p.padding, p.ceil_mode, p.count_include_pad, p.divisor_override), None


def lp_compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
    rank = len(p.kernel_size)
    kernel, stride = p.kernel_size, p.stride or p.kernel_size
    if rank == 1:  # lp_pool1d multiplies by kernel_size, so it must be an int there
        kernel, stride = kernel[0], stride[0]
    return _LP[rank](x, p.norm_type, kernel, stride, p.ceil_mode), None


# ---------------------------------------------------------------- adaptive and global


def adaptive_sizes(params: Any, shape: Shape) -> list[int]:
    rank = len(params.output_size)
    return [
        size if size is not None else inp for size, inp in zip(params.output_size, _spatial(shape, rank), strict=True)
    ]


def adaptive_shape(params: Any, shape: Shape) -> Shape:
    sizes = adaptive_sizes(params, shape)
    return (*shape[: -len(sizes)], *sizes)


def adaptive_max_compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
    sizes = adaptive_sizes(p, tuple(x.shape))
    if p.return_indices:
        out, indices = _ADAPTIVE_MAX[len(sizes)](x, sizes, True)
        return out, indices
    return _ADAPTIVE_MAX[len(sizes)](x, sizes), None


def adaptive_avg_compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
    sizes = adaptive_sizes(p, tuple(x.shape))
    return _ADAPTIVE_AVG[len(sizes)](x, sizes), None


def global_shape(rank: int) -> Callable[[Any, Shape], Shape]:
    def shape_of(params: Any, shape: Shape) -> Shape:
        return (*shape[:-rank], *([1] * rank))

    return shape_of


def global_max_compute(rank: int) -> Callable[[torch.Tensor, Any, dict[str, torch.Tensor]], Result]:
    def compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
        kept = (*x.shape[:2], *([1] * rank))
        if x.is_floating_point():
            out, indices = _ADAPTIVE_MAX[rank](x, 1, True)
        else:
            # Exact for integers, which adaptive max pooling does not take.
            values, positions = x.flatten(2).max(dim=-1)
            out, indices = values.reshape(kept), positions.reshape(kept)
        return out, indices if p.return_indices else None

    return compute


def global_avg_compute(rank: int) -> Callable[[torch.Tensor, Any, dict[str, torch.Tensor]], Result]:
    def compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
        return _ADAPTIVE_AVG[rank](x, 1), None

    return compute


# ---------------------------------------------------------------- fractional


def fractional_sizes(params: Any, shape: Shape) -> list[int]:
    rank = len(params.kernel_size)
    spatial = _spatial(shape, rank)
    if (params.output_size is None) == (params.output_ratio is None):
        raise _fail("output_size", "give exactly one of output_size and output_ratio")
    if params.output_size is not None:
        sizes, given = list(params.output_size), "output_size"
    else:
        sizes, given = (
            [int(size * ratio) for size, ratio in zip(spatial, params.output_ratio, strict=True)],
            "output_ratio",
        )
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
    return sizes


def fractional_shape(params: Any, shape: Shape) -> Shape:
    sizes = fractional_sizes(params, shape)
    return (*shape[: -len(sizes)], *sizes)


def fractional_samples(seed: int, batch: int, channels: int, rank: int) -> torch.Tensor:
    """The window offsets, drawn on the CPU in float64 so a seed means the same on any device."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(batch, channels, rank, generator=generator, dtype=torch.float64)


def fractional_compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
    rank = len(p.kernel_size)
    sizes = fractional_sizes(p, tuple(x.shape))
    samples = fractional_samples(p.random_seed, x.shape[0], x.shape[1], rank).to(device=x.device, dtype=x.dtype)
    out, indices = _FRACTIONAL[rank](x, p.kernel_size, output_size=sizes, return_indices=True, _random_samples=samples)
    return out, indices if p.return_indices else None


# ---------------------------------------------------------------- unpooling


def unpool_sizes(params: Any, shape: Shape) -> list[int]:
    rank = len(params.kernel_size)
    stride = params.stride or params.kernel_size
    spatial = _spatial(shape, rank)
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
    return sizes


def unpool_shape(params: Any, shape: Shape) -> Shape:
    sizes = unpool_sizes(params, shape)
    return (*shape[: -len(sizes)], *sizes)


def unpool_compute(x: torch.Tensor, p: Any, extra: dict[str, torch.Tensor]) -> Result:
    sizes = unpool_sizes(p, tuple(x.shape))
    indices = extra["indices"]
    plane = math.prod(sizes)
    if indices.numel():
        low, high = int(indices.min()), int(indices.max())
        if low < 0 or high >= plane:
            bad = low if low < 0 else high
            raise _fail("indices", f"index {bad} is outside the output plane of {plane} elements")
    flat = x.flatten(2)
    out = torch.zeros((*flat.shape[:2], plane), dtype=x.dtype, device=x.device)
    # scatter_reduce with amax is deterministic where indices repeat (the largest
    # value wins); torch's max_unpool leaves that case unspecified.
    out.scatter_reduce_(2, indices.flatten(2), flat, reduce="amax", include_self=False)
    return out.reshape(*x.shape[:2], *sizes), None
