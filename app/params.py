"""Pydantic models of the pooling parameters: one typed class per family, made
per rank from one field table.

Each family's class (`MaxParams`, `AvgParams`, ...) declares its fields with the
types the kernels read, and the per-request behaviour they imply (whether the
pooled dimensions are kept, whether a seed is drawn, whether indices are
wanted). Every field's validation and schema is declared once in `FIELDS` as a
function of the spatial rank; `params_model` builds an operation's model from
its family's class and those. Validation is strict (no `"2"` for 2, no `true`
for 1) and an unknown field is an error, so a typo such as `kernal_size` is
never ignored.

Spatial parameters accept an int or one int per spatial dimension and are
normalised to a list of `rank` ints (torch's `_ntuple`).
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, create_model
from pydantic_core import PydanticCustomError

from app.codecs import ENCODINGS
from app.dtypes import DTYPES

TENSOR_SCHEMA: dict[str, Any] = {
    "description": (
        "A tensor: a nested array of numbers in (N, C, *spatial) or (C, *spatial) layout, "
        '{"data": [...], "shape": [...], "dtype": "..."}, or {"npy_base64": "..."}. '
        'Non-finite values are the strings "NaN", "Infinity" and "-Infinity".'
    ),
    "anyOf": [
        {"type": "array", "items": {}},
        {
            "type": "object",
            "properties": {
                "data": {"type": "array", "items": {"anyOf": [{"type": "number"}, {"type": "string"}]}},
                "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                "dtype": {"type": "string", "enum": list(DTYPES)},
            },
            "required": ["data", "shape"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {"npy_base64": {"type": "string", "contentEncoding": "base64"}},
            "required": ["npy_base64"],
            "additionalProperties": False,
        },
    ],
}
# Tensors are decoded by the codecs, not by pydantic: the field only carries
# the schema for the docs, and validating `Any` costs nothing per element.
TensorField = Annotated[Any, WithJsonSchema(TENSOR_SCHEMA)]


def _per_dimension(rank: int, item: dict[str, Any], what: str, optional: bool) -> Callable[[Any], Any]:
    def broadcast(value: Any) -> Any:
        if value is None and optional:
            return None
        if isinstance(value, list):
            if len(value) != rank:
                raise PydanticCustomError(
                    "per_dimension", "expected {what}, or a list of {rank}", {"what": what, "rank": rank}
                )
            return value
        if _is_scalar(value, item):
            return [value] * rank
        raise PydanticCustomError("per_dimension", "expected {what}, or a list of {rank}", {"what": what, "rank": rank})

    return broadcast


def _is_scalar(value: Any, item: dict[str, Any]) -> bool:
    if isinstance(value, bool):
        return False
    if value is None:
        return item.get("nullable", False)
    if item["type"] == "integer":
        return isinstance(value, int)
    return isinstance(value, (int, float))


def spatial(rank: int, item_type: Any, item_schema: dict[str, Any], what: str, optional: bool = False) -> Any:
    """An int (or float) for every spatial dimension, or a list of `rank` of them; `None` too if `optional`."""
    schema = {k: v for k, v in item_schema.items() if k != "nullable"}
    if item_schema.get("nullable"):
        schema = {"anyOf": [schema, {"type": "null"}]}
    choices = [schema, {"type": "array", "items": schema, "minItems": rank, "maxItems": rank}]
    if optional:
        choices.append({"type": "null"})
    return Annotated[
        list[item_type] | None if optional else list[item_type],
        BeforeValidator(_per_dimension(rank, item_schema, what, optional)),
        WithJsonSchema({"anyOf": choices}),
    ]


# Sizes beyond any tensor's are refused here, where they are not yet anyone's arithmetic.
LARGEST = 2**40
PositiveInt = Annotated[int, Field(ge=1, le=LARGEST)]
NonNegativeInt = Annotated[int, Field(ge=0, le=LARGEST)]
OptionalSize = Annotated[int, Field(ge=1)] | None
Ratio = Annotated[float, Field(gt=0, lt=1)]


def _norm_type(value: Any) -> Any:
    if value == "Infinity":
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PydanticCustomError("norm_type", 'norm_type is a positive number or "Infinity"')
    return float(value)


NormType = Annotated[
    float,
    BeforeValidator(_norm_type),
    Field(gt=0),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "Infinity"}]}),
]


def _spatial_ints(rank: int, minimum: int, optional: bool = False) -> Any:
    what = "a positive integer" if minimum else "a non-negative integer"
    item = PositiveInt if minimum else NonNegativeInt
    return spatial(rank, item, {"type": "integer", "minimum": minimum}, what, optional)


PADDING_FORMS = ("valid", "same", "same_lower")


def _window_padding(rank: int) -> Any:
    """torch's ints, a string form, or one ONNX `[begin, end]` pair per spatial dimension."""
    problem = "padding is an int, a list of {rank} ints, one of {forms}, or a list of {rank} [begin, end] pairs"

    def normalise(value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool):
            return [value] * rank
        if (isinstance(value, str) and value in PADDING_FORMS) or (isinstance(value, list) and len(value) == rank):
            return value
        raise PydanticCustomError("padding", problem, {"rank": rank, "forms": ", ".join(PADDING_FORMS)})

    pair = Annotated[list[NonNegativeInt], Field(min_length=2, max_length=2)]
    integer = {"type": "integer", "minimum": 0}
    schema = {
        "anyOf": [
            integer,
            {"type": "array", "items": integer, "minItems": rank, "maxItems": rank},
            {"enum": list(PADDING_FORMS)},
            {
                "type": "array",
                "items": {"type": "array", "items": integer, "minItems": 2, "maxItems": 2},
                "minItems": rank,
                "maxItems": rank,
            },
        ]
    }
    return Annotated[
        list[NonNegativeInt] | Literal[PADDING_FORMS] | list[pair],  # type: ignore[valid-type]
        BeforeValidator(normalise),
        WithJsonSchema(schema),
    ]


