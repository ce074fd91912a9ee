"""Worked examples for the docs page, per family and rank: torch's documented
examples, Keras' and ONNX's, and one for each option beyond torch. Every one is
run by the tests, so none goes stale."""

from __future__ import annotations

import math
from typing import Any

Examples = dict[str, dict[str, Any]]


def _ramp(*shape: int) -> list[Any]:
    """A nested list counting 0, 1, 2, … in the given shape (for examples)."""
    flat = [float(i) for i in range(math.prod(shape))]
    for size in reversed(shape[1:]):
        flat = [flat[i : i + size] for i in range(0, len(flat), size)]  # type: ignore[misc]
    return flat


GRID = [[[[1.0, 1.0, 2.0, 4.0], [5.0, 6.0, 7.0, 8.0], [3.0, 2.0, 1.0, 0.0], [1.0, 2.0, 3.0, 4.0]]]]
# Keras' documented 3×3 map, (1, H, W, 1) channels last.
KERAS_MAP = [[[[1.0], [2.0], [3.0]], [[4.0], [5.0], [6.0]], [[7.0], [8.0], [9.0]]]]
# Keras' pool_size=(2, 2), strides=1, padding="same" in its own layout.
KERAS_SAME = {"input": KERAS_MAP, "kernel_size": 2, "stride": 1, "padding": "same", "data_format": "channels_last"}


def _torch_max_examples(rank: int) -> Examples:
    if rank == 1:
        return {
            "torch-maxpool1d": {
                "summary": "nn.MaxPool1d(3, stride=2) on a (1, 2, 8) ramp, with indices",
                "value": {"input": _ramp(1, 2, 8), "kernel_size": 3, "stride": 2, "return_indices": True},
            }
        }
    if rank == 2:
        return {
            "grid": {
                "summary": "2×2 windows over a 4×4 map, with indices",
                "value": {"input": GRID, "kernel_size": 2, "return_indices": True},
            },
            "torch-maxpool2d": {
                "summary": "nn.MaxPool2d((3, 2), stride=(2, 1)) on a (1, 1, 6, 5) ramp",
                "value": {"input": _ramp(1, 1, 6, 5), "kernel_size": [3, 2], "stride": [2, 1]},
            },
            "flat": {
                "summary": "a flat tensor, answered flat",
                "value": {
                    "input": {"data": [1, 1, 2, 4, 5, 6, 7, 8, 3, 2, 1, 0, 1, 2, 3, 4], "shape": [1, 4, 4]},
                    "kernel_size": 2,
                },
            },
        }
    return {"cube": {"summary": "2×2×2 windows", "value": {"input": _ramp(1, 1, 2, 4, 4), "kernel_size": 2}}}


def max_examples(rank: int) -> Examples:
    examples = _torch_max_examples(rank)
    examples["same"] = {
        "summary": '"same" padding (Keras, ONNX SAME_UPPER): ceil(5 / 2) = 3 outputs per dimension',
        "value": {"input": _ramp(1, 1, *(5,) * rank), "kernel_size": 2, "stride": 2, "padding": "same"},
    }
    if rank == 2:
        examples["onnx-pads"] = {
            "summary": "ONNX pads [1, 0, 0, 1] as [begin, end] pairs, with ONNX's global indices",
            "value": {
                "input": _ramp(1, 2, 5, 5),
                "kernel_size": 3,
                "stride": 2,
                "padding": [[1, 0], [0, 1]],
                "return_indices": True,
                "indices_layout": "global",
            },
        }
        examples["keras-channels-last"] = {
            "summary": 'Keras MaxPooling2D((2, 2), strides=1, padding="same") on a (1, 3, 3, 1) map',
            "value": KERAS_SAME,
        }
        examples["int64"] = {
            "summary": "int64 beyond float precision, exact",
            "value": {"input": [[[[9007199254740993, 1], [2, 3]]]], "dtype": "int64", "kernel_size": 2},
        }
        examples["dry-run"] = {
            "summary": "dry run: the output shape and effective padding, nothing computed",
            "value": {
                "dry_run": True,
                "input_shape": [8, 64, 112, 112],
                "kernel_size": 3,
                "stride": 2,
                "padding": "same",
            },
        }
    return examples


def avg_examples(rank: int) -> Examples:
    if rank == 1:
        return {
            "torch-avgpool1d": {
                "summary": "nn.AvgPool1d(3, stride=2) on [[[1, 2, 3, 4, 5, 6, 7]]]",
                "value": {"input": [[[1, 2, 3, 4, 5, 6, 7]]], "kernel_size": 3, "stride": 2},
            }
        }
    spatial = (4,) * rank
    examples = {
        "padded": {
            "summary": "3-wide windows with padding 1, padding counted",
            "value": {"input": _ramp(1, 1, *spatial), "kernel_size": 3, "stride": 1, "padding": 1},
        },
        "dilated": {
            "summary": "dilation 2 (ONNX AveragePool): every other cell",
            "value": {"input": _ramp(1, 1, *(5,) * rank), "kernel_size": 2, "stride": 1, "dilation": 2},
        },
    }
    if rank == 2:
        examples["keras-same"] = {
            "summary": 'Keras AveragePooling2D((2, 2), strides=1, padding="same"): padding not counted',
            "value": KERAS_SAME,
        }
    return examples


