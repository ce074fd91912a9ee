"""Where work runs (event loop or compute pool) and the plan cache change no answer."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.conftest import npy_bytes

X = np.random.default_rng(11).standard_normal((2, 3, 9, 8)).astype(np.float32)
REQUESTS = [
    ("max2d", {"kernel_size": 3, "stride": 2, "padding": "same", "return_indices": True}),
    ("avg2d", {"kernel_size": 2, "dilation": 2, "padding": [[1, 0], [0, 1]]}),
    ("adaptive-max2d", {"output_size": [4, None], "return_indices": True}),
    ("global-avg2d", {"keepdims": False}),
]


@pytest.mark.parametrize(("op", "params"), REQUESTS)
def test_inline_and_pooled_work_answer_alike(make_client, op, params):
    inline = make_client(inline_max_bytes=10**9, inline_max_work=10**9)
    pooled = make_client(inline_max_bytes=0, inline_max_work=0)
    for form in ({"input": X.tolist()}, {"input": {"npy_base64": base64.b64encode(npy_bytes(X)).decode()}}):
        answers = [c.post(f"/pool/{op}", json={**form, **params}).json() for c in (inline, pooled)]
        assert answers[0] == answers[1]


def test_cached_plans_never_fix_a_drawn_seed(client):
    document = {"input": X.tolist(), "kernel_size": 2, "output_size": 4}
    seeds = {client.post("/pool/fractional-max2d", json=document).json()["random_seed"] for _ in range(4)}
    assert len(seeds) == 4


def test_cached_plans_keep_shapes_and_dtypes_apart(client):
    params = {"kernel_size": 2, "return_indices": True}
    small = client.post("/pool/max2d", json={"input": X[:, :, :4, :4].tolist(), **params}).json()
    large = client.post("/pool/max2d", json={"input": X.tolist(), **params}).json()
    assert small["shape"] == [2, 3, 2, 2] and large["shape"] == [2, 3, 4, 4]
    assert client.post("/pool/avg2d", json={"input": X[:, :, :4, :4].tolist(), "kernel_size": 2}).status_code == 200
    as_int = client.post(
        "/pool/avg2d", json={"input": np.round(X[:, :, :4, :4] * 10).tolist(), "dtype": "int32", "kernel_size": 2}
    )
    assert as_int.status_code == 422  # the float32 plan cached for avg2d does not admit int32


def test_small_work_runs_torch_on_one_thread_and_the_pool_on_its_threads(make_client):
    """Torch keeps its thread count per thread: the event loop's microsecond work would
    only pay to wake the others (and leave them spinning on the cores the server needs)."""
    import torch

    client = make_client(torch_threads=2, max_concurrency=1)
    executor = client.app.state.runtime.executor

    async def counts() -> tuple[int, int]:
        # The pool's thread first runs work that calls no torch (a refused request does
        # not), then the event loop sets its own count, then the pool's thread pools.
        await executor.run(lambda: None)
        inline = executor.inline(torch.get_num_threads)
        return inline, await executor.run(torch.get_num_threads)

    assert client._portal.call(counts) == (1, 2)
    assert client._portal.call(counts) == (1, 2)  # and stays so, whichever ran last
