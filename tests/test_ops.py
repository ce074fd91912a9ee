"""Every catalogue operation against in-process torch, in every transport and dtype."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from app.dtypes import TABLE
from app.operations import OPERATIONS, Operation
from tests.conftest import assert_problem
from tests.families import FAMILY_TESTS, cases, reference
from tests.reference import Case, sample, unpool_inputs
from tests.transport import TRANSPORTS, read_answer, send

MATRIX = [
    pytest.param(name, case, id=f"{name}-{i}")
    for name, spec in OPERATIONS.items()
    for i, case in enumerate(cases(spec))
]


def _inputs(operation: Operation, case: Case, dtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    if operation.family.extra_tensors:
        values, indices = unpool_inputs(operation, case, torch.float64)
        array = values.numpy().astype(np.float32 if dtype == "bfloat16" else dtype)
        return array, indices.numpy()
    return sample(case.shape(), dtype), None


def _expected(operation: Operation, case: Case, x: np.ndarray, dtype: str, indices: np.ndarray | None):
    tensor = torch.from_numpy(x).to(TABLE[dtype].torch)
    extra = torch.from_numpy(indices) if indices is not None else None
    try:
        out, idx = reference(operation, tensor, case.params, extra)
    except (RuntimeError, NotImplementedError) as exc:
        # Where torch's CPU kernels lack a dtype (float16 avg_pool3d, uint8
        # max_unpool), the reference is torch in a wider dtype, rounded back:
        # float32 for half floats, int64 (exact) for integers.
        assert "not implemented" in str(exc), exc
        wider = torch.float32 if tensor.is_floating_point() else torch.int64
        out, idx = reference(operation, tensor.to(wider), case.params, extra)
        out = out.to(TABLE[dtype].torch)
    return out.to(torch.float64 if out.is_floating_point() else out.dtype).numpy(), idx


def _compare(operation: Operation, got: np.ndarray, want: np.ndarray, dtype: str) -> None:
    assert got.shape == want.shape
    exact = FAMILY_TESTS[operation.family.name].exact or dtype.startswith(("int", "uint"))
    # JSON carries each value's shortest decimal form: read it back into the dtype first.
    got = got.astype(np.float32 if dtype == "bfloat16" else dtype)
    if exact:
        np.testing.assert_array_equal(got.astype(want.dtype), want)
    else:
        tol = {"float16": 1e-3, "bfloat16": 1e-2}.get(dtype, 1e-6)
        np.testing.assert_allclose(got.astype(np.float64), want, rtol=tol, atol=tol)


def check_case(client, operation: Operation, case: Case, transport: str, dtype: str = "float32", accept=None) -> None:
    """One sample case of an operation sent in one transport, its answer compared
    with the family's reference."""
    x, indices = _inputs(operation, case, dtype)
    response = send(client, operation.name, case.params, x, transport, dtype, indices, accept=accept)
    if transport == "npy" and indices is not None:
        # One .npy carries one tensor; unpooling needs two, so an .npz.
        assert_problem(response, 400, detail_has=".npz")
        return
    got, got_indices, body = read_answer(response, dtype)
    want, want_indices = _expected(operation, case, x, dtype, indices)
    _compare(operation, got, want, dtype)
    if want_indices is None:
        assert got_indices is None
    else:
        np.testing.assert_array_equal(got_indices, want_indices.numpy())
    if body:
        assert body["op"] == operation.name and body["dtype"] == dtype and body["shape"] == list(want.shape)
        assert body["device"] == "cpu"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(("op", "case"), MATRIX)
def test_matches_torch_in_every_transport(client, op, case, transport):
    check_case(client, OPERATIONS[op], case, transport)


DTYPE_MATRIX = [
    pytest.param(name, cases(spec)[0], dtype, id=f"{name}-{dtype}")
    for name, spec in OPERATIONS.items()
    for dtype in spec.family.dtypes
]


@pytest.mark.parametrize(("op", "case", "dtype"), DTYPE_MATRIX)
def test_matches_torch_in_every_dtype(client, op, case, dtype):
    form = "json" if dtype == "bfloat16" else "npz" if OPERATIONS[op].family.extra_tensors else "npy"
    check_case(client, OPERATIONS[op], case, form, dtype, accept="application/json")