def lp_examples(rank: int) -> Examples:
    spatial = (4,) * rank
    centred = [v - 6.0 for v in range(4**rank)]
    return {
        "l2": {
            "summary": "L2 norm of each window",
            "value": {"input": _ramp(1, 1, *spatial), "norm_type": 2, "kernel_size": 2},
        },
        "onnx-lppool": {
            "summary": "ONNX LpPool: |x|, pads [begin, end], dilation",
            "value": {
                "input": {"data": centred, "shape": [1, 1, *spatial]},
                "norm_type": 2,
                "kernel_size": 2,
                "padding": [[1, 0]] * rank,
                "dilation": 2,
                "absolute": True,
            },
        },
    }


def adaptive_max_examples(rank: int) -> Examples:
    if rank == 1:
        return {
            "torch-adaptivemaxpool1d": {
                "summary": "nn.AdaptiveMaxPool1d(5) on a (1, 2, 8) ramp",
                "value": {"input": _ramp(1, 2, 8), "output_size": 5, "return_indices": True},
            }
        }
    if rank == 2:
        return {
            "torch-adaptivemaxpool2d": {
                "summary": "nn.AdaptiveMaxPool2d((None, 7)) on a (1, 1, 8, 9) ramp: the height is kept",
                "value": {"input": _ramp(1, 1, 8, 9), "output_size": [None, 7]},
            },
            "square": {"summary": "to 2×2", "value": {"input": GRID, "output_size": 2, "return_indices": True}},
            "integers": {
                "summary": "int32, which torch's adaptive max pooling refuses, exact",
                "value": {"input": _ramp(1, 1, 5, 5), "dtype": "int32", "output_size": 3, "return_indices": True},
            },
        }
    return {"cube": {"summary": "to 1×2×2", "value": {"input": _ramp(1, 1, 2, 4, 4), "output_size": [1, 2, 2]}}}


def adaptive_avg_examples(rank: int) -> Examples:
    spatial = (5,) * rank
    return {
        "to-2": {"summary": "to size 2 in each dimension", "value": {"input": _ramp(1, 1, *spatial), "output_size": 2}}
    }


def global_examples(rank: int) -> Examples:
    spatial = (3,) * rank
    return {
        "head": {"summary": "each channel to one value", "value": {"input": _ramp(1, 2, *spatial)}},
        "keras": {
            "summary": "Keras' layout and default: (N, *spatial, C) in, (N, C) out",
            "value": {"input": _ramp(2, *spatial, 2), "data_format": "channels_last", "keepdims": False},
        },
    }


def fractional_examples(rank: int) -> Examples:
    spatial = (5,) * rank
    return {
        "seeded": {
            "summary": "to size 3, reproducible through random_seed",
            "value": {
                "input": _ramp(1, 1, *spatial),
                "kernel_size": 2,
                "output_size": 3,
                "random_seed": 7,
                "return_indices": True,
            },
        },
        "ratio": {
            "summary": "half the size",
            "value": {"input": _ramp(1, 1, *(8,) * rank), "kernel_size": 2, "output_ratio": 0.5, "random_seed": 7},
        },
    }


def unpool_examples(rank: int) -> Examples:
    if rank == 2:
        return {
            "grid": {
                "summary": "undo max2d on the 4×4 grid (its output and indices)",
                "value": {"input": [[[[6.0, 8.0], [3.0, 4.0]]]], "indices": [[[[5, 7], [8, 15]]]], "kernel_size": 2},
            },
            "onnx-indices": {
                "summary": "ONNX MaxUnpool: indices count over the whole (N, C, H, W) output",
                "value": {
                    "input": [[[[6.0, 8.0], [3.0, 4.0]], [[6.0, 8.0], [3.0, 4.0]]]],
                    "indices": [[[[5, 7], [8, 15]], [[21, 23], [24, 31]]]],
                    "kernel_size": 2,
                    "indices_layout": "global",
                },
            },
        }
    if rank == 1:
        return {
            "pairs": {
                "summary": "undo 2-wide max pooling",
                "value": {"input": [[[5.0, 7.0]]], "indices": [[[1, 2]]], "kernel_size": 2},
            }
        }
    return {
        "cube": {
            "summary": "undo 2×2×2 max pooling",
            "value": {"input": [[[[[9.0]]]]], "indices": [[[[[7]]]]], "kernel_size": 2},
        }
    }
