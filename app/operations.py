"""Every pooling operation, declared once: names, ranks, parameters and examples.

Families × ranks build `OPERATIONS`, from which the routes, their OpenAPI
schemas and examples, `GET /pool`, the Python client's methods and the tests
are generated. It needs no torch, so the client can use it too; the kernels
that compute each family are attached in `app.catalogue`. Adding an op is an
entry here and its kernels there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from app import examples
from app.codecs import DTYPES, FLOAT_DTYPES
from app.params import PoolParams, build_params_model

SLIDING = ("kernel_size", "stride")


@dataclass(frozen=True)
class Family:
    name: str
    ranks: tuple[int, ...]
    reference: str  # torch function, `{}` for the rank
    summary: str
    fields: tuple[str, ...]
    dtypes: tuple[str, ...] = FLOAT_DTYPES
    has_indices: bool = False  # argmax indices on request
    extra_tensors: tuple[str, ...] = ()  # tensors besides `input`
    examples: Callable[[int], dict[str, dict[str, Any]]] = field(default=lambda rank: {})
    meaning: str = ""  # what it computes and what it is for, for the docs


@dataclass(frozen=True)
class Operation:
    name: str
    family: Family
    rank: int
    params: type[PoolParams]

    @property
    def reference(self) -> str:
        return "torch.nn.functional." + self.family.reference.format(self.rank)

    @property
    def method(self) -> str:
        """The op's name as a Python identifier (the client's method)."""
        return self.name.replace("-", "_")


FAMILIES: tuple[Family, ...] = (
    Family(
        "max",
        (1, 2, 3),
        "max_pool{}d",
        "Max pooling",
        (*SLIDING, "padding", "dilation", "ceil_mode", "return_indices", "indices_layout"),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.max_examples,
        meaning=(
            "Each window keeps only its largest value: the strongest response of a feature survives while its"
            " exact position within the window is forgotten, which makes the map smaller and slightly shift-"
            "invariant. The argmax `indices` say where each maximum came from (what max-unpooling needs)."
        ),
    ),
    Family(
        "avg",
        (1, 2, 3),
        "avg_pool{}d",
        "Average pooling",
        (*SLIDING, "padding", "dilation", "ceil_mode", "count_include_pad", "divisor_override"),
        examples=examples.avg_examples,
        meaning=(
            "Each window is replaced by the mean of its cells: every value contributes, so it smooths and "
            "mixes rather than selects, and keeps the overall level of the map."
        ),
    ),
    Family(
        "lp",
        (1, 2, 3),
        "lp_pool{}d",
        "Power-average (Lp) pooling",
        ("norm_type", *SLIDING, "padding", "dilation", "ceil_mode", "absolute"),
        examples=examples.lp_examples,
        meaning=(
            "The Lp norm of each window, (sum of x^p)^(1/p): p = 1 is a sum, large p approaches max, p = "
            "Infinity is max |x|; a tunable blend between average and max pooling."
        ),
    ),
    Family(
        "adaptive-max",
        (1, 2, 3),
        "adaptive_max_pool{}d",
        "Adaptive max pooling to a fixed output size",
        ("adaptive_output_size", "return_indices", "indices_layout"),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.adaptive_max_examples,
        meaning=(
            "Max pooling with windows chosen so the output has a given size whatever the input size: window i"
            " spans [floor(i·L/n), ceil((i+1)·L/n))."
        ),
    ),
    Family(
        "adaptive-avg",
        (1, 2, 3),
        "adaptive_avg_pool{}d",
        "Adaptive average pooling to a fixed output size",
        ("adaptive_output_size",),
        examples=examples.adaptive_avg_examples,
        meaning="Average pooling with windows chosen so the output has a given size whatever the input size.",
    ),
    Family(
        "global-max",
        (1, 2, 3),
        "adaptive_max_pool{}d",
        "Global max pooling: each channel to one value",
        ("return_indices", "indices_layout", "keepdims"),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.global_examples,
        meaning=(
            "The largest value of each channel over all its positions: one number per feature map, whatever its size."
        ),
    ),
    Family(
        "global-avg",
        (1, 2, 3),
        "adaptive_avg_pool{}d",
        "Global average pooling: each channel to one value",
        ("keepdims",),
        examples=examples.global_examples,
        meaning=(
            "The mean of each channel over all its positions: one number per feature map. Ahead of a "
            "classifier it replaces flattening and a large dense layer: no weights, any input size, less "
            "overfitting."
        ),
    ),
    Family(
        "fractional-max",
        (2, 3),
        "fractional_max_pool{}d",
        "Fractional max pooling with pseudo-random windows",
        ("kernel_size", "fractional_output_size", "output_ratio", "return_indices", "indices_layout", "random_seed"),
        has_indices=True,
        examples=examples.fractional_examples,
        meaning=(
            "Max pooling by a non-integer factor: pseudo-random window sizes of 1 or 2 steps, fixed by "
            "`random_seed`, reduce the map by any ratio."
        ),
    ),
    Family(
        "max-unpool",
        (1, 2, 3),
        "max_unpool{}d",
        "Max unpooling: the inverse of max pooling, zeros elsewhere",
        ("indices", *SLIDING, "unpool_padding", "unpool_output_size", "indices_layout"),
        dtypes=DTYPES,
        extra_tensors=("indices",),
        examples=examples.unpool_examples,
        meaning=(
            "The partial inverse of max pooling: each value goes back to the position its `indices` name, "
            "zeros elsewhere."
        ),
    ),
)


def _build() -> dict[str, Operation]:
    operations = {}
    for family in FAMILIES:
        for rank in family.ranks:
            name = f"{family.name}{rank}d"
            operations[name] = Operation(name, family, rank, build_params_model(name, rank, family.fields))
    return operations


OPERATIONS: dict[str, Operation] = _build()
