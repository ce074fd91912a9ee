"""Inputs crafted to break the decoders: each is a 4xx problem+json (never a 500),
answered quickly, with a short error body; integers are exact or refused; a
request cut off by shutdown gets a problem+json 503."""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import zipfile

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F

from app import pipeline
from tests.conftest import assert_problem, json_post_scope, npy_bytes

NPY = {"content-type": "application/x-npy"}
NPZ = {"content-type": "application/x-npz"}


def npy_with_header(descr: str, shape: str, data: bytes = b"") -> bytes:
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (npy_with_header("<f4", "(0, 10**30)".replace("10**30", str(10**30))), 413),
        (npy_with_header("<f4", f"(1, 1, 0, {2**40}, {2**40})"), 413),
        (npy_with_header("|V0", "(1, 1, 2, 2)"), 422),
        (npy_with_header("<U0", "(1, 1, 2, 2)"), 422),
    ],
)
def test_npy_headers_that_describe_nothing_sensible(client, body, status):
    assert_problem(client.post("/pool/max2d?kernel_size=1", content=body, headers=NPY), status)


@pytest.mark.parametrize("shape", [[1, 1, 0, 2**40, 2**40], [0, 2**62, 1, 1]])
def test_flat_and_protocol_shapes_with_an_empty_dimension_beside_huge_ones(client, shape):
    flat = {"input": {"data": [], "shape": shape}, "kernel_size": 1}
    assert_problem(client.post("/pool/max2d", json=flat), 413)
    inputs = [{"name": "input", "shape": shape, "datatype": "FP32", "data": []}]
    assert_problem(
        client.post("/v2/models/max2d/infer", json={"parameters": {"kernel_size": 1}, "inputs": inputs}), 413
    )


@pytest.mark.parametrize("declared", ["²".encode("latin-1"), b"1" * 5000, b"-1", b"1e3"])
def test_inference_header_lengths_that_are_no_length(client, declared):
    response = client.post(
        "/v2/models/max2d/infer",
        content=b'{"inputs": []}',
        headers={"inference-header-content-length": declared, "content-type": "application/octet-stream"},
    )
    assert_problem(response, 400, detail_has="Inference-Header-Content-Length")


