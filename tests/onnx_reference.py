"""Running one ONNX pooling node through `onnx.reference.ReferenceEvaluator`."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

OPSET = 22


def run_node(op: str, inputs: dict[str, np.ndarray], outputs: tuple[str, ...] = ("Y",), **attributes: Any) -> list:
    def info(name: str, array: np.ndarray | None = None) -> Any:
        kind = (
            TensorProto.INT64
            if (array is not None and array.dtype == np.int64) or name == "Indices"
            else TensorProto.FLOAT
        )
        return helper.make_tensor_value_info(name, kind, None)

    node = helper.make_node(op, list(inputs), list(outputs), **attributes)
    graph = helper.make_graph(
        [node], op, [info(name, array) for name, array in inputs.items()], [info(name) for name in outputs]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    with warnings.catch_warnings():
        # A window with no input cell averages an empty slice there: NaN, which the tests look for.
        warnings.simplefilter("ignore", RuntimeWarning)
        return ReferenceEvaluator(model).run(None, inputs)


def onnx_pads(pairs: list[list[int]]) -> list[int]:
    """[[b1, e1], [b2, e2]] -> ONNX's [b1, b2, e1, e2]."""
    return [b for b, _ in pairs] + [e for _, e in pairs]


def max_pool(x: np.ndarray, **attributes: Any) -> tuple[np.ndarray, np.ndarray]:
    """ONNX MaxPool's (Y, Indices) from the reference's general implementation.

    For unit strides and dilations the evaluator takes an older 2-D-only
    path that misreads `pads` (it takes [b1, b2, e1, e2] as top, bottom,
    left, right) and returns no valid Indices; its general `_max_pool`, which
    it uses for every other stride and dilation, follows the specification."""
    node = helper.make_node("MaxPool", ["X"], ["Y", "Indices"], **attributes)
    graph = helper.make_graph(
        [node],
        "MaxPool",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [
            helper.make_tensor_value_info("Y", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("Indices", TensorProto.INT64, None),
        ],
    )
    evaluator = ReferenceEvaluator(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]))
    op = evaluator.rt_nodes_[0]
    return op._max_pool(x, auto_pad=None, storage_order=0, **attributes)
