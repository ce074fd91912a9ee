"""Behaviour the contract pins down: its worked example, edge semantics, encodings, negotiation."""

from __future__ import annotations

import base64
import io

import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F

from tests.conftest import assert_problem, load_npz, npy_bytes, npz_bytes
from tests.reference import fractional_samples

GRID = [[[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]]]


def pool(client, op, **document):
    response = client.post(f"/pool/{op}", content=orjson.dumps(document), headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    return response.json()


def test_the_contract_example_exactly(client):
    body = pool(client, "max2d", input=GRID, kernel_size=2, return_indices=True)
    assert body == {
        "op": "max2d",
        "shape": [1, 1, 2, 2],
        "dtype": "float32",
        "output": [[[[6.0, 8.0], [3.0, 4.0]]]],
        "indices": [[[[5, 7], [8, 15]]]],
        "device": "cpu",
    }


def test_indices_key_is_present_and_null_without_return_indices(client):
    assert pool(client, "max2d", input=GRID, kernel_size=2)["indices"] is None
    assert pool(client, "avg2d", input=GRID, kernel_size=2)["indices"] is None


def test_nan_wins_a_max_and_carries_its_index(client):
    body = pool(client, "max1d", input=[[[1, "NaN", 3, 4]]], kernel_size=2, return_indices=True)
    assert body["output"] == [[["NaN", 4.0]]]
    assert body["indices"] == [[[1, 3]]]


def test_ties_take_the_first_index(client):
    assert pool(client, "max1d", input=[[[2, 2, 3, 3]]], kernel_size=2, return_indices=True)["indices"] == [[[0, 2]]]


def test_non_finite_values_travel_as_strings_both_ways(client):
    body = pool(client, "max1d", input=[[["Infinity", "-Infinity", "NaN", 1]]], kernel_size=1)
    assert body["output"] == [[["Infinity", "-Infinity", "NaN", 1.0]]]


def test_unbatched_indices_count_within_each_plane(client):
    plane = np.arange(16, dtype=np.float32).reshape(4, 4)
    body = pool(client, "max2d", input=np.stack([plane, plane]).tolist(), kernel_size=2, return_indices=True)
    assert body["indices"] == [[[5, 7], [13, 15]], [[5, 7], [13, 15]]]


def test_adaptive_none_keeps_that_input_size(client):
    x = np.arange(72, dtype=np.float32).reshape(1, 1, 8, 9)
    body = pool(client, "adaptive-max2d", input=x.tolist(), output_size=[None, 7])
    want = F.adaptive_max_pool2d(torch.from_numpy(x), (None, 7))
    assert body["shape"] == [1, 1, 8, 7]
    np.testing.assert_array_equal(np.array(body["output"], np.float32), want.numpy())


def test_avg_with_ceil_divides_overhanging_windows_by_their_clipped_size(client):
    assert pool(client, "avg2d", input=[[[1.0] * 3] * 3], kernel_size=2, ceil_mode=True)["output"] == [
        [[1.0, 1.0], [1.0, 1.0]]
    ]
    body = pool(client, "avg2d", input=[[[1.0] * 3] * 3], kernel_size=3, stride=1, padding=1)
    assert body["output"][0][0][0] == pytest.approx(4 / 9)


def test_lp_without_abs_follows_torch_on_negative_values(client):
    assert pool(client, "lp1d", input=[[[-1, -2]]], norm_type=1, kernel_size=2)["output"] == [[[-3.0]]]


def test_fractional_seed_reproduces_and_a_drawn_seed_is_returned(client):
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 9)).astype(np.float32)
    first = pool(client, "fractional-max2d", input=x.tolist(), kernel_size=2, output_size=4, random_seed=42)
    again = pool(client, "fractional-max2d", input=x.tolist(), kernel_size=2, output_size=4, random_seed=42)
    assert first["output"] == again["output"] and first["random_seed"] == 42
    drawn = pool(client, "fractional-max2d", input=x.tolist(), kernel_size=2, output_size=4)
    replay = pool(
        client, "fractional-max2d", input=x.tolist(), kernel_size=2, output_size=4, random_seed=drawn["random_seed"]
    )
    assert drawn["output"] == replay["output"]
    samples = fractional_samples(42, 2, 3, 2, torch.float32)
    want = F.fractional_max_pool2d(torch.from_numpy(x), 2, output_size=4, _random_samples=samples)
    np.testing.assert_array_equal(np.array(first["output"], np.float32), want.numpy())


def test_unpool_with_repeated_indices_keeps_the_largest(client):
    body = pool(client, "max-unpool1d", input=[[[3.0, 5.0, 4.0]]], indices=[[[1, 1, 1]]], kernel_size=2)
    assert body["output"] == [[[0.0, 5.0, 0.0, 0.0, 0.0, 0.0]]]


