"""Every pooling operation, declared once: each family is one record, and
families × ranks build `OPERATIONS`.

A family's record carries all the service knows of it: its names and meaning
for the docs, its typed parameters (whose per-request behaviour, a seed drawn
or the pooled dimensions dropped, `app.params` defines), the dtypes it takes,
its plan (`app.planning`: output shape, padding and work from shapes alone) and its
compute function (`app.kernels`, on torch tensors). The routes, their OpenAPI
schemas and examples, `GET /pool`, the protocol's models, the Python client's
methods and the tests are generated from the table; the tests keep each
family's sample cases, reference and error cases beside it (`tests/families.py`).

The table imports no torch: the compute functions are named here and imported
when first called, so the client, the gate and the docs can use it freely.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from app import examples, planning
from app.dtypes import DTYPES, FLOAT_DTYPES
from app.params import (
    AdaptiveAvgParams,
    AdaptiveMaxParams,
    AvgParams,
    FractionalParams,
    GlobalAvgParams,
    GlobalMaxParams,
    LpParams,
    MaxParams,
    PoolParams,
    UnpoolParams,
    params_model,
)
from app.planning import Plan, Shape

if TYPE_CHECKING:
    import torch

P = TypeVar("P", bound=PoolParams)
Result = tuple["torch.Tensor", "torch.Tensor | None"]
PlanFn = Callable[[P, Shape], Plan]
ComputeFn = Callable[["torch.Tensor", P, Plan, "dict[str, torch.Tensor]"], Result]
BeforePiecesFn = Callable[["torch.Tensor", P, Plan, "dict[str, torch.Tensor]"], "dict[str, torch.Tensor]"]


class Kernel:
    """A compute function of `app.kernels`, imported when first called."""

    __slots__ = ("_function", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._function: Callable[..., Any] | None = None

    def resolve(self) -> Callable[..., Any]:
        if self._function is None:
            self._function = getattr(importlib.import_module("app.kernels"), self.name)
        return self._function

    def __call__(self, x: torch.Tensor, params: Any, plan: Plan, extra: dict[str, torch.Tensor]) -> Any:
        return self.resolve()(x, params, plan, extra)

    def __repr__(self) -> str:
        return f"Kernel({self.name!r})"


F = TypeVar("F")


def _resolved(function: F) -> F:
    """A `Kernel` as the function it names; anything else as it is."""
    return function.resolve() if isinstance(function, Kernel) else function  # type: ignore[return-value]


@dataclass(frozen=True)
class Family(Generic[P]):
    name: str
    ranks: tuple[int, ...]
    reference: str  # torch function, `{}` for the rank
    summary: str
    params: type[P]
    plan: PlanFn[P]
    compute: ComputeFn[P]
    dtypes: tuple[str, ...] = FLOAT_DTYPES
    has_indices: bool = False  # argmax indices on request
    extra_tensors: tuple[str, ...] = ()  # tensors besides `input`
    # Before the planes are split into pieces: what depends on the whole tensor, as
    # extra tensors that are split along with it (`app.kernels`).
    before_pieces: BeforePiecesFn[P] | None = None
    # Whether small requests of one plan may be pooled in one call (`app.batching`): true
    # where each plane's result is bit for bit the same wherever the plane lies in the
    # tensor. Not Lp: torch's vectorised pow rounds differently from its scalar tail.
    batchable: bool = False
    examples: Callable[[int], dict[str, dict[str, Any]]] = field(default=lambda rank: {})
    meaning: str = ""  # what it computes and what it is for, for the docs

    def __post_init__(self) -> None:
        if self.batchable and (self.extra_tensors or self.before_pieces is not None):
            # A batch is pooled with its first request's extra tensors and whole-tensor step.
            raise ValueError(f"{self.name}: a family with tensors besides the input cannot be batched")


@dataclass(frozen=True)
class Operation:
    name: str
    family: Family[Any]
    rank: int
    params: type[PoolParams]  # the family's parameters, validated for this rank

    @property
    def reference(self) -> str:
        return "torch.nn.functional." + self.family.reference.format(self.rank)

    @cached_property
    def boolean_fields(self) -> frozenset[str]:
        """The parameters that are booleans (a query string may spell them `1`, `yes`, `on`...)."""
        return frozenset(
            name for name, info in self.params.model_fields.items() if info.annotation in (bool, bool | None)
        )

    @cached_property
    def kernel(self) -> ComputeFn[Any]:
        """The family's compute function itself, imported on first use."""
        return _resolved(self.family.compute)

    @cached_property
    def before_pieces(self) -> BeforePiecesFn[Any] | None:
        """The family's whole-tensor step, if it has one, imported on first use."""
        return _resolved(self.family.before_pieces)

    @property
    def method(self) -> str:
        """The op's name as a Python identifier (the client's method)."""
        return self.name.replace("-", "_")


FAMILIES: tuple[Family[Any], ...] = (
    Family(
        "max",
        (1, 2, 3),
        "max_pool{}d",
        "Max pooling",
        MaxParams,
        planning.sliding_plan,
        Kernel("max_compute"),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.max_examples,
        batchable=True,
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
        AvgParams,
        planning.averaging_plan,
        Kernel("avg_compute"),
        examples=examples.avg_examples,
        batchable=True,
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
        LpParams,
        planning.averaging_plan,
        Kernel("lp_compute"),
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
        AdaptiveMaxParams,
        planning.adaptive_plan,
        Kernel("adaptive_max_compute"),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.adaptive_max_examples,
        batchable=True,
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
        AdaptiveAvgParams,
        planning.adaptive_plan,
        Kernel("adaptive_avg_compute"),
        examples=examples.adaptive_avg_examples,
        batchable=True,
        meaning="Average pooling with windows chosen so the output has a given size whatever the input size.",
    ),
    Family(
        "global-max",
        (1, 2, 3),
        "adaptive_max_pool{}d",
        "Global max pooling: each channel to one value",
        GlobalMaxParams,
        planning.global_plan,
        Kernel("global_max_compute"),
        dtypes=DTYPES,
        has_indices=True,
        examples=examples.global_examples,
        batchable=True,
        meaning=(
            "The largest value of each channel over all its positions: one number per feature map, whatever its size."
        ),
    ),
    Family(
        "global-avg",
        (1, 2, 3),
        "adaptive_avg_pool{}d",
        "Global average pooling: each channel to one value",
        GlobalAvgParams,
        planning.global_plan,
        Kernel("global_avg_compute"),
        examples=examples.global_examples,
        batchable=True,
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
        FractionalParams,
        planning.fractional_plan,
        Kernel("fractional_compute"),
        has_indices=True,
        before_pieces=Kernel("fractional_draw"),
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
        UnpoolParams,
        planning.unpool_plan,
        Kernel("unpool_compute"),
        dtypes=DTYPES,
        extra_tensors=("indices",),
        before_pieces=Kernel("unpool_positions"),
        examples=examples.unpool_examples,
        meaning=(
            "The partial inverse of max pooling: each value goes back to the position its `indices` name, "
            "zeros elsewhere."
        ),
    ),
)


def build_operations(families: Iterable[Family[Any]]) -> dict[str, Operation]:
    """Every rank of every family as an operation named `{family}{rank}d`."""
    operations = {}
    for family in families:
        for rank in family.ranks:
            name = f"{family.name}{rank}d"
            operations[name] = Operation(name, family, rank, params_model(name, rank, family.params))
    return operations


OPERATIONS: dict[str, Operation] = build_operations(FAMILIES)