def _required(annotation: Any, description: str) -> tuple[Any, Any]:
    return annotation, Field(..., description=description)


def _optional(annotation: Any, default: Any, description: str) -> tuple[Any, Any]:
    return annotation, Field(default, description=description)


# key -> rank -> (annotation, FieldInfo); a key is the field's name, or a family's
# own variant of it (`unpool_padding` is max-unpool's `padding`).
FIELDS: dict[str, Callable[[int], tuple[Any, Any]]] = {
    "kernel_size": lambda r: _required(_spatial_ints(r, 1), "Window size: an int, or one per spatial dimension."),
    "stride": lambda r: _optional(
        _spatial_ints(r, 1, optional=True), None, "Step between windows; default: kernel_size."
    ),
    "padding": lambda r: _optional(
        _window_padding(r),
        0,
        "Padding: an int or one per spatial dimension on both sides, at most half the kernel (torch); "
        '"valid" (none); "same" (ceil(size / stride) outputs, the odd cell at the end: ONNX SAME_UPPER, Keras); '
        '"same_lower" (the odd cell at the start); or one [begin, end] pair per spatial dimension (ONNX pads). '
        "Padded cells never win a max.",
    ),
    "unpool_padding": lambda r: _optional(
        _spatial_ints(r, 0), 0, "The padding of the max pooling being inverted: an int or one per spatial dimension."
    ),
    "dilation": lambda r: _optional(_spatial_ints(r, 1), 1, "Spacing between window elements."),
    "absolute": lambda r: _optional(
        bool,
        False,
        "false: torch's lp_pool, sum(x**p)**(1/p) with no absolute value (where torch can run it, exactly "
        "its result); true: ONNX's LpPool, sum(|x|**p)**(1/p) over the cells each window covers.",
    ),
    "indices_layout": lambda r: _optional(
        Literal["plane", "global"],
        "plane",
        "plane: flat index within each (*spatial) plane (torch); global: flat index into the whole "
        "(N, C, *spatial) input (ONNX MaxPool's Indices).",
    ),
    "keepdims": lambda r: _optional(
        bool, True, "Keep the pooled dimensions as size 1; false returns (N, C) (Keras' default)."
    ),
    "ceil_mode": lambda r: _optional(bool, False, "Round the output size up instead of down."),
    "return_indices": lambda r: _optional(bool, False, "Also return the argmax positions as `indices`."),
    "count_include_pad": lambda r: _optional(
        bool | None,
        None,
        "Count padded cells in the average's divisor. Default: true for int padding (torch), "
        "false for the string forms and [begin, end] pairs (Keras, ONNX).",
    ),
    "divisor_override": lambda r: _optional(
        PositiveInt | None, None, "Divide every window's sum by this number instead of its size."
    ),
    "norm_type": lambda r: _required(NormType, 'The power p of the Lp norm: a positive number or "Infinity".'),
    "adaptive_output_size": lambda r: _required(
        spatial(r, OptionalSize, {"type": "integer", "minimum": 1, "nullable": True}, "a positive integer or null"),
        "Output spatial size: an int, or one per spatial dimension; null keeps that input size.",
    ),
    "fractional_output_size": lambda r: _optional(
        _spatial_ints(r, 1, optional=True),
        None,
        "Output spatial size. Give exactly one of output_size and output_ratio.",
    ),
    "output_ratio": lambda r: _optional(
        spatial(r, Ratio, {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}, "a number in (0, 1)", True),
        None,
        "Output size as a fraction of the input size, each in (0, 1).",
    ),
    "random_seed": lambda r: _optional(
        Annotated[int, Field(ge=0, lt=2**63)] | None,
        None,
        "Seed of the random window offsets; the same seed gives the same output. Default: one is drawn and returned.",
    ),
    "unpool_output_size": lambda r: _optional(
        Annotated[
            list[NonNegativeInt] | None,
            BeforeValidator(lambda v: [v] * r if isinstance(v, int) and not isinstance(v, bool) else v),
        ],
        None,
        "Output size: an int, the spatial sizes, or the full shape; default (in - 1) * stride - 2 * padding + kernel.",
    ),
    "indices": lambda r: _optional(
        TensorField,
        None,
        "The argmax indices from the max pooling, shaped as input, in the layout indices_layout names.",
    ),
}


