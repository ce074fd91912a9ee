"""Operations as data: every family's record is complete, its error cases are 422s
located where each door received the parameter, and a new family registered
through the same record is served, documented and tested like the others."""

from __future__ import annotations

import inspect
from dataclasses import fields

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F

from app import kernels
from app.dtypes import FLOAT_DTYPES
from app.operations import FAMILIES, OPERATIONS, Family, Kernel, Operation, build_operations
from app.params import MaxParams, PoolParams
from app.planning import Plan, sliding_plan
from tests.conftest import Client, assert_problem, npy_bytes, npz_bytes
from tests.families import FAMILY_TESTS, ErrorCase, FamilyTests, cases, errors, max_cases, window_errors
from tests.reference import sample, unpool_inputs
from tests.test_ops import check_case
from tests.transport import TRANSPORTS, query_text

# ---------------------------------------------------------------- every record complete


@pytest.mark.parametrize("family", FAMILIES, ids=lambda f: f.name)
def test_every_family_has_its_whole_record(family):
    for name in ("name", "ranks", "reference", "summary", "params", "plan", "compute", "dtypes", "meaning"):
        assert getattr(family, name), f"{family.name} lacks {name}"
    assert issubclass(family.params, PoolParams) and family.params is not PoolParams
    assert callable(family.plan) and callable(family.compute)
    if isinstance(family.compute, Kernel):  # named in the table, defined in app.kernels
        assert inspect.isfunction(getattr(kernels, family.compute.name))
    tests = FAMILY_TESTS.get(family.name)
    assert tests is not None, f"tests/families.py has no record for {family.name}"
    for rank in family.ranks:
        assert tests.cases(rank), f"{family.name} has no sample case for rank {rank}"
        assert tests.errors(rank), f"{family.name} has no error case for rank {rank}"


def test_the_tests_know_no_family_the_table_lacks():
    assert set(FAMILY_TESTS) == {family.name for family in FAMILIES}
    assert {field.name for field in fields(FamilyTests)} >= {"cases", "reference", "errors"}


# ---------------------------------------------------------------- error cases, located by the door

ERRORS = [
    pytest.param(name, case, id=f"{name}-{'-'.join(map(str, case.loc))}-{i}")
    for name, operation in OPERATIONS.items()
    for i, case in enumerate(errors(operation))
]


def _first_inputs(operation: Operation) -> tuple[np.ndarray, np.ndarray | None]:
    case = cases(operation)[0]
    if operation.family.extra_tensors:
        values, indices = unpool_inputs(operation, case, torch.float32)
        return values.numpy(), indices.numpy()
    return sample(case.shape(), "float32"), None


def _located(client, operation: Operation, case: ErrorCase, door: str):
    x, indices = _first_inputs(operation)
    if door == "body":
        document = {"input": x.tolist(), **case.params}
        if indices is not None:
            document["indices"] = indices.tolist()
        return client.post(f"/pool/{operation.name}", json=document)
    if door == "query":
        query = {key: query_text(value) for key, value in case.params.items()}
        if indices is None:
            body, media = npy_bytes(x), "application/x-npy"
        else:
            body, media = npz_bytes(input=x, indices=indices), "application/x-npz"
        return client.post(f"/pool/{operation.name}", content=body, params=query, headers={"content-type": media})
    inputs = [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    if indices is not None:
        inputs.append(
            {"name": "indices", "shape": list(indices.shape), "datatype": "INT64", "data": indices.ravel().tolist()}
        )
    document = {"parameters": case.params, "inputs": inputs}
    return client.post(f"/v2/models/{operation.name}/infer", content=orjson.dumps(document))


@pytest.mark.parametrize("door", ["body", "query", "parameters"])
@pytest.mark.parametrize(("op", "case"), ERRORS)
def test_error_cases_are_422s_located_where_the_parameter_arrived(client, op, case, door):
    operation = OPERATIONS[op]
    if door == "parameters" and any(name not in operation.params.model_fields for name in case.params):
        # The protocol refuses a parameter the model does not have as malformed (400).
        assert_problem(_located(client, operation, case, door), 400, detail_has="takes no parameter")
        return
    problem = assert_problem(_located(client, operation, case, door), 422, loc=[door, *case.loc])
    if door == "parameters":
        assert problem["error"] == problem["detail"]


@pytest.mark.parametrize(
    ("door", "loc"), [("body", ["body", "input"]), ("query", ["body", "input"]), ("parameters", ["inputs", 0])]
)
def test_a_tensor_refused_for_its_shape_is_located_where_it_arrived(client, door, loc):
    x = sample((1, 1, 2, 3, 4, 4), "float32")  # 6 dimensions: never a max3d input
    if door == "body":
        response = client.post("/pool/max3d", json={"input": x.tolist(), "kernel_size": 2})
    elif door == "query":
        headers = {"content-type": "application/x-npy"}
        response = client.post("/pool/max3d", content=npy_bytes(x), params={"kernel_size": "2"}, headers=headers)
    else:
        inputs = [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
        response = client.post("/v2/models/max3d/infer", json={"parameters": {"kernel_size": 2}, "inputs": inputs})
    assert_problem(response, 422, loc=loc)


# ---------------------------------------------------------------- a new family, through the same record


def min_compute(x: torch.Tensor, p: MaxParams, plan: Plan, extra: dict[str, torch.Tensor]):
    """Min pooling: the negated max pooling of the negated input."""
    out, indices = kernels.max_compute(-x, p, plan, extra)
    return -out, indices


MIN = Family(
    "min",
    (1, 2),
    "max_pool{}d",
    "Min pooling",
    MaxParams,
    sliding_plan,
    min_compute,
    dtypes=FLOAT_DTYPES,
    has_indices=True,
    meaning="Each window keeps its smallest value.",
)


def min_reference(r: int, x: torch.Tensor, params: dict, indices: torch.Tensor | None):
    p = dict(params)
    want = p.pop("return_indices", False)
    out, idx = getattr(F, f"max_pool{r}d")(-x, return_indices=True, **p)
    return -out, idx if want else None


MIN_TESTS = FamilyTests(max_cases, min_reference, window_errors, exact=True)


@pytest.fixture
def with_min(monkeypatch):
    """A client of an app whose table has the min family besides the others."""
    monkeypatch.setitem(FAMILY_TESTS, "min", MIN_TESTS)
    client = Client(app_options={"operations": {**OPERATIONS, **build_operations([MIN])}})
    yield client
    client.close()


def test_a_new_family_is_served_documented_and_tested_through_its_record(with_min):
    toy = build_operations([MIN])
    assert set(toy) == {"min1d", "min2d"}
    for operation in toy.values():
        test_every_family_has_its_whole_record(operation.family)
        for case in cases(operation):
            for transport in TRANSPORTS:
                check_case(with_min, operation, case, transport)
        for case in errors(operation):
            for door in ("body", "query", "parameters"):
                assert_problem(_located(with_min, operation, case, door), 422, loc=[door, *case.loc])
    listed = {entry["name"] for entry in with_min.get("/pool").json()["operations"]}
    assert {"min1d", "min2d"} <= listed
    schema = with_min.get("/openapi.json").json()
    assert schema["paths"]["/pool/min2d"]["post"]["operationId"] == "pool-min2d"
    assert with_min.get("/v2/models/min2d").json()["name"] == "min2d"
    answer = with_min.post("/pool/min1d", json={"input": [[[3.0, 1.0, 2.0, 5.0]]], "kernel_size": 2})
    assert answer.json()["output"] == [[[1.0, 2.0]]]
