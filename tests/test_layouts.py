"""Options every op takes, generated from the catalogue: channels_last, dry runs,
the global index layout, keepdims, and seeds that hold across workers."""

from __future__ import annotations

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.operations import OPERATIONS
from tests.conftest import Client
from tests.families import cases
from tests.reference import adaptive_max_numpy, sample, unpool_inputs

FIRST_CASES = [pytest.param(name, cases(spec)[0], id=name) for name, spec in OPERATIONS.items()]
WITH_INDICES = [p for p in FIRST_CASES if OPERATIONS[p.values[0]].family.has_indices]


def pool(client, op, **document):
    response = client.post(f"/pool/{op}", content=orjson.dumps(document), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def _inputs(op, case):
    spec = OPERATIONS[op]
    if spec.family.extra_tensors:
        import torch

        values, indices = unpool_inputs(spec, case, torch.float32)
        return values.numpy(), {"indices": indices.numpy()}
    return sample(case.shape(), "float32", seed=7), {}


def _indices_params(op, case):
    return {"return_indices": True} if OPERATIONS[op].family.has_indices else {}


@pytest.mark.parametrize(("op", "case"), FIRST_CASES)
def test_channels_last_is_channels_first_transposed(client, op, case):
    x, extra = _inputs(op, case)
    params = {**case.params, **_indices_params(op, case)}
    first = pool(client, op, input=x.tolist(), **{k: v.tolist() for k, v in extra.items()}, **params)
    moved = {k: np.moveaxis(v, 1, -1).tolist() for k, v in extra.items()}
    if "output_size" in params and op.startswith("max-unpool") and len(params["output_size"]) == x.ndim:
        params["output_size"] = [params["output_size"][0], *params["output_size"][2:], params["output_size"][1]]
    last = pool(client, op, input=np.moveaxis(x, 1, -1).tolist(), data_format="channels_last", **moved, **params)
    out_first, out_last = np.array(first["output"]), np.array(last["output"])
    assert last["shape"] == list(np.moveaxis(out_first, 1, -1).shape)
    np.testing.assert_array_equal(np.moveaxis(out_last, -1, 1), out_first)
    if first["indices"] is not None:
        np.testing.assert_array_equal(np.moveaxis(np.array(last["indices"]), -1, 1), np.array(first["indices"]))


@pytest.mark.parametrize(("op", "case"), FIRST_CASES)
def test_dry_run_answers_the_shape_without_computing(client, op, case):
    x, extra = _inputs(op, case)
    real = pool(client, op, input=x.tolist(), **{k: v.tolist() for k, v in extra.items()}, **case.params)
    dry = pool(client, op, dry_run=True, input_shape=list(x.shape), **case.params)
    assert dry["shape"] == real["shape"] and dry["dtype"] == "float32"
    assert dry["output"] is None and dry["indices"] is None
    if "kernel_size" in case.params and not op.startswith(("fractional", "max-unpool")):
        assert len(dry["padding"]) == OPERATIONS[op].rank and all(len(pair) == 2 for pair in dry["padding"])
    else:
        assert dry["padding"] is None


def test_dry_run_reports_effective_same_padding(client):
    dry = pool(client, "max2d", dry_run=True, input_shape=[1, 3, 7, 8], kernel_size=[3, 2], stride=2, padding="same")
    # ceil(7 / 2) = 4 rows need (4 - 1) * 2 + 3 - 7 = 2 padded cells; ceil(8 / 2) = 4 columns need 0.
    assert dry["shape"] == [1, 3, 4, 4] and dry["padding"] == [[1, 1], [0, 0]]
    lower = pool(client, "avg1d", dry_run=True, input_shape=[2, 5], kernel_size=2, stride=1, padding="same_lower")
    assert lower["shape"] == [2, 5] and lower["padding"] == [[1, 0]]


def test_dry_run_checks_limits_on_the_shape(make_client):
    small = make_client(max_elements=1000)
    response = small.post("/pool/max2d", json={"dry_run": True, "input_shape": [1, 1, 100, 100], "kernel_size": 2})
    assert response.status_code == 413


@pytest.mark.parametrize(("op", "case"), WITH_INDICES)
def test_global_indices_point_into_the_whole_input(client, op, case):
    x, _ = _inputs(op, case)
    params = {**case.params, "return_indices": True}
    plane = pool(client, op, input=x.tolist(), **params)
    whole = pool(client, op, input=x.tolist(), indices_layout="global", **params)
    batched = x if x.ndim == OPERATIONS[op].rank + 2 else x[None]
    flat_values = batched.reshape(-1)
    global_indices = np.array(whole["indices"])
    np.testing.assert_array_equal(flat_values[global_indices], np.array(whole["output"], np.float32))
    per_plane = np.prod(batched.shape[2:])
    offsets = np.arange(batched.shape[0] * batched.shape[1]).reshape(batched.shape[:2]) * per_plane
    offsets = offsets.reshape(offsets.shape + (1,) * (global_indices.ndim - (2 if x.ndim == batched.ndim else 1)))
    if x.ndim != batched.ndim:
        offsets = offsets[0]
    np.testing.assert_array_equal(global_indices, np.array(plane["indices"]) + offsets)


@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("family", ["global-max", "global-avg"])
def test_keepdims_false_drops_the_pooled_dimensions(client, family, rank):
    x = sample((2, 3, *(4,) * rank), "float32")
    kept = pool(client, f"{family}{rank}d", input=x.tolist())
    dropped = pool(client, f"{family}{rank}d", input=x.tolist(), keepdims=False)
    assert dropped["shape"] == [2, 3] and kept["shape"] == [2, 3, *(1,) * rank]
    np.testing.assert_array_equal(np.array(dropped["output"]), np.array(kept["output"]).reshape(2, 3))
    unbatched = pool(client, f"{family}{rank}d", input=x[0].tolist(), keepdims=False)
    assert unbatched["shape"] == [3]


@pytest.mark.parametrize("op", ["max-unpool1d", "max-unpool2d", "max-unpool3d"])
def test_unpool_accepts_both_index_layouts(client, op):
    case = cases(OPERATIONS[op])[0]
    x, extra = _inputs(op, case)
    indices = extra["indices"]
    per_plane = np.prod([2 * s for s in case.spatial])
    offsets = (np.arange(x.shape[0] * x.shape[1]) * per_plane).reshape(*x.shape[:2], *(1,) * (x.ndim - 2))
    plane = pool(client, op, input=x.tolist(), indices=indices.tolist(), **case.params)
    whole = pool(
        client, op, input=x.tolist(), indices=(indices + offsets).tolist(), indices_layout="global", **case.params
    )
    assert plane["output"] == whole["output"]
    bad = client.post(
        f"/pool/{op}",
        json={"input": x.tolist(), "indices": (indices + offsets).tolist(), **case.params},
    )
    assert bad.status_code == 422


def test_fractional_seed_gives_the_same_output_in_another_worker():
    x = sample((2, 3, 9, 9), "float32", seed=3)
    document = {
        "input": x.tolist(),
        "kernel_size": 2,
        "output_ratio": [0.5, 0.6],
        "random_seed": 2024,
        "return_indices": True,
    }
    answers = []
    for _ in range(2):  # two app instances, as two worker processes would hold
        worker = Client()
        try:
            answers.append(worker.post("/pool/fractional-max2d", json=document).json())
        finally:
            worker.close()
    assert answers[0]["output"] == answers[1]["output"] and answers[0]["indices"] == answers[1]["indices"]


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "int64"])
@pytest.mark.parametrize("op", ["adaptive-max1d", "adaptive-max2d", "adaptive-max3d"])
def test_integer_adaptive_max_is_exact_at_the_extremes(client, op, dtype):
    rank = OPERATIONS[op].rank
    info = np.iinfo(np.dtype(dtype))
    x = np.full((1, 2, *(5,) * rank), info.min, dtype=dtype)
    x.flat[3] = info.max
    x.flat[4] = info.max  # a tie: the first position wins
    body = pool(client, op, input=x.tolist(), dtype=dtype, output_size=2, return_indices=True)
    out = np.array(body["output"], dtype=dtype)
    assert out.max() == info.max and out.min() == info.min
    # The first window holding the maximum holds both positions; the first wins.
    assert np.array(body["indices"]).ravel()[out.ravel().argmax()] == 3


