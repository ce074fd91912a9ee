"""Where batch and channels sit: the request's layout and torch's `(N, C, *spatial)`.

Kernels see only the canonical form; a `Layout` turns a request's shape and
tensors into it and the results back: unbatched `(C, *spatial)` gains and
loses a batch of one, `channels_last` moves C to the end and back, global
ops without `keepdims` drop their pooled dimensions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class Layout:
    rank: int
    batched: bool
    channels_last: bool
    keepdims: bool = True

    def canonical_shape(self, shape: Shape) -> Shape:
        if self.channels_last:
            shape = (*shape[: -1 - self.rank], shape[-1], *shape[-1 - self.rank : -1])
        return shape if self.batched else (1, *shape)

    def canonical(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.batched:
            tensor = tensor.unsqueeze(0)
        return tensor.movedim(-1, 1) if self.channels_last else tensor

    def present_shape(self, shape: Shape) -> Shape:
        """The shape a result of canonical `shape` has in this layout."""
        if not self.keepdims:
            shape = shape[:2]
        elif self.channels_last:
            shape = (shape[0], *shape[2:], shape[1])
        return shape if self.batched else shape[1:]

    def present(self, tensor: torch.Tensor) -> torch.Tensor:
        if not self.keepdims:
            tensor = tensor.flatten(1)
        elif self.channels_last:
            tensor = tensor.movedim(1, -1)
        return tensor if self.batched else tensor.squeeze(0)


def global_indices(indices: torch.Tensor, input_shape: Shape) -> torch.Tensor:
    """Plane indices of a canonical result -> flat indices into the whole canonical input (ONNX)."""
    batch, channels = input_shape[:2]
    plane = 1
    for size in input_shape[2:]:
        plane *= size
    offsets = torch.arange(batch * channels, dtype=torch.int64, device=indices.device) * plane
    return indices + offsets.reshape(batch, channels, *([1] * (indices.dim() - 2)))