@pytest.mark.parametrize("where", ["inputs", "outputs"])
@pytest.mark.parametrize("parameters", [["binary_data_size", 4], "binary", 7])
def test_protocol_parameters_that_are_not_objects(client, where, parameters):
    entry = {"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    document = {"parameters": {"kernel_size": 2}, "inputs": [entry]}
    if where == "inputs":
        entry["parameters"] = parameters
    else:
        document["outputs"] = [{"name": "output", "parameters": parameters}]
    assert_problem(client.post("/v2/models/max2d/infer", json=document), 400, detail_has="parameters is an object")


def _npz_with_flags(flags: int) -> bytes:
    body = bytearray(io.BytesIO(_plain_npz()).getvalue())
    local = body.find(b"PK\x03\x04")
    central = body.find(b"PK\x01\x02")
    struct.pack_into("<H", body, local + 6, flags)
    struct.pack_into("<H", body, central + 8, flags)
    return bytes(body)


def _plain_npz() -> bytes:
    out = io.BytesIO()
    np.savez(out, input=np.ones((1, 1, 2, 2), np.float32))
    return out.getvalue()


@pytest.mark.parametrize("flags", [0x0001, 0x0020, 0x0040])
def test_npz_members_marked_encrypted_or_patched(client, flags):
    response = client.post("/pool/max2d?kernel_size=2", content=_npz_with_flags(flags), headers=NPZ)
    assert_problem(response, 400, detail_has=".npz")


def test_an_npz_whose_directory_lists_many_entries_is_refused_before_it_is_parsed(client):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for i in range(20_000):
            archive.writestr(f"m{i}.npy", b"")
    import time

    started = time.perf_counter()
    response = client.post("/pool/max2d?kernel_size=2", content=out.getvalue(), headers=NPZ)
    assert_problem(response, 400, detail_has="20000 members")
    assert time.perf_counter() - started < 1


def test_a_huge_unknown_dtype_is_not_echoed(client):
    huge = "x" * 1_000_000
    for document in (
        {"input": [[[[1.0]]]], "kernel_size": 1, "dtype": huge},
        {"input": {"data": [1.0], "shape": [1, 1, 1, 1], "dtype": huge}, "kernel_size": 1},
        {"input": [[[[1.0]]]], "kernel_size": 1, huge: 1},
    ):
        response = client.post("/pool/max2d", json=document)
        assert_problem(response, 422)
        assert len(response.content) < 2000
    inputs = [{"name": "input", "shape": [1, 1, 1, 1], "datatype": huge, "data": [1]}]
    response = client.post("/v2/models/max2d/infer", json={"parameters": {huge: 1}, "inputs": inputs})
    assert response.status_code == 400 and len(response.content) < 2000


# ---------------------------------------------------------------- integers, exactly

BIG = 2**63 - 1


@pytest.mark.parametrize(
    "values", [[BIG, 1, 2, 3], [BIG, 1.0, 2, 3], [-(2**63), 1.0, 2.0, BIG], [2**53 + 1, 0.0, 3, 2**53 + 3]]
)
def test_int64_values_near_the_edges_come_back_exactly(client, values):
    want = [max(values[0], values[1]), max(values[2], values[3])]
    nested = client.post("/pool/max1d", json={"input": [[values]], "kernel_size": 2, "dtype": "int64"})
    assert nested.status_code == 200 and nested.json()["output"] == [[want]]
    flat = {"input": {"data": values, "shape": [1, 1, 4]}, "kernel_size": 2, "dtype": "int64"}
    assert client.post("/pool/max1d", json=flat).json()["output"]["data"] == want
    inputs = [{"name": "input", "shape": [1, 1, 4], "datatype": "INT64", "data": values}]
    answer = client.post("/v2/models/max1d/infer", json={"parameters": {"kernel_size": 2}, "inputs": inputs})
    assert answer.json()["outputs"][0]["data"] == want


@pytest.mark.parametrize(
    "values",
    [
        [2**63, 1, 2, 3],
        [-(2**63) - 1, 1.0, 2, 3],
        [9007199254740993.0, 1, 2, 3],
        [1, "Infinity", 2, 3],
        [1, 2, "-Infinity", 3],
        [1, "NaN", 2**62, 3],
    ],
)
def test_int64_values_out_of_range_rounded_or_not_finite_are_422(client, values):
    response = client.post("/pool/max1d", json={"input": [[values]], "kernel_size": 2, "dtype": "int64"})
    assert_problem(response, 422, loc=["body", "input"])
    inputs = [{"name": "input", "shape": [1, 1, 4], "datatype": "INT64", "data": values}]
    response = client.post("/v2/models/max1d/infer", json={"parameters": {"kernel_size": 2}, "inputs": inputs})
    assert_problem(response, 422, loc=["inputs", 0, "data"])


@pytest.mark.parametrize("datatype", ["FP32", "FP16", "FP64"])
def test_protocol_unpooling_refuses_float_indices(client, datatype):
    inputs = [
        {"name": "input", "shape": [1, 1, 1], "datatype": "FP32", "data": [6.0]},
        {"name": "indices", "shape": [1, 1, 1], "datatype": datatype, "data": [1.7]},
    ]
    response = client.post("/v2/models/max-unpool1d/infer", json={"parameters": {"kernel_size": 2}, "inputs": inputs})
    assert_problem(response, 422, loc=["inputs", 1, "datatype"])


def test_a_protocol_dtype_that_disagrees_with_the_datatype_is_422(client):
    inputs = [{"name": "input", "shape": [1, 1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]
    document = {"parameters": {"kernel_size": 2, "dtype": "int8"}, "inputs": inputs}
    assert_problem(client.post("/v2/models/max1d/infer", json=document), 422, loc=["parameters", "dtype"])


# ---------------------------------------------------------------- shutdown


def test_a_request_cut_off_by_shutdown_gets_a_problem_503(client, monkeypatch):
    started = threading.Event()

    def slow_finish(job):
        started.set()
        threading.Event().wait(2)
        raise AssertionError("never answered")

    monkeypatch.setattr(pipeline, "finish", slow_finish)
    body = orjson.dumps({"input": np.zeros((1, 1, 300, 300)).tolist(), "kernel_size": 2})
    sent: list[dict] = []

    async def scenario() -> None:
        messages = iter([{"type": "http.request", "body": body, "more_body": False}])

        async def receive():
            try:
                return next(messages)
            except StopIteration:
                await asyncio.sleep(60)
                return {"type": "http.disconnect"}

        async def send(message):
            sent.append(message)

        scope = json_post_scope("/pool/max2d", len(body))
        task = asyncio.ensure_future(client.app(scope, receive, send))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    start = next(m for m in sent if m["type"] == "http.response.start")
    assert start["status"] == 503
    headers = dict(start["headers"])
    assert headers[b"content-type"] == b"application/problem+json" and headers[b"retry-after"] == b"1"
    body_sent = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert orjson.loads(body_sent)["status"] == 503


def test_npy_roundtrip_still_answers(client):
    response = client.post(
        "/pool/max2d?kernel_size=2", content=npy_bytes(np.ones((1, 1, 2, 2), np.float32)), headers=NPY
    )
    assert response.status_code == 200


# ---------------------------------------------------------------- found by an attacker's pass


@pytest.mark.parametrize("value", [2**63, 2**64 - 1, 2**41])
def test_spatial_integers_beyond_any_tensor_are_422_in_every_door(client, value):
    grid = [[[1.0, 2.0, 3.0]]]
    assert_problem(client.post("/pool/max1d", json={"input": grid, "kernel_size": 1, "stride": value}), 422)
    body = npy_bytes(np.ones((1, 1, 3), np.float32))
    response = client.post(f"/pool/max1d?kernel_size=1&dilation={value}", content=body, headers=NPY)
    assert_problem(response, 422, loc=["query", "dilation", 0])
    inputs = [{"name": "input", "shape": [1, 1, 3], "datatype": "FP32", "data": [1, 2, 3]}]
    document = {"parameters": {"kernel_size": 1, "stride": value}, "inputs": inputs}
    assert_problem(client.post("/v2/models/max1d/infer", json=document), 422, loc=["parameters", "stride", 0])


def test_an_npy_of_subarrays_is_422(client):
    body = npy_with_header("(2,)<f4", "(1, 1, 2)", b"\0" * 16)
    assert_problem(client.post("/pool/max1d?kernel_size=1", content=body, headers=NPY), 422)


@pytest.mark.parametrize(
    ("text", "value"),
    [("1", True), ("yes", True), ("on", True), ("True", True), ("0", False), ("t", True), ("N", False)],
)
def test_query_booleans_take_the_lax_forms(client, text, value):
    x = np.arange(5, dtype=np.float32)[None, None]
    response = client.post(
        f"/pool/max1d?kernel_size=2&ceil_mode={text}&return_indices={text}",
        content=npy_bytes(x),
        headers={**NPY, "accept": "application/json"},
    )
    body = response.json()
    assert response.status_code == 200 and body["shape"] == [1, 1, 3 if value else 2]
    assert (body["indices"] is not None) is value


def test_json_booleans_stay_strict(client):
    response = client.post("/pool/max1d", json={"input": [[[1.0, 2.0]]], "kernel_size": 2, "ceil_mode": 1})
    assert_problem(response, 422, loc=["body", "ceil_mode"])


def test_float_indices_are_422_even_when_integral(client):
    document = {"input": [[[[6.0]]]], "indices": [[[[1.0]]]], "kernel_size": 2}
    assert_problem(client.post("/pool/max-unpool2d", json=document), 422, loc=["body", "indices"])
    inputs = [
        {"name": "input", "shape": [1, 1, 1], "datatype": "FP32", "data": [6.0]},
        {"name": "indices", "shape": [1, 1, 1], "datatype": "INT64", "data": [1.0]},
    ]
    response = client.post("/v2/models/max-unpool1d/infer", json={"parameters": {"kernel_size": 2}, "inputs": inputs})
    assert_problem(response, 422, loc=["inputs", 1, "data"])


def test_bfloat16_values_that_round_to_infinity_are_422(client):
    document = {"input": [[[3.4e38, 1.0]]], "kernel_size": 2, "dtype": "bfloat16"}
    assert_problem(client.post("/pool/max1d", json=document), 422, loc=["body", "input"])
    fits = {"input": [[[3.38e38, 1.0]]], "kernel_size": 2, "dtype": "bfloat16"}
    assert client.post("/pool/max1d", json=fits).status_code == 200
    # An integer too large for int64 is read as a Python int: the same range holds.
    document = b'{"input": [[[%d, 1]]], "kernel_size": 2, "dtype": "bfloat16"}' % int(3.399e38)
    response = client.post("/pool/max1d", content=document, headers={"content-type": "application/json"})
    assert_problem(response, 422, loc=["body", "input"])


def test_a_dtype_that_disagrees_with_the_tensor_is_located_at_dtype(client):
    flat = {"input": {"data": [1.0, 2.0], "shape": [1, 1, 2], "dtype": "float64"}, "dtype": "float32", "kernel_size": 1}
    assert_problem(client.post("/pool/max1d", json=flat), 422, loc=["body", "dtype"])


def test_protocol_errors_from_the_router_carry_the_error_member(client):
    for response in (client.get("/v2/models/max2d/nothing"), client.post("/v2/models/max2d")):
        problem = response.json()
        assert response.status_code in (404, 405) and problem["error"] == problem["detail"]


def test_protocol_flags_are_booleans_and_binary_data_is_all_spoken_for(client):
    entry = {"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    document = {"parameters": {"kernel_size": 2, "binary_data_output": "false"}, "inputs": [entry]}
    assert_problem(client.post("/v2/models/max2d/infer", json=document), 400, detail_has="binary_data_output")
    binary_entry = {"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "parameters": {"binary_data_size": 16}}
    header = orjson.dumps({"parameters": {"kernel_size": 2}, "inputs": [binary_entry]})
    body = header + np.ones(4, np.float32).tobytes() + b"extra"
    response = client.post(
        "/v2/models/max2d/infer", content=body, headers={"inference-header-content-length": str(len(header))}
    )
    assert_problem(response, 400, detail_has="5 bytes")


@pytest.mark.parametrize(
    ("values", "dtype", "ok"),
    [
        ([[[70000, 1]]], "float16", False),  # integers past float16's range: not a silent infinity
        ([[[65504, 1]]], "float16", True),
        ([[[1e39, 1.0]]], "float32", False),
        ([[[2**62, 1]]], "float32", True),  # every int64 is within float32's range
    ],
)
def test_json_numbers_outside_the_dtypes_range_are_422(client, values, dtype, ok):
    response = client.post("/pool/max1d", json={"input": values, "kernel_size": 2, "dtype": dtype})
    if ok:
        assert response.status_code == 200
        expected = F.max_pool1d(torch.tensor(values, dtype=getattr(torch, dtype)), 2).numpy()
        np.testing.assert_array_equal(np.array(response.json()["output"], dtype=expected.dtype), expected)
    else:
        assert_problem(response, 422, loc=["body", "input"])
