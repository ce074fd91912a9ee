"""Independent computations the tests compare the service with: element-by-element
numpy where torch has no kernel, sample data, and window arithmetic written
out cell by cell. Each family's sample cases and torch reference are in
`tests.families`."""

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
    """One sample request: parameters and the input's shape."""

    params: dict[str, Any]
    spatial: tuple[int, ...]
    batch: int | None = 2  # None: unbatched (C, *spatial)
    channels: int = 3

    def shape(self) -> tuple[int, ...]:
        lead = (self.channels,) if self.batch is None else (self.batch, self.channels)
        return (*lead, *self.spatial)


def fractional_samples(seed: int, batch: int, channels: int, rank: int, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, channels, rank, generator=generator, dtype=torch.float64).to(dtype)


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
