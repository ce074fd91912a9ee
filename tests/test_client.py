"""The Python client, sync against a real server and async in process."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.client import AsyncPoolClient, PoolClient, PoolError
from app.main import create_app
from app.operations import OPERATIONS
from app.settings import Settings

X = np.random.default_rng(21).standard_normal((2, 3, 8, 8)).astype(np.float32)


def test_one_method_per_operation_with_its_parameters_documented():
    for operation in OPERATIONS.values():
        method = getattr(PoolClient, operation.method)
        assert method.__name__ == operation.method
        assert all(name in method.__doc__ for name in operation.params.model_fields if name not in ("input", "indices"))


@pytest.mark.parametrize("transport", ["binary", "json"])
def test_sync_client_returns_what_torch_computes(server, transport):
    want, want_indices = F.max_pool2d(torch.from_numpy(X), 3, 2, 1, return_indices=True)
    with PoolClient(server, transport=transport) as client:
        output, indices = client.max2d(X, kernel_size=3, stride=2, padding=1, return_indices=True)
        np.testing.assert_array_equal(output, want.numpy())
        np.testing.assert_array_equal(indices, want_indices.numpy())
        averaged = client.avg2d(X, kernel_size=2, padding="same", stride=1)
        assert averaged.shape == (2, 3, 8, 8) and averaged.dtype == np.float32
        unpooled = client.max_unpool2d(output, indices=indices, kernel_size=3, stride=2, padding=1, output_size=[8, 8])
        np.testing.assert_array_equal(unpooled, F.max_unpool2d(want, want_indices, 3, 2, 1, (8, 8)).numpy())
        assert client.adaptive_max1d(np.arange(10, dtype=np.int64)[None, None], output_size=3).tolist() == [[[3, 6, 9]]]


def test_json_answers_in_any_encoding_come_back_as_arrays(server):
    want = F.max_pool2d(torch.from_numpy(X), 2).numpy()
    with PoolClient(server, transport="json") as client:
        for encoding in ("json", "flat", "npy_base64"):
            np.testing.assert_array_equal(client.max2d(X, kernel_size=2, output_encoding=encoding), want)


def test_sync_client_raises_the_problem(server):
    with PoolClient(server) as client:
        with pytest.raises(PoolError) as caught:
            client.max2d(X, kernal_size=2)
    assert caught.value.status == 422
    assert caught.value.errors[0]["loc"] == ["query", "kernal_size"]
    assert "kernel_size" in caught.value.errors[0]["msg"]


def test_dry_runs_answer_the_shape(server):
    with PoolClient(server) as client:
        plan = client.max3d(input_shape=[1, 2, 9, 9, 9], kernel_size=2, stride=2, padding="same", dry_run=True)
    assert plan["shape"] == [1, 2, 5, 5, 5] and plan["padding"] == [[0, 1], [0, 1], [0, 1]]


def test_async_client_with_an_api_key_in_process():
    app = create_app(Settings(device="cpu", torch_threads=1, api_keys=["k-1"]))

    async def scenario() -> tuple[np.ndarray, int]:
        transport = httpx.ASGITransport(app=app)
        async with AsyncPoolClient(http=httpx.AsyncClient(transport=transport, base_url="http://pool")) as anonymous:
            try:
                await anonymous.global_avg2d(X)
                status = 0
            except PoolError as exc:
                status = exc.status
        keyed = httpx.AsyncClient(transport=transport, base_url="http://pool", headers={"authorization": "Bearer k-1"})
        async with AsyncPoolClient(http=keyed) as client:
            return await client.global_avg2d(X, keepdims=False), status

    result, status = asyncio.run(scenario())
    assert status == 401
    np.testing.assert_allclose(result, X.mean(axis=(2, 3)), rtol=1e-5)
    app.state.runtime.executor.close()


def test_503_is_retried_after_its_retry_after():
    answers = iter([503, 503, 200])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = next(answers)
        if status == 503:
            return httpx.Response(
                503, headers={"retry-after": "0"}, json={"title": "Service Unavailable", "detail": "busy"}
            )
        return httpx.Response(
            200, json={"op": "max1d", "shape": [1, 1, 1], "dtype": "float32", "output": [[[2.0]]], "indices": None}
        )

    with PoolClient(http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://pool")) as client:
        assert client.max1d(np.array([[[1.0, 2.0]]]), kernel_size=2).tolist() == [[[2.0]]]
    assert len(seen) == 3
    refusing = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(503, headers={"retry-after": "0"}, json={})),
        base_url="http://pool",
    )
    with PoolClient(http=refusing, retries=1) as client, pytest.raises(PoolError) as caught:
        client.max1d(np.array([[[1.0, 2.0]]]), kernel_size=2)
    assert caught.value.status == 503


def _case_inputs(name):
    """The first sample case of an op, its input (and indices) and torch's answer."""
    from tests.families import cases, reference
    from tests.reference import sample, unpool_inputs

    spec = OPERATIONS[name]
    case = cases(spec)[0]
    if spec.family.extra_tensors:
        values, indices = unpool_inputs(spec, case, torch.float32)
        x, extra = values.numpy(), indices.numpy()
    else:
        x, extra = sample(case.shape(), "float32"), None
    want, want_indices = reference(
        spec, torch.from_numpy(x), case.params, torch.from_numpy(extra) if extra is not None else None
    )
    return case.params, x, extra, want.numpy(), None if want_indices is None else want_indices.numpy()


def _check(result, want, want_indices):
    output, indices = result if isinstance(result, tuple) else (result, None)
    np.testing.assert_allclose(output, want, rtol=1e-5, atol=1e-6)
    if want_indices is not None:
        np.testing.assert_array_equal(indices, want_indices)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_sync_client_every_operation(server, name):
    params, x, extra, want, want_indices = _case_inputs(name)
    with PoolClient(server) as client:
        _check(getattr(client, OPERATIONS[name].method)(x, indices=extra, **params), want, want_indices)


def test_async_client_every_operation():
    app = create_app(Settings(device="cpu", torch_threads=1))

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pool")
        async with AsyncPoolClient(http=http, transport="json") as client:
            for name, operation in OPERATIONS.items():
                params, x, extra, want, want_indices = _case_inputs(name)
                _check(await getattr(client, operation.method)(x, indices=extra, **params), want, want_indices)

    asyncio.run(scenario())
    app.state.runtime.executor.close()


def test_an_api_key_goes_on_a_given_http_clients_requests():
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(
            200, json={"op": "max1d", "shape": [1, 1, 1], "dtype": "float32", "output": [[[2.0]]], "indices": None}
        )

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://pool")
    with PoolClient(http=http, api_key="k-1") as client:
        client.max1d(np.array([[[1.0, 2.0]]]), kernel_size=2)
    assert seen == ["Bearer k-1"]