def test_unpool_round_trip_of_the_contract_example(client):
    body = pool(
        client, "max-unpool2d", input=[[[[6.0, 8.0], [3.0, 4.0]]]], indices=[[[[5, 7], [8, 15]]]], kernel_size=2
    )
    assert body["output"] == [[[[0, 0, 0, 0], [0, 6, 0, 8], [3, 0, 0, 0], [0, 0, 0, 4]]]]


def test_unpool_full_output_shape_is_accepted(client):
    body = pool(client, "max-unpool1d", input=[[[5.0]]], indices=[[[2]]], kernel_size=2, output_size=[1, 1, 3])
    assert body["output"] == [[[0.0, 0.0, 5.0]]]


def test_empty_batch_returns_an_empty_output(client):
    body = pool(client, "max2d", input={"data": [], "shape": [0, 1, 4, 4]}, kernel_size=2, return_indices=True)
    assert body["shape"] == [0, 1, 2, 2]
    assert body["output"] == {"data": [], "shape": [0, 1, 2, 2], "dtype": "float32"}


@pytest.mark.parametrize("dtype", ["int8", "int16", "int32", "int64", "uint8"])
def test_integer_max_pooling_is_exact_at_every_rank(client, dtype):
    info = np.iinfo(np.dtype(dtype))
    for rank, op in ((1, "max1d"), (2, "max2d"), (3, "max3d")):
        x = np.full((1, 2) + (4,) * rank, info.min, dtype=dtype)
        x.flat[5] = info.max
        x.flat[6] = info.max - 1
        body = pool(client, op, input=x.tolist(), dtype=dtype, kernel_size=2)
        # torch's integer max_pool1d needs return_indices; its values are the same.
        want = getattr(F, f"max_pool{rank}d")(torch.from_numpy(x), 2, return_indices=True)[0].numpy()
        np.testing.assert_array_equal(np.array(body["output"], dtype=dtype), want)
        assert np.array(body["output"]).max() == info.max and body["dtype"] == dtype


def test_int64_beyond_float_precision_survives_global_max(client):
    big = 2**62 + 1
    body = pool(client, "global-max1d", input=[[[big - 2, big, big - 1]]], dtype="int64", return_indices=True)
    assert body["output"] == [[[big]]] and body["indices"] == [[[1]]]


# ---------------------------------------------------------------- encodings and negotiation


def test_output_encoding_defaults_to_the_input_encoding_and_can_be_overridden(client):
    flat = {"data": [1, 1, 2, 4, 5, 6, 7, 8, 3, 2, 1, 0, 1, 2, 3, 4], "shape": [1, 1, 4, 4]}
    assert pool(client, "max2d", input=flat, kernel_size=2)["output"] == {
        "data": [6.0, 8.0, 3.0, 4.0],
        "shape": [1, 1, 2, 2],
        "dtype": "float32",
    }
    body = pool(client, "max2d", input=GRID, kernel_size=2, output_encoding="npy_base64", return_indices=True)
    output = np.load(io.BytesIO(base64.b64decode(body["output"]["npy_base64"])))
    indices = np.load(io.BytesIO(base64.b64decode(body["indices"]["npy_base64"])))
    np.testing.assert_array_equal(output, np.array([[[[6, 8], [3, 4]]]], np.float32))
    assert indices.dtype == np.int64 and indices.tolist() == [[[[5, 7], [8, 15]]]]


def test_base64_url_safe_unpadded_and_wrapped_is_accepted(client):
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) - 7.75
    text = base64.urlsafe_b64encode(npy_bytes(x)).decode().rstrip("=")
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    body = pool(client, "max2d", input={"npy_base64": wrapped}, kernel_size=2, output_encoding="json")
    assert body["output"] == F.max_pool2d(torch.from_numpy(x), 2).tolist()


@pytest.mark.parametrize("order", ["big-endian", "fortran"])
def test_npy_byte_order_and_memory_order_are_honoured(client, order):
    x = np.arange(24, dtype=np.float64).reshape(1, 2, 3, 4) * 1.5
    sent = x.astype(">f8") if order == "big-endian" else np.asfortranarray(x)
    response = client.post(
        "/pool/max2d?kernel_size=2,2", content=npy_bytes(sent), headers={"content-type": "application/x-npy"}
    )
    got = load_npz(response.content)["output"]
    np.testing.assert_array_equal(got, F.max_pool2d(torch.from_numpy(x), 2).numpy())


def test_binary_answers_follow_accept(client):
    x = np.array(GRID, dtype=np.float32)
    url = "/pool/max2d?kernel_size=2&return_indices=true"
    headers = {"content-type": "application/x-npy"}
    npz = client.post(url, content=npy_bytes(x), headers=headers)
    assert npz.headers["content-type"] == "application/x-npz"
    assert load_npz(npz.content)["indices"].tolist() == [[[[5, 7], [8, 15]]]]
    npy = client.post(url, content=npy_bytes(x), headers={**headers, "accept": "application/x-npy"})
    assert np.load(io.BytesIO(npy.content)).tolist() == [[[[6, 8], [3, 4]]]]
    as_json = client.post(url, content=npy_bytes(x), headers={**headers, "accept": "application/json"}).json()
    assert "npy_base64" in as_json["output"] and as_json["shape"] == [1, 1, 2, 2]


