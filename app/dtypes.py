"""The element types the service takes, in one table: each dtype's name, the numpy
dtype that carries it in memory, its torch dtype, its Open Inference Protocol
datatype and its kind.

The torch dtype is looked up by name when first asked for, so this table (and
the codecs, the operation table and the client built on it) imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class DType:
    name: str
    carrier: np.dtype[Any]  # bfloat16, which numpy lacks, travels as float32 (exactly)
    protocol: str  # the Open Inference Protocol's datatype
    kind: Literal["float", "int"]
    wire_bytes: int  # bytes per element on the wire (bfloat16: 2, though carried in 4)

    @cached_property
    def torch(self) -> torch.dtype:
        import torch

        dtype: torch.dtype = getattr(torch, self.name)
        return dtype


def _dtype(name: str, protocol: str) -> DType:
    carrier = np.dtype("float32" if name == "bfloat16" else name)
    kind: Literal["float", "int"] = "float" if carrier.kind == "f" else "int"
    return DType(name, carrier, protocol, kind, 2 if name == "bfloat16" else carrier.itemsize)


TABLE: dict[str, DType] = {
    d.name: d
    for d in (
        _dtype("float16", "FP16"),
        _dtype("bfloat16", "BF16"),
        _dtype("float32", "FP32"),
        _dtype("float64", "FP64"),
        _dtype("uint8", "UINT8"),
        _dtype("int8", "INT8"),
        _dtype("int16", "INT16"),
        _dtype("int32", "INT32"),
        _dtype("int64", "INT64"),
    )
}

DTYPES: tuple[str, ...] = tuple(TABLE)
FLOAT_DTYPES: tuple[str, ...] = tuple(name for name, d in TABLE.items() if d.kind == "float")
INT_DTYPES: tuple[str, ...] = tuple(name for name, d in TABLE.items() if d.kind == "int")
BY_PROTOCOL: dict[str, DType] = {d.protocol: d for d in TABLE.values()}
# The service's name for a numpy dtype that arrived in a .npy (bfloat16 never does).
BY_CARRIER: dict[np.dtype[Any], str] = {d.carrier: name for name, d in TABLE.items() if name != "bfloat16"}
