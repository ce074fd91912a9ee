"""The cost model: every plan knows its work before anything is allocated; work over
the cap is a 422 (`too_much_work`) before any size check; the window checks are
arithmetic whatever the client's numbers; the event loop keeps answering while
the costliest admitted request runs."""

from __future__ import annotations

import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.planning import _every_window_touches_input, floor_sum, window_count
from tests.conftest import assert_problem

ONE_PIXEL = [[[[1.0]]]]


@given(st.integers(1, 60), st.integers(1, 40), st.integers(-500, 500), st.integers(0, 500))
def test_floor_sum_is_the_sum_it_names(n, m, a, b):
    assert floor_sum(n, m, a, b) == sum((a * i + b) // m for i in range(n))


@settings(max_examples=400)
@given(
    size=st.integers(1, 12),
    kernel=st.integers(1, 6),
    stride=st.integers(1, 7),
    dilation=st.integers(1, 30),
    begin=st.integers(0, 60),
    end=st.integers(0, 60),
    ceil_mode=st.booleans(),
)
def test_window_check_is_the_cell_by_cell_answer(size, kernel, stride, dilation, begin, end, ceil_mode):
    count = window_count(size, kernel, stride, (begin, end), dilation, ceil_mode)
    if count < 1:
        return
    cell_by_cell = all(any(0 <= i * stride - begin + j * dilation < size for j in range(kernel)) for i in range(count))
    assert _every_window_touches_input(size, kernel, stride, begin, dilation, count) == cell_by_cell


def test_window_check_is_arithmetic_for_huge_counts():
    started = time.perf_counter()
    assert _every_window_touches_input(3, 2, 1, 10**15, 7, 10**15) is False
    assert _every_window_touches_input(10**12, 2, 1, 10**6 - 1, 10**6, 10**12) is True
    # Dilation beyond the input: which padded windows skip over it is counted, not walked.
    count = window_count(3, 2, 5, (10**13, 10**13), 10**13, False)
    assert count > 10**12 and _every_window_touches_input(3, 2, 5, 10**13, 10**13, count) is False
    assert _every_window_touches_input(3, 2, 10**13, 10**13, 10**13, 2) is True
    assert time.perf_counter() - started < 0.1


ATTACKS = [
    # A 1-pixel input, a huge kernel and padding: tiny on the wire, enormous in work.
    ("max2d", {"input": ONE_PIXEL, "kernel_size": 800, "stride": 1, "padding": [[799, 180], [799, 180]]}),
    ("avg2d", {"input": ONE_PIXEL, "kernel_size": 800, "stride": 1, "padding": [[799, 180], [799, 180]]}),
    (
        "lp2d",
        {"input": ONE_PIXEL, "norm_type": 2, "kernel_size": 800, "stride": 1, "padding": [[799, 180], [799, 180]]},
    ),
    # A dilated sum walks its kernel in Python: each step counts.
    ("avg1d", {"input": [[[1.0]]], "kernel_size": 4_000_000, "dilation": 2, "padding": [[0, 7_999_998]]}),
    ("lp1d", {"input": [[[1.0]]], "norm_type": 1, "kernel_size": 200_000, "dilation": 2, "padding": [[0, 399_998]]}),
    # A dilated sum walks each dimension's kernel over what the previous one left.
    (
        "avg2d",
        {
            "input": ONE_PIXEL,
            "kernel_size": [1000, 2],
            "dilation": [1, 16000],
            "padding": [[999, 999], [16000, 0]],
            "stride": 1,
        },
    ),
    # Uneven pads applied as torch's wider symmetric padding: all its windows count.
    ("max2d", {"input": [[[[0.0] * 300] * 300]], "kernel_size": 600, "stride": 1, "padding": [[0, 300], [0, 300]]}),
    # k^4 window cells from one pixel: every window of k x k over pads of k - 1.
    ("max2d", {"input": ONE_PIXEL, "kernel_size": 350, "stride": 1, "padding": [[349, 349]] * 2}),
]


@pytest.mark.parametrize(("op", "document"), ATTACKS, ids=[op for op, _ in ATTACKS])
def test_small_but_expensive_requests_are_refused_before_any_work(client, op, document):
    started = time.perf_counter()
    problem = assert_problem(client.post(f"/pool/{op}", json=document), 422, loc=["body"])
    assert time.perf_counter() - started < 1
    error = problem["errors"][0]
    assert error["type"] == "too_much_work" and "1000000000" in error["msg"] and "cells" in error["msg"]


def test_the_work_cap_is_located_where_the_parameters_arrived(client):
    document = ATTACKS[0][1]
    inputs = [{"name": "input", "shape": [1, 1, 1, 1], "datatype": "FP32", "data": [1.0]}]
    parameters = {key: value for key, value in document.items() if key != "input"}
    response = client.post("/v2/models/max2d/infer", json={"parameters": parameters, "inputs": inputs})
    problem = assert_problem(response, 422, loc=["parameters"])
    assert problem["errors"][0]["type"] == "too_much_work"


def test_the_cap_is_a_setting_and_a_dry_run_reports_the_work(make_client):
    small = make_client(max_work=1000)
    dry = {"dry_run": True, "input_shape": [1, 2, 8, 8], "kernel_size": 2}
    answer = small.post("/pool/max2d", json=dry).json()
    # 2 planes of 4x4 windows of 4 cells, and the input itself as the scratch.
    assert answer["work"] == 2 * 16 * 4 + 2 * 64
    big = small.post("/pool/max2d", json={**dry, "input_shape": [1, 8, 8, 8]})
    assert assert_problem(big, 422, loc=["body"])["errors"][0]["type"] == "too_much_work"


def test_a_parameter_fault_comes_before_a_size_check(make_client):
    client = make_client(max_elements=100)
    # The output would exceed the element limit too, but a window lies wholly in padding: 422.
    document = {
        "dry_run": True,
        "input_shape": [1, 1, 10, 10],
        "kernel_size": 2,
        "stride": 1,
        "padding": [[5, 0], [5, 5]],
    }
    assert_problem(client.post("/pool/max2d", json=document), 422, loc=["body", "padding"])


def test_the_event_loop_answers_while_the_costliest_admitted_request_runs(make_client):
    client = make_client(max_work=200_000_000)
    # Near the cap: a 1-pixel input whose padded windows cover 100x100 cells each.
    costly = {"input": ONE_PIXEL, "kernel_size": 100, "stride": 1, "padding": [[99, 99], [99, 99]]}
    dry = client.post(
        "/pool/max2d",
        json={**{k: v for k, v in costly.items() if k != "input"}, "dry_run": True, "input_shape": [1, 1, 1, 1]},
    ).json()
    assert 100_000_000 < dry["work"] <= 200_000_000
    done = threading.Event()
    statuses = []

    def run():
        statuses.append(client.post("/pool/max2d", json=costly).status_code)
        done.set()

    threading.Thread(target=run).start()
    time.sleep(0.05)
    started = time.perf_counter()
    assert client.get("/healthz").status_code == 200
    tiny = client.post("/pool/max2d", json={"input": [[[[1.0, 2.0], [3.0, 4.0]]]], "kernel_size": 2})
    assert tiny.status_code == 200 and time.perf_counter() - started < 1
    assert done.wait(30) and statuses == [200]
