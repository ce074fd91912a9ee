"""The beyond-torch options against an independent computation: ONNX's reference
evaluator running the equivalent node, and Keras' documented results."""

from __future__ import annotations

import math

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.onnx_reference import max_pool, onnx_pads, run_node
from tests.reference import cells_in_padded_input, every_window_meets_input

ONNX_OPS = {"max": "MaxPool", "avg": "AveragePool", "lp": "LpPool"}


def pool(client, op, document, status=200):
    response = client.post(f"/pool/{op}", content=orjson.dumps(document), headers={"content-type": "application/json"})
    assert response.status_code == status, response.text
    return response.json()


def _reference_extra_pad(size, kernel, stride, dilation, pads, ceil_mode):
    """Cells the last window reaches past the end padding under ceil_mode."""
    span = size + sum(pads) - dilation * (kernel - 1) - 1
    count = (span + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (count - 1) * stride >= size + pads[0]:
        count -= 1
    return (count - 1) * stride + dilation * (kernel - 1) + 1 - (size + sum(pads))


@st.composite
def onnx_cases(draw):
    family = draw(st.sampled_from(sorted(ONNX_OPS)))
    rank = draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank))
    dims = st.lists(st.integers(1, 3), min_size=rank, max_size=rank)
    kernel, stride = draw(dims), draw(dims)
    dilation = draw(st.lists(st.integers(1, 2), min_size=rank, max_size=rank))
    pads = [draw(st.lists(st.integers(0, 2), min_size=2, max_size=2)) for _ in range(rank)]
    ceil_mode = draw(st.booleans())
    # ONNX's reference puts half of any ceil_mode overhang of 2 or more cells
    # before the input, shifting every window (onnx/reference/ops/op_pool_common.py,
    # get_output_shape_explicit_padding); onnxruntime and torch put it after.
    # Cases with such an overhang are left to the torch and numpy tests.
    assume(
        all(
            _reference_extra_pad(spatial[d], kernel[d], stride[d], dilation[d], pads[d], ceil_mode) <= 1
            for d in range(rank)
        )
    )
    extra = {}
    if family == "avg":
        extra["count_include_pad"] = draw(st.booleans())
    if family == "lp":
        extra["p"] = draw(st.integers(1, 3))
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 2)), *spatial]
    seed = draw(st.integers(0, 2**31))
    return family, rank, shape, kernel, stride, dilation, pads, ceil_mode, extra, seed


