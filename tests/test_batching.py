"""Small requests of one plan that arrive together are pooled in one torch call
(`app.batching`): each still gets exactly its own answer, and the statistics count
the batch as one execution."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app import pipeline
from app.endpoint import incoming
from app.native import decode_native
from app.operations import OPERATIONS
from app.statistics import Timings
from tests.conftest import Client


@pytest.fixture
def batching() -> Iterator[Client]:
    client = Client(max_batch=8)
    yield client
    client.close()


def together(client: Client, requests: list[dict[str, Any]]) -> list[httpx.Response]:
    """The requests sent at once: each reaches the pooling in the same turn of the event loop."""

    async def send() -> list[httpx.Response]:
        return await asyncio.gather(*(client._client.post(**request) for request in requests))

    return client._portal.call(send)


def stats(client: Client, op: str) -> dict[str, Any]:
    return client.get(f"/v2/models/{op}/stats").json()["model_stats"][0]


def inputs(count: int, shape: tuple[int, ...], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(count)]


def test_each_request_of_a_batch_gets_its_own_answer(batching):
    xs = inputs(6, (2, 3, 6, 6))
    document = {"kernel_size": 3, "stride": 2, "padding": 1, "return_indices": True}
    responses = together(batching, [{"url": "/pool/max2d", "json": {"input": x.tolist(), **document}} for x in xs])
    for x, response in zip(xs, responses, strict=True):
        assert response.status_code == 200
        out, indices = F.max_pool2d(torch.from_numpy(x), 3, 2, 1, return_indices=True)
        body = response.json()
        np.testing.assert_array_equal(np.array(body["output"], dtype=np.float32), out.numpy())
        np.testing.assert_array_equal(np.array(body["indices"]), indices.numpy())
    model = stats(batching, "max2d")
    assert model["inference_count"] == 6
    assert model["execution_count"] == 1
    assert [entry["batch_size"] for entry in model["batch_stats"]] == [6]
    assert model["batch_stats"][0]["compute_infer"]["count"] == 1


def test_batches_hold_one_plan_each_and_answer_in_every_encoding(batching):
    xs = inputs(8, (1, 2, 4, 4), seed=1)
    requests = []
    for i, x in enumerate(xs):
        document: dict[str, Any] = {"input": x.tolist(), "kernel_size": 2 if i % 2 else 4}
        if i % 4 == 1:
            document["output_encoding"] = "flat"
        requests.append({"url": "/pool/avg2d", "json": document})
    for i, (x, response) in enumerate(zip(xs, together(batching, requests), strict=True)):
        expected = F.avg_pool2d(torch.from_numpy(x), 2 if i % 2 else 4).numpy()
        output = response.json()["output"]
        got = np.array(output["data"]).reshape(output["shape"]) if i % 4 == 1 else np.array(output)
        np.testing.assert_allclose(got.astype(np.float32), expected, rtol=0, atol=0)
    model = stats(batching, "avg2d")
    # One batch for each plan: kernel 4; kernel 2; kernel 2 written flat (a parameter too).
    assert (model["inference_count"], model["execution_count"]) == (8, 3)


def test_layouts_and_binary_answers_are_sliced_per_request(batching):
    xs = inputs(4, (3, 5, 5, 2), seed=2)  # channels_last
    requests = []
    for x in xs:
        buffer = io.BytesIO()
        np.save(buffer, x)
        requests.append(
            {
                "url": "/pool/global-max2d?data_format=channels_last",
                "content": buffer.getvalue(),
                "headers": {"content-type": "application/x-npy", "accept": "application/x-npy"},
            }
        )
    for x, response in zip(xs, together(batching, requests), strict=True):
        got = np.load(io.BytesIO(response.content))
        np.testing.assert_array_equal(got, torch.from_numpy(x).amax(dim=(1, 2), keepdim=True).numpy())
    assert stats(batching, "global-max2d")["execution_count"] == 1


@pytest.mark.parametrize(
    ("op", "document"),
    [
        ("fractional-max2d", {"kernel_size": 2, "output_size": 2, "random_seed": 3}),  # draws per plane: alone
        ("lp2d", {"kernel_size": 2, "norm_type": 1.5}),  # torch's pow rounds by where an element lies
        ("max2d", {"kernel_size": 2, "return_indices": True, "indices_layout": "global"}),  # counts across the batch
    ],
)
def test_what_depends_on_the_whole_tensor_runs_alone(batching, op, document):
    xs = inputs(3, (2, 2, 4, 4), seed=4)
    responses = together(batching, [{"url": f"/pool/{op}", "json": {"input": x.tolist(), **document}} for x in xs])
    assert all(response.status_code == 200 for response in responses)
    model = stats(batching, op)
    assert model["execution_count"] == model["inference_count"] == 3
    if op == "max2d":  # the flat positions within each request's own input
        for x, response in zip(xs, responses, strict=True):
            _, plane = F.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
            offsets = torch.arange(4).reshape(2, 2, 1, 1) * 16
            np.testing.assert_array_equal(np.array(response.json()["indices"]), (plane + offsets).numpy())


def test_unbatched_inputs_and_max_batch_one_run_alone():
    client = Client(max_batch=1)
    try:
        xs = inputs(3, (1, 4, 4), seed=5)
        together(client, [{"url": "/pool/max2d", "json": {"input": x.tolist(), "kernel_size": 2}} for x in xs])
        assert stats(client, "max2d")["execution_count"] == 3
    finally:
        client.close()


def jobs(client: Client, xs: list[np.ndarray], kernel_size: int = 2) -> list[pipeline.Job[Any]]:
    runtime = client.app.state.runtime
    operation = runtime.operations["max2d"]
    made = []
    for x in xs:
        body = bytearray(httpx.Request("POST", "/", json={"input": x.tolist(), "kernel_size": kernel_size}).read())
        request = incoming({"headers": [(b"content-type", b"application/json")]}, None)  # type: ignore[arg-type]
        _, job = pipeline._prepared(operation, body, request, runtime, decode_native, Timings())
        made.append(job)
    return made


def test_a_request_that_left_is_dropped_from_its_batch(batching):
    runtime = batching.app.state.runtime
    xs = inputs(3, (1, 1, 4, 4), seed=6)

    async def run() -> list[Any]:
        answers = [runtime.batcher.submit(job) for job in jobs(batching, xs)]
        answers[1].cancel()
        return await asyncio.gather(*answers, return_exceptions=True)

    first, second, third = batching._portal.call(run)
    assert isinstance(second, asyncio.CancelledError)
    for x, answer in ((xs[0], first), (xs[2], third)):
        expected = F.max_pool2d(torch.from_numpy(x), 2).numpy()
        np.testing.assert_array_equal(np.array(pipeline.orjson.loads(answer.body)["output"], np.float32), expected)


def test_a_batch_torch_refuses_is_answered_request_by_request(batching, monkeypatch):
    runtime = batching.app.state.runtime
    xs = inputs(3, (1, 1, 4, 4), seed=7)
    alone = pipeline.compute

    def refusing_batches(job: pipeline.Job[Any], batch: np.ndarray | None = None) -> Any:
        if batch is not None:
            raise RuntimeError("no batches today")
        return alone(job)

    monkeypatch.setattr("app.batching.compute", refusing_batches)

    async def run() -> list[Any]:
        return await asyncio.gather(*(runtime.batcher.submit(job) for job in jobs(batching, xs)))

    for x, answer in zip(xs, batching._portal.call(run), strict=True):
        expected = F.max_pool2d(torch.from_numpy(x), 2).numpy()
        np.testing.assert_array_equal(np.array(pipeline.orjson.loads(answer.body)["output"], np.float32), expected)


def test_inputs_in_another_memory_order_run_alone(batching):
    xs = inputs(3, (2, 3, 5, 5), seed=8)
    requests = []
    for x in xs:
        buffer = io.BytesIO()
        np.save(buffer, np.asfortranarray(x))  # torch reads it by another path, summing in another order
        headers = {"content-type": "application/x-npy"}
        requests.append({"url": "/pool/global-avg2d", "content": buffer.getvalue(), "headers": headers})
    for x, response in zip(xs, together(batching, requests), strict=True):
        expected = F.adaptive_avg_pool2d(torch.from_numpy(np.asfortranarray(x)), 1).numpy()
        np.testing.assert_array_equal(np.load(io.BytesIO(response.content))["output"], expected)
    assert stats(batching, "global-avg2d")["execution_count"] == 3


def test_an_answer_that_cannot_be_given_leaves_no_request_waiting(batching, monkeypatch):
    runtime = batching.app.state.runtime
    xs = inputs(3, (1, 1, 4, 4), seed=9)
    made = jobs(batching, xs)

    def broken(job: pipeline.Job[Any], out: np.ndarray, indices: np.ndarray | None) -> Any:
        raise StopIteration  # what no future can carry

    made[0].decoded.encode = broken

    async def run() -> list[Any]:
        return await asyncio.wait_for(
            asyncio.gather(*(runtime.batcher.submit(job) for job in made), return_exceptions=True), 5
        )

    first, *rest = batching._portal.call(run)
    assert isinstance(first, RuntimeError)
    for x, answer in zip(xs[1:], rest, strict=True):
        expected = F.max_pool2d(torch.from_numpy(x), 2).numpy()
        np.testing.assert_array_equal(np.array(pipeline.orjson.loads(answer.body)["output"], np.float32), expected)
    assert made[0].timings is not None and made[0].timings.execution == 3  # the batch ran, and is counted


BATCHABLE = [name for name, operation in OPERATIONS.items() if operation.family.batchable]
PARAMETERS = {
    "max": {"kernel_size": 3, "stride": 2, "padding": 1, "return_indices": True},
    "avg": {"kernel_size": 3, "stride": 2, "padding": [[0, 1]], "count_include_pad": False},
    "adaptive-max": {"output_size": 3, "return_indices": True},
    "adaptive-avg": {"output_size": 3},
    "global-max": {"return_indices": True, "keepdims": False},
    "global-avg": {},
}


@pytest.mark.parametrize("op", BATCHABLE)
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int32", "int64"])
def test_a_batched_answer_is_the_answer_alone_byte_for_byte(batching, op, dtype):
    operation = OPERATIONS[op]
    if dtype not in operation.family.dtypes:
        pytest.skip(f"{op} takes no {dtype}")
    parameters = dict(PARAMETERS[operation.family.name])
    if operation.family.name == "avg":
        parameters["padding"] = parameters["padding"] * operation.rank
    rng = np.random.default_rng(10)
    shape = (2, 3, *([7] * operation.rank))
    carrier = "float32" if dtype == "bfloat16" else dtype  # numpy has no bfloat16; JSON carries it
    xs = [(rng.standard_normal(shape) * 100).astype(carrier) for _ in range(5)]
    if dtype == "int64":
        xs = [x * 2**50 for x in xs]  # beyond float64's exact integers, where int64 pooling takes its own path
    requests = [{"url": f"/pool/{op}", "json": {"input": x.tolist(), "dtype": dtype, **parameters}} for x in xs]
    alone = [batching.post(**request) for request in requests]
    batched = together(batching, requests)
    assert [response.status_code for response in alone] == [200] * 5
    assert [response.content for response in batched] == [response.content for response in alone]
    model = stats(batching, op)
    assert (model["inference_count"], model["execution_count"]) == (10, 6)  # five alone, then one batch


def test_a_family_with_tensors_besides_the_input_cannot_be_declared_batchable():
    import dataclasses

    unpool = next(operation.family for operation in OPERATIONS.values() if operation.family.extra_tensors)
    with pytest.raises(ValueError, match="cannot be batched"):
        dataclasses.replace(unpool, batchable=True)
