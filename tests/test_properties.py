"""Drawn shapes and parameters: the service accepts what torch accepts, with torch's result,
and refuses what torch refuses with a 422 (never a 500)."""

from __future__ import annotations

import numpy as np
import orjson
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reference import every_window_meets_input

FUNCTIONS = {
    "max": lambda r: getattr(F, f"max_pool{r}d"),
    "avg": lambda r: getattr(F, f"avg_pool{r}d"),
}


@st.composite
def sliding_requests(draw):
    family = draw(st.sampled_from(["max", "avg"]))
    rank = draw(st.integers(1, 3))
    batched = draw(st.booleans())
    spatial = draw(st.lists(st.integers(1, 7), min_size=rank, max_size=rank))
    shape = ([draw(st.integers(1, 2))] if batched else []) + [draw(st.integers(1, 2))] + spatial
    per_dim = st.lists(st.integers(1, 4), min_size=rank, max_size=rank)
    params = {
        "kernel_size": draw(per_dim),
        "stride": draw(per_dim),
        "padding": draw(st.lists(st.integers(0, 2), min_size=rank, max_size=rank)),
    }
    params["ceil_mode"] = draw(st.booleans())
    if family == "max":
        params["dilation"] = draw(st.lists(st.integers(1, 3), min_size=rank, max_size=rank))
        params["return_indices"] = True
    else:
        params["count_include_pad"] = draw(st.booleans())
        if rank > 1 and draw(st.booleans()):
            params["divisor_override"] = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31))
    return family, rank, shape, params, seed


def _torch(family, rank, x, params):
    p = dict(params)
    if family == "avg" and rank == 1:
        p.pop("divisor_override", None)
    return FUNCTIONS[family](rank)(torch.from_numpy(x), **p)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(sliding_requests())
def test_agrees_with_torch_on_accept_refuse_and_values(client, request_case):
    family, rank, shape, params, seed = request_case
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    response = client.post(
        f"/pool/{family}{rank}d",
        content=orjson.dumps({"input": x.tolist(), **params}),
        headers={"content-type": "application/json"},
    )
    try:
        want = _torch(family, rank, x, params)
    except (RuntimeError, ValueError):
        assert response.status_code == 422, response.text
        return
    pads = [(p, p) for p in params["padding"]]
    dilation = params.get("dilation", [1] * rank)
    if not every_window_meets_input(
        shape[-rank:], params["kernel_size"], params["stride"], dilation, pads, params["ceil_mode"]
    ):
        # torch pools a window of padding alone (to -inf); the contract refuses it.
        assert response.status_code == 422, response.text
        return
    assert response.status_code == 200, response.text
    body = response.json()
    if family == "max":
        out, indices = want
        np.testing.assert_array_equal(np.array(body["output"], np.float32), out.numpy())
        np.testing.assert_array_equal(np.array(body["indices"]), indices.numpy())
    else:
        np.testing.assert_allclose(np.array(body["output"], np.float32), want.numpy(), rtol=1e-6, atol=1e-6)