@settings(
    max_examples=600,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much],
)
@given(onnx_cases())
def test_sliding_ops_match_onnx_reference(client, case):
    family, rank, shape, kernel, stride, dilation, pads, ceil_mode, extra, seed = case
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    with_indices = family == "max"
    document = {
        "input": x.tolist(),
        "kernel_size": kernel,
        "stride": stride,
        "dilation": dilation,
        "padding": pads,
        "ceil_mode": ceil_mode,
    }
    attributes = {
        "kernel_shape": kernel,
        "strides": stride,
        "dilations": dilation,
        "pads": onnx_pads(pads),
        "ceil_mode": int(ceil_mode),
    }
    if family == "avg":
        document["count_include_pad"] = extra["count_include_pad"]
        attributes["count_include_pad"] = int(extra["count_include_pad"])
    if family == "lp":
        document.update(norm_type=extra["p"], absolute=True)
        attributes["p"] = extra["p"]
    if with_indices:
        document.update(return_indices=True, indices_layout="global")
    response = client.post(
        f"/pool/{family}{rank}d", content=orjson.dumps(document), headers={"content-type": "application/json"}
    )
    if response.status_code == 422:
        # The contract refuses an empty output and a window with no input cell.
        assert not every_window_meets_input(shape[2:], kernel, stride, dilation, pads, ceil_mode), response.text
        return
    assert response.status_code == 200, response.text
    try:
        if family == "max":
            expected = max_pool(x, **attributes)
        else:
            expected = run_node(ONNX_OPS[family], {"X": x}, **attributes)
    except IndexError:
        # ONNX's reference loops over windows that ceil_mode drops when they start
        # in the end padding, and fails there; torch and the service drop them.
        assume(False)
    body = response.json()
    want = expected[0]
    if family == "lp":
        # ONNX's reference LpPool is (kernel size × mean of |x|^p over the window's cells
        # in the padded input)^(1/p): a window that ceil_mode lets overhang the padding
        # is scaled up, as torch's lp_pool does. The contract's Lp norm sums |x|^p over
        # the cells each window covers, as onnxruntime does: undo the scale.
        p = extra["p"]
        covered = cells_in_padded_input(shape[2:], kernel, stride, dilation, pads, ceil_mode)
        want = (want.astype(np.float64) ** p * covered / math.prod(kernel)) ** (1 / p)
    np.testing.assert_allclose(np.array(body["output"], np.float32), want, rtol=1e-5, atol=1e-5)
    if with_indices:
        np.testing.assert_array_equal(np.array(body["indices"]), expected[1])


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("op", ["GlobalMaxPool", "GlobalAveragePool"])
def test_global_ops_match_onnx_reference(client, op, rank):
    x = np.random.default_rng(rank).standard_normal((2, 3, *(4,) * rank)).astype(np.float32)
    if op == "GlobalMaxPool" and rank != 2:
        # ONNX's reference reduces axes (rank, rank + 1) rather than the spatial
        # axes, which is right for 2-D only; numpy's max over them is the reference here.
        expected = x.max(axis=tuple(range(2, 2 + rank)), keepdims=True)
    else:
        expected = run_node(op, {"X": x})[0]
    name = ("global-max" if op == "GlobalMaxPool" else "global-avg") + f"{rank}d"
    body = pool(client, name, {"input": x.tolist()})
    np.testing.assert_allclose(np.array(body["output"], np.float32), expected, rtol=1e-5, atol=1e-6)
    flat = pool(client, name, {"input": x.tolist(), "keepdims": False})
    assert flat["shape"] == [2, 3]
    np.testing.assert_allclose(np.array(flat["output"], np.float32), expected.reshape(2, 3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("spatial", "kernel", "stride", "padding"),
    # Sizes the pooling inverts exactly: ONNX's reference MaxUnpool sizes its
    # output buffer by the inferred shape even when output_shape is given.
    [((6, 6), [2, 2], [2, 2], [0, 0]), ((5, 5), [3, 3], [2, 2], [1, 1]), ((6, 5), [2, 3], [2, 1], [1, 1])],
)
def test_global_indices_round_trip_through_onnx_max_unpool(client, spatial, kernel, stride, padding):
    x = np.random.default_rng(0).standard_normal((2, 3, *spatial)).astype(np.float32)
    common = {"kernel_size": kernel, "stride": stride, "padding": padding, "indices_layout": "global"}
    pooled = pool(client, "max2d", {"input": x.tolist(), "return_indices": True, **common})
    values, indices = np.array(pooled["output"], np.float32), np.array(pooled["indices"], np.int64)
    expected_y, expected_i = max_pool(
        x, kernel_shape=kernel, strides=stride, pads=padding * 2, dilations=[1, 1], ceil_mode=0
    )
    np.testing.assert_array_equal(values, expected_y)
    np.testing.assert_array_equal(indices, expected_i)
    expected = run_node(
        "MaxUnpool",
        {"X": values, "I": indices, "output_shape": np.array(x.shape, np.int64)},
        kernel_shape=kernel,
        strides=stride,
        pads=padding * 2,
    )[0]
    body = pool(
        client,
        "max-unpool2d",
        {"input": values.tolist(), "indices": indices.tolist(), "output_size": list(x.shape), **common},
    )
    np.testing.assert_array_equal(np.array(body["output"], np.float32), expected)


def test_onnx_maxpool_documented_example_with_pads(client):
    """ONNX's MaxPool example maxpool_2d_pads: 5×5, kernel 3, pads 2 all around."""
    x = np.arange(1, 26, dtype=np.float32).reshape(1, 1, 5, 5)
    expected = max_pool(x, kernel_shape=[3, 3], pads=[2, 2, 2, 2], strides=[1, 1], dilations=[1, 1], ceil_mode=0)[0]
    body = pool(client, "max2d", {"input": x.tolist(), "kernel_size": 3, "stride": 1, "padding": [[2, 2], [2, 2]]})
    np.testing.assert_array_equal(np.array(body["output"], np.float32), expected)


def test_onnx_averagepool_same_upper_and_lower(client):
    x = np.random.default_rng(2).standard_normal((1, 3, 32, 32)).astype(np.float32)
    for form, auto in (("same", "SAME_UPPER"), ("same_lower", "SAME_LOWER")):
        expected = run_node("AveragePool", {"X": x}, kernel_shape=[2, 2], auto_pad=auto)[0]
        body = pool(client, "avg2d", {"input": x.tolist(), "kernel_size": 2, "stride": 1, "padding": form})
        np.testing.assert_allclose(np.array(body["output"], np.float32), expected, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- Keras' documented results


KERAS_3x3 = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]


def _channels_last(grid):
    return [[[[v] for v in row] for row in grid]]  # (1, H, W, 1)


def test_keras_max_pooling_2d_same(client):
    body = pool(
        client,
        "max2d",
        {
            "input": _channels_last(KERAS_3x3),
            "kernel_size": 2,
            "stride": 1,
            "padding": "same",
            "data_format": "channels_last",
        },
    )
    assert body["shape"] == [1, 3, 3, 1]
    assert np.array(body["output"]).reshape(3, 3).tolist() == [[5, 6, 6], [8, 9, 9], [8, 9, 9]]


def test_keras_max_pooling_2d_valid_strides(client):
    grid = [[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]]
    body = pool(
        client,
        "max2d",
        {
            "input": _channels_last(grid),
            "kernel_size": 2,
            "stride": 2,
            "padding": "valid",
            "data_format": "channels_last",
        },
    )
    assert body["shape"] == [1, 1, 2, 1] and np.array(body["output"]).ravel().tolist() == [6, 8]


def test_keras_average_pooling_2d_same_excludes_padding(client):
    body = pool(
        client,
        "avg2d",
        {
            "input": _channels_last(KERAS_3x3),
            "kernel_size": 2,
            "stride": 1,
            "padding": "same",
            "data_format": "channels_last",
        },
    )
    assert np.array(body["output"]).reshape(3, 3).tolist() == [[3.0, 4.0, 4.5], [6.0, 7.0, 7.5], [7.5, 8.5, 9.0]]


@pytest.mark.parametrize(
    ("op", "padding", "expected"),
    [
        ("max1d", "valid", [2, 3, 4, 5]),
        ("max1d", "same", [2, 3, 4, 5, 5]),
        ("avg1d", "valid", [1.5, 2.5, 3.5, 4.5]),
        ("avg1d", "same", [1.5, 2.5, 3.5, 4.5, 5.0]),
    ],
)
def test_keras_1d_pooling_examples(client, op, padding, expected):
    x = [[[1.0], [2.0], [3.0], [4.0], [5.0]]]  # (1, 5, 1), channels last
    body = pool(
        client, op, {"input": x, "kernel_size": 2, "stride": 1, "padding": padding, "data_format": "channels_last"}
    )
    assert np.array(body["output"]).ravel().tolist() == expected


def test_keras_global_average_pooling_defaults_to_no_kept_dims(client):
    x = np.random.default_rng(4).standard_normal((2, 4, 5, 3)).astype(np.float32)  # (N, H, W, C)
    body = pool(client, "global-avg2d", {"input": x.tolist(), "data_format": "channels_last", "keepdims": False})
    assert body["shape"] == [2, 3]
    np.testing.assert_allclose(np.array(body["output"]), x.mean(axis=(1, 2)), rtol=1e-5)
    assert math.isfinite(body["output"][0][0])


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int32"])
def test_integer_max_with_onnx_pads_matches_onnx_reference(client, dtype):
    info = np.iinfo(np.dtype(dtype))
    rng = np.random.default_rng(5)
    x = rng.integers(info.min, info.max, size=(2, 3, 6, 7), endpoint=True).astype(dtype)
    x[0, 0] = info.min  # a whole plane at the dtype's lowest value: padding must still not win
    pads = [[2, 0], [1, 2]]  # beyond half the kernel, so not torch's own padding
    body = pool(
        client,
        "max2d",
        {"input": x.tolist(), "dtype": dtype, "kernel_size": 3, "stride": 2, "padding": pads, "return_indices": True},
    )
    want, want_indices = max_pool(  # float64 holds every value of these dtypes exactly
        x.astype(np.float64), kernel_shape=[3, 3], strides=[2, 2], pads=onnx_pads(pads), dilations=[1, 1], ceil_mode=0
    )
    np.testing.assert_array_equal(np.array(body["output"], dtype=dtype), want.astype(dtype))
    plane_indices = np.array(body["indices"])
    np.testing.assert_array_equal(plane_indices[0, 1:], (want_indices % 42)[0, 1:])
    np.testing.assert_array_equal(plane_indices[1], want_indices[1] % 42)
    # Where every input cell of a window holds the lowest value, the first input cell is reported.
    assert (x[0, 0].ravel()[plane_indices[0, 0]] == info.min).all()