@st.composite
def int64_cases(draw):
    """int64 inputs, with ties, over windows of one size and stride (torch's integer
    pooling) and uneven ones: within float64's exact range and at its edges, close
    together as timestamps are, far apart, spread over all of int64, at both ends of
    the range and at the edges of the float64 keys (where windows whose maximum has no
    key, or that hold a NaN key, are searched cell by cell), all below -2**52 (the
    shift in two steps), and large positives (their own keys) with a rare value that
    is no key, which a sample of the input can miss."""
    rank = draw(st.integers(1, 3))
    spatial = draw(st.lists(st.integers(1, 9), min_size=rank, max_size=rank))
    sizes = draw(st.lists(st.integers(1, 11), min_size=rank, max_size=rank))
    shape = [draw(st.integers(1, 2)), draw(st.integers(1, 2)), *spatial]
    top, bottom = np.iinfo(np.int64).max, np.iinfo(np.int64).min
    levels = np.array(
        draw(
            st.sampled_from(
                [
                    [1_764_000_000_123_456_789 + d for d in (0, 1, 2, 2**40, 2**53)],
                    [-(2**53) + 1, 2**53 - 1, 0, -5, 7],
                    [2**53 + 1, 2**53, 2**53 - 1, 1, -1],
                    [-(2**53) - 1, -(2**53), -(2**53) + 1],
                    [2**61, 2**61 - 1, -(2**61), -(2**61) + 1, 2**53 + 1],
                    [2**62 + 1, 2**62, 2**62 - 1, 2**53 + 1, -(2**62) - 3],
                    [top, top - 1, bottom, bottom + 1, 0],
                    [bottom + 2**52, bottom + 2**52 + 1, -1, 0, 2**62],
                    [0x7FEFFFFFFFFFFFFF, 0x7FF0000000000000, 2**52, 2**52 - 1, 0, -1],
                    [bottom, bottom + 1, -(2**52) - 1, -(2**52) - 2],
                    [2**60 + d % 3 for d in range(63)] + [-1],
                    [2**60 + d % 3 for d in range(63)] + [0x7FF0000000000001],
                    [2**60 + d % 3 for d in range(63)] + [-(2**60)],
                ]
            )
        ),
        dtype=np.int64,
    )
    x = levels[np.random.default_rng(draw(st.integers(0, 2**31))).integers(0, len(levels), size=shape)]
    return x, sizes


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(int64_cases())
def test_int64_adaptive_max_matches_element_by_element_at_any_size(client, case):
    x, sizes = case
    op = f"adaptive-max{len(sizes)}d"
    body = pool(client, op, input=x.tolist(), dtype="int64", output_size=sizes, return_indices=True)
    want, want_indices = adaptive_max_numpy(x, sizes)
    np.testing.assert_array_equal(np.array(body["output"], dtype=np.int64), want)
    np.testing.assert_array_equal(np.array(body["indices"], dtype=np.int64), want_indices)