def test_json_request_can_ask_for_npz(client):
    response = client.post(
        "/pool/max2d",
        json={"input": GRID, "kernel_size": 2, "return_indices": True},
        headers={"accept": "application/x-npz"},
    )
    assert load_npz(response.content)["output"].tolist() == [[[[6, 8], [3, 4]]]]


@pytest.mark.parametrize(
    ("accept", "media"),
    [
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("text/html, application/x-npy;q=0.5", "application/x-npy"),
        ("application/json;q=0.2, application/x-npz;q=0.9", "application/x-npz"),
        ("application/json;q=0, */*;q=0.1", "application/x-npy"),
    ],
)
def test_accept_q_values_choose_among_offers(client, accept, media):
    response = client.post("/pool/max2d", json={"input": GRID, "kernel_size": 2}, headers={"accept": accept})
    assert response.status_code == 200 and response.headers["content-type"] == media


@pytest.mark.parametrize("content_type", [None, "APPLICATION/JSON; charset=utf-8"])
def test_json_media_type_is_optional_and_case_insensitive(client, content_type):
    headers = {"content-type": content_type} if content_type else {}
    request = client.post("/pool/max2d", content=orjson.dumps({"input": GRID, "kernel_size": 2}), headers=headers)
    assert request.status_code == 200 and request.json()["output"] == [[[[6.0, 8.0], [3.0, 4.0]]]]


def test_query_values_parse_as_json_lists_and_words(client):
    x = np.arange(72, dtype=np.float32).reshape(1, 1, 8, 9)
    response = client.post(
        "/pool/adaptive-avg2d?output_size=[null,3]&output_encoding=json",
        content=npy_bytes(x),
        headers={"content-type": "application/x-npy", "accept": "application/json"},
    )
    want = F.adaptive_avg_pool2d(torch.from_numpy(x), (None, 3))
    np.testing.assert_allclose(np.array(response.json()["output"]), want.numpy(), rtol=1e-6)
    lp = client.post(
        "/pool/lp1d?norm_type=Infinity&kernel_size=2",
        content=npy_bytes(np.array([[[1.0, -3.0, 2.0, 0.5]]], np.float32)),
        headers={"content-type": "application/x-npy", "accept": "application/x-npy"},
    )
    assert np.load(io.BytesIO(lp.content)).tolist() == [[[3.0, 2.0]]]


def test_unpool_from_an_npz_with_both_tensors(client):
    body = npz_bytes(input=np.array([[[[6.0, 8.0], [3.0, 4.0]]]], np.float32), indices=np.array([[[[5, 7], [8, 15]]]]))
    response = client.post(
        "/pool/max-unpool2d?kernel_size=2", content=body, headers={"content-type": "application/x-npz"}
    )
    assert load_npz(response.content)["output"].tolist() == [[[[0, 0, 0, 0], [0, 6, 0, 8], [3, 0, 0, 0], [0, 0, 0, 4]]]]


LARGE = np.random.default_rng(9).standard_normal((2, 8, 64, 64)).astype(np.float32)  # 256 KiB, the fast path


@pytest.mark.parametrize(
    "encode",
    [
        pytest.param(lambda b: base64.b64encode(b).decode(), id="standard"),
        pytest.param(lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="), id="url-safe-unpadded"),
        pytest.param(lambda b: base64.encodebytes(b).decode(), id="wrapped-lines"),
    ],
)
def test_large_base64_inputs_decode_in_every_form(client, encode):
    text = encode(npy_bytes(LARGE))
    want = F.max_pool2d(torch.from_numpy(LARGE), 2).numpy()
    for body in (
        orjson.dumps({"input": {"npy_base64": text}, "kernel_size": 2}),
        # Escaped solidus, as some encoders write it: the same string to JSON.
        orjson.dumps({"kernel_size": 2, "input": {"npy_base64": text}}).replace(b"/", b"\\/"),
    ):
        response = client.post("/pool/max2d", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 200, response.text
        got = np.load(io.BytesIO(base64.b64decode(response.json()["output"]["npy_base64"])))
        np.testing.assert_array_equal(got, want)


def test_large_base64_decoy_in_another_field_changes_nothing(client):
    text = base64.b64encode(npy_bytes(LARGE)).decode()
    decoy = base64.b64encode(npy_bytes(LARGE[:1])).decode()
    # A top-level "npy_base64" comes first: the fast cut must not take it for the input.
    document = orjson.dumps({"npy_base64": decoy, "input": {"npy_base64": text}, "kernel_size": 2})
    response = client.post("/pool/max2d", content=document, headers={"content-type": "application/json"})
    assert_problem(response, 422, loc=["body", "npy_base64"])
    corrupt = text[:100] + "*" + text[101:]
    response = client.post("/pool/max2d", json={"input": {"npy_base64": corrupt}, "kernel_size": 2})
    assert_problem(response, 400, detail_has="base64")
