"""Content-Encoding both ways: gzip and deflate bodies inflated within the body limits (a
compression bomb is a 413), answers compressed as Accept-Encoding asks, and tritonclient's
request and response compression working unchanged against a real server."""

from __future__ import annotations

import gzip
import io
import time
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tritonclient.http as triton

from tests.conftest import assert_problem, npy_bytes

X = np.random.default_rng(12).standard_normal((2, 3, 16, 16)).astype(np.float32)


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


CODINGS = {"gzip": gzip.compress, "deflate": _deflate}
INFLATE = {"gzip": gzip.decompress, "deflate": zlib.decompress}


@pytest.mark.parametrize("coding", list(CODINGS))
def test_a_compressed_npy_body_and_a_compressed_json_answer(client, coding):
    response = client.post(
        "/pool/max2d?kernel_size=2&return_indices=true&output_encoding=flat",
        content=CODINGS[coding](npy_bytes(X)),
        headers={
            "content-type": "application/x-npy",
            "content-encoding": coding,
            "accept-encoding": coding,
            "accept": "application/json",
        },
    )
    assert response.status_code == 200
    assert response.headers["content-encoding"] == coding and response.headers["vary"] == "accept-encoding"
    # httpx inflates on its own; the length on the wire is the compressed one.
    assert int(response.headers["content-length"]) < len(response.content)
    want, want_indices = F.max_pool2d(torch.from_numpy(X), 2, return_indices=True)
    body = response.json()
    np.testing.assert_array_equal(np.array(body["output"]["data"], np.float32).reshape(want.shape), want.numpy())
    np.testing.assert_array_equal(np.array(body["indices"]["data"]).reshape(want.shape), want_indices.numpy())
    assert client.app.state.runtime.bodies.held == 0


def test_a_raw_npy_answer_is_sent_as_it_is(client):
    """HTTP libraries ask for gzip by default; tensors compress too little to pay for it."""
    response = client.post(
        "/pool/max2d?kernel_size=2",
        content=gzip.compress(npy_bytes(X)),
        headers={"content-type": "application/x-npy", "content-encoding": "gzip", "accept-encoding": "gzip"},
    )
    assert response.status_code == 200 and "content-encoding" not in response.headers
    with np.load(io.BytesIO(response.content)) as archive:
        np.testing.assert_array_equal(archive["output"], F.max_pool2d(torch.from_numpy(X), 2).numpy())


def test_several_gzip_members_are_one_body(client):
    document = b'{"input": [[[1, 5, 2, 4]]], "kernel_size": 2}'
    members = gzip.compress(document[:10]) + gzip.compress(document[10:])
    response = client.post(
        "/pool/max1d", content=members, headers={"content-type": "application/json", "content-encoding": "gzip"}
    )
    assert response.json()["output"] == [[[5.0, 4.0]]]


@pytest.mark.parametrize(
    ("header", "chosen"),
    [("deflate, gzip;q=0.5", "deflate"), ("gzip, deflate", "gzip"), ("x-gzip", "gzip"), ("*", "gzip"), ("*;q=0", None)],
)
def test_accept_encoding_weights(client, header, chosen):
    response = client.post(
        "/pool/max2d?kernel_size=2",
        content=npy_bytes(X),
        headers={"content-type": "application/x-npy", "accept": "application/json", "accept-encoding": header},
    )
    assert response.status_code == 200 and response.headers.get("content-encoding") == chosen


def test_answers_are_compressed_only_when_asked_and_worth_it(client):
    json_answer = {"content-type": "application/x-npy", "accept": "application/json"}
    plain = client.post(  # httpx asks for gzip unless told otherwise
        "/pool/max2d?kernel_size=2", content=npy_bytes(X), headers={**json_answer, "accept-encoding": "identity"}
    )
    assert "content-encoding" not in plain.headers
    refused = client.post(
        "/pool/max2d?kernel_size=2", content=npy_bytes(X), headers={**json_answer, "accept-encoding": "gzip;q=0, br"}
    )
    assert "content-encoding" not in refused.headers
    tiny = client.post("/pool/max1d", json={"input": [[[1, 2]]], "kernel_size": 2}, headers={"accept-encoding": "gzip"})
    assert tiny.status_code == 200 and "content-encoding" not in tiny.headers  # shorter than compressing pays for


def test_a_compression_bomb_is_a_413_before_it_is_inflated(make_client):
    client = make_client(max_body_bytes=1 << 20)
    bomb = gzip.compress(bytes(256 << 20), compresslevel=9)  # 256 MiB of zeros in about 250 kB
    assert len(bomb) < 1 << 20
    started = time.perf_counter()
    response = client.post(
        "/pool/max1d?kernel_size=2",
        content=bomb,
        headers={"content-type": "application/x-npy", "content-encoding": "gzip"},
    )
    assert_problem(response, 413, detail_has="inflates past the limit of 1048576 bytes")
    assert time.perf_counter() - started < 2
    assert client.app.state.runtime.bodies.held == 0


@pytest.mark.parametrize(
    ("headers", "content", "status", "detail"),
    [
        ({"content-encoding": "br"}, b"...", 415, "gzip, deflate or identity"),
        ({"content-encoding": "gzip"}, b"not gzip at all", 400, "not valid gzip"),
        (
            {"content-encoding": "gzip"},
            gzip.compress(b'{"input": [[[1, 2]]], "kernel_size": 2}')[:-6],
            400,
            "cut short",
        ),
        ({"content-encoding": "deflate"}, zlib.compress(b"{}") + b"more", 400, "data after its end"),
    ],
)
def test_bodies_that_cannot_be_inflated(client, headers, content, status, detail):
    response = client.post("/pool/max1d", content=content, headers={"content-type": "application/json", **headers})
    assert_problem(response, status, detail_has=detail)
    assert client.app.state.runtime.bodies.held == 0


def test_an_identity_coding_is_the_body_as_it_is(client):
    response = client.post(
        "/pool/max1d",
        json={"input": [[[1, 5, 2, 4]]], "kernel_size": 2},
        headers={"content-encoding": "identity"},
    )
    assert response.json()["output"] == [[[5.0, 4.0]]]


@pytest.mark.parametrize("request_coding", ["gzip", "deflate"])
@pytest.mark.parametrize("response_coding", ["gzip", "deflate", None])
def test_tritonclient_compression_both_ways(server, request_coding, response_coding):
    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    try:
        tensor = triton.InferInput("input", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = client.infer(
            "avg2d",
            [tensor],
            parameters={"kernel_size": 3, "stride": 2},
            request_compression_algorithm=request_coding,
            response_compression_algorithm=response_coding,
        )
        want = F.avg_pool2d(torch.from_numpy(X), 3, 2).numpy()
        np.testing.assert_allclose(result.as_numpy("output"), want, rtol=1e-6)
    finally:
        client.close()