IndicesLayout = Literal["plane", "global"]
P = TypeVar("P", bound="PoolParams")


class PoolParams(BaseModel):
    """Fields every operation takes, and the per-request behaviour a family may add."""

    model_config = ConfigDict(strict=True, extra="forbid", validate_default=True)
    # A field whose validation is a family's own variant of a shared name.
    field_keys: ClassVar[dict[str, str]] = {}

    input: TensorField = Field(None, description="The tensor to pool (required unless dry_run gives input_shape).")
    dtype: Literal[DTYPES] = Field(  # type: ignore[valid-type]
        "float32", description="Element type of a nested or flat input; a .npy input carries its own."
    )
    output_encoding: Literal[ENCODINGS] | None = Field(  # type: ignore[valid-type]
        None, description="How tensors are encoded in a JSON response; default: as the input was."
    )
    data_format: Literal["channels_first", "channels_last"] = Field(
        "channels_first",
        description="channels_first: (N, C, *spatial) as torch; channels_last: (N, *spatial, C) as Keras, "
        "for the input and the result alike.",
    )
    dry_run: bool = Field(
        False,
        description="Validate and answer the output's shape, dtype and effective [begin, end] padding "
        "without computing; give input_shape instead of input.",
    )
    input_shape: list[Annotated[int, Field(ge=0)]] | None = Field(
        None, description="With dry_run: the shape of the input that would be sent."
    )

    def keeps_dims(self) -> bool:
        """Whether the result keeps the pooled dimensions (global ops may drop them)."""
        return True

    def wants_indices(self) -> bool:
        return False

    def global_indices(self) -> bool:
        """Whether indices count over the whole input (ONNX) rather than each plane."""
        return False

    def seed(self) -> int | None:
        return None

    def seeded(self: P) -> P:
        """These parameters with whatever the request left to the server drawn."""
        return self


class IndicesParams(PoolParams):
    return_indices: bool
    indices_layout: IndicesLayout

    def wants_indices(self) -> bool:
        return self.return_indices

    def global_indices(self) -> bool:
        return self.indices_layout == "global"


class WindowParams(PoolParams):
    kernel_size: list[int]
    stride: list[int] | None
    padding: list[int] | str | list[list[int]]
    dilation: list[int]
    ceil_mode: bool


class MaxParams(IndicesParams, WindowParams):
    pass


class AvgParams(WindowParams):
    count_include_pad: bool | None
    divisor_override: int | None


class LpParams(WindowParams):
    norm_type: float
    absolute: bool


class AdaptiveAvgParams(PoolParams):
    field_keys: ClassVar[dict[str, str]] = {"output_size": "adaptive_output_size"}
    output_size: list[int | None]


class AdaptiveMaxParams(IndicesParams, AdaptiveAvgParams):
    pass


class GlobalAvgParams(PoolParams):
    keepdims: bool

    def keeps_dims(self) -> bool:
        return self.keepdims


class GlobalMaxParams(IndicesParams, GlobalAvgParams):
    pass


class FractionalParams(IndicesParams):
    field_keys: ClassVar[dict[str, str]] = {"output_size": "fractional_output_size"}
    kernel_size: list[int]
    output_size: list[int] | None
    output_ratio: list[float] | None
    random_seed: int | None

    def seed(self) -> int | None:
        return self.random_seed

    def seeded(self) -> FractionalParams:
        if self.random_seed is not None:
            return self
        return self.model_copy(update={"random_seed": secrets.randbits(63)})


class UnpoolParams(PoolParams):
    field_keys: ClassVar[dict[str, str]] = {"padding": "unpool_padding", "output_size": "unpool_output_size"}
    indices: TensorField
    kernel_size: list[int]
    stride: list[int] | None
    padding: list[int]
    output_size: list[int] | None
    indices_layout: IndicesLayout

    def global_indices(self) -> bool:
        return self.indices_layout == "global"


def params_model(op: str, rank: int, family: type[P]) -> type[P]:
    """The model of one operation: its family's fields, validated for `rank`."""
    own = [name for name in family.model_fields if name not in PoolParams.model_fields]
    fields = {name: FIELDS[family.field_keys.get(name, name)](rank) for name in own}
    title = "".join(part.capitalize() for part in op.replace("-", " ").split()) + "Params"
    model: type[P] = create_model(title, __base__=family, **fields)  # type: ignore[call-overload]
    return model
