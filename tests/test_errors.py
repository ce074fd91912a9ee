"""Each error status of the contract, with the field or problem it names."""

from __future__ import annotations

import base64
import io
import zipfile

import numpy as np
import orjson
import pytest

from tests.conftest import assert_problem, npy_bytes, npz_bytes

GRID = [[[[1, 1, 2, 4], [5, 6, 7, 8], [3, 2, 1, 0], [1, 2, 3, 4]]]]


def post_json(client, op, document, **headers):
    return client.post(
        f"/pool/{op}", content=orjson.dumps(document), headers={"content-type": "application/json", **headers}
    )


def post_raw(client, op, body, content_type="application/json"):
    return client.post(f"/pool/{op}", content=body, headers={"content-type": content_type})


# ---------------------------------------------------------------- 400


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (b"{not json", "not valid JSON"),
        (b'{"input": [1, 2', "not valid JSON"),
        (b'{"input": "\xff\xfe", "kernel_size": 2}', "not valid JSON"),
        (b'{"input": [[[[1e400, 1], [1, 1]]]], "kernel_size": 2}', "not valid JSON"),
    ],
)
def test_undecodable_json_is_400(client, body, detail):
    assert_problem(post_raw(client, "max2d", body), 400, detail_has=detail)


@pytest.mark.parametrize(
    ("tensor", "detail"),
    [
        ([[[[1, 2], [3]]]], "ragged"),
        ([[[[1, True], [3, 4]]]], "true"),
        ([[[[True, False], [True, True]]]], "booleans"),
        ([[[[1, None], [3, 4]]]], "null"),
        ([[[[1, "NaNa"], [3, 4]]]], "NaNa"),
        ([[[[1, "1.5"], [3, 4]]]], "1.5"),
        ({"data": [1, 2, 3], "shape": [1, 1, 2, 2]}, "needs 4"),
        ({"data": [[1, 2], [3, 4]], "shape": [1, 1, 2, 2]}, "one-dimensional"),
        ({"npy_base64": "AAA*"}, "base64"),
        ({"npy_base64": "AAAAA"}, "base64"),
        ({"npy_base64": base64.b64encode(b"not an npy file at all").decode()}, ".npy"),
    ],
)
def test_undecodable_tensor_is_400(client, tensor, detail):
    assert_problem(post_json(client, "max2d", {"input": tensor, "kernel_size": 2}), 400, detail_has=detail)


def test_booleans_among_numbers_are_caught_even_beside_boolean_parameters(client):
    document = {"input": [[[[1, 2], [False, 4]]]], "kernel_size": 2, "return_indices": True, "ceil_mode": False}
    assert_problem(post_json(client, "max2d", document), 400, detail_has="false")


def test_npy_data_shorter_than_its_header_is_400(client):
    body = npy_bytes(np.zeros((1, 1, 4, 4), np.float32))[:-4]
    assert_problem(post_raw(client, "max2d", body, "application/x-npy"), 400, detail_has="data bytes")


def test_pickled_npy_is_refused_and_never_loaded(client, tmp_path):
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    array = np.empty((1,), dtype=object)
    array[0] = Exploit()
    out = io.BytesIO()
    np.save(out, array, allow_pickle=True)
    response = post_raw(client, "max1d?kernel_size=1", out.getvalue(), "application/x-npy")
    assert_problem(response, 400, detail_has="pickled")
    assert not marker.exists()


def test_compressed_npz_member_is_400(client):
    out = io.BytesIO()
    np.savez_compressed(out, input=np.zeros((1, 1, 4, 4), np.float32))
    assert_problem(
        post_raw(client, "max2d?kernel_size=2", out.getvalue(), "application/x-npz"), 400, detail_has="compressed"
    )


def test_unknown_npz_member_is_400(client):
    body = npz_bytes(input=np.zeros((1, 1, 4, 4), np.float32), extra=np.zeros(1))
    assert_problem(post_raw(client, "max2d?kernel_size=2", body, "application/x-npz"), 400, detail_has="extra.npy")


def test_zip_that_is_not_a_zip_is_400(client):
    assert_problem(post_raw(client, "max2d?kernel_size=2", b"PK\x03\x04garbage", "application/x-npz"), 400)


def test_npz_member_with_a_wrong_name_is_400(client):
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("../input.npy", npy_bytes(np.zeros((1, 4, 4), np.float32)))
    assert_problem(post_raw(client, "max2d?kernel_size=2", out.getvalue(), "application/x-npz"), 400)


# ---------------------------------------------------------------- 404, 405, 406, 415


@pytest.mark.parametrize("path", ["/pool/max4d", "/pool/MAX2D", "/pool/max2d/extra", "/nothing"])
def test_unknown_route_is_404_problem(client, path):
    assert_problem(client.post(path, json={}), 404)


def test_wrong_method_is_405_problem(client):
    assert_problem(client.get("/pool/max2d"), 405)


def test_unacceptable_accept_is_406(client):
    response = post_json(client, "max2d", {"input": GRID, "kernel_size": 2}, accept="text/html")
    assert_problem(response, 406, detail_has="application/json")


def test_form_body_is_415_with_a_hint(client):
    response = post_raw(client, "max2d", b"input=1", "application/x-www-form-urlencoded")
    assert_problem(response, 415, detail_has="Content-Type: application/json")


def test_unknown_media_type_is_415(client):
    assert_problem(post_raw(client, "max2d", b"1,2,3", "text/csv"), 415)


# ---------------------------------------------------------------- 413


def test_declared_body_over_the_limit_is_413(make_client):
    small = make_client(max_body_bytes=1000)
    response = small.post("/pool/max2d", content=b"x" * 1001, headers={"content-type": "application/json"})
    assert_problem(response, 413, detail_has="1000")


def test_streamed_body_over_the_limit_is_413(make_client):
    small = make_client(max_body_bytes=1000)

    async def chunks():
        for _ in range(20):
            yield b"x" * 100

    response = small.post("/pool/max2d", content=chunks(), headers={"content-type": "application/json"})
    assert_problem(response, 413)


def test_npy_header_over_the_element_limit_is_413_before_reading(make_client):
    small = make_client(max_elements=100)
    header = npy_bytes(np.zeros((1, 1, 100, 100), np.uint8))[:128]  # the header alone, no data
    assert_problem(
        post_raw(small, "max2d?kernel_size=2", header, "application/x-npy"), 413, detail_has="10000 elements"
    )


def test_flat_shape_over_the_element_limit_is_413(make_client):
    small = make_client(max_elements=100)
    response = post_json(small, "max2d", {"input": {"data": [1], "shape": [1, 1, 1000, 1000]}, "kernel_size": 2})
    assert_problem(response, 413, detail_has="1000000")


def test_output_over_the_element_limit_is_413(make_client):
    small = make_client(max_elements=100)
    document = {"input": [[[1.0] * 10] * 5], "indices": [[[0] * 10] * 5], "kernel_size": 3}
    assert_problem(post_json(small, "max-unpool1d", document), 413, detail_has="output")


def test_too_many_dimensions_is_413(client):
    deep = [[[[[[[1.0]]]]]]]
    assert_problem(post_json(client, "max2d", {"input": deep, "kernel_size": 1}), 413, detail_has="dimensions")


# ---------------------------------------------------------------- 422


@pytest.mark.parametrize(
    ("op", "document", "loc"),
    [
        ("max2d", {"input": GRID, "kernal_size": 2}, ["body", "kernal_size"]),
        ("max2d", {"input": GRID, "kernel_size": "2"}, ["body", "kernel_size"]),
        ("max2d", {"input": GRID, "kernel_size": True}, ["body", "kernel_size"]),
        ("max2d", {"input": GRID, "kernel_size": 0}, ["body", "kernel_size", 0]),
        ("max2d", {"input": GRID, "kernel_size": [2, 2, 2]}, ["body", "kernel_size"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "stride": -1}, ["body", "stride", 0]),
        ("max2d", {"input": GRID}, ["body", "kernel_size"]),
        ("max2d", {"kernel_size": 2}, ["body", "input"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "ceil_mode": 1}, ["body", "ceil_mode"]),
        ("avg2d", {"input": GRID, "kernel_size": 2, "return_indices": True}, ["body", "return_indices"]),
        ("lp2d", {"input": GRID, "kernel_size": 2}, ["body", "norm_type"]),
        ("lp2d", {"input": GRID, "kernel_size": 2, "norm_type": 0}, ["body", "norm_type"]),
        ("lp2d", {"input": GRID, "kernel_size": 2, "norm_type": "Inf"}, ["body", "norm_type"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "dtype": "float8"}, ["body", "dtype"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "output_encoding": "xml"}, ["body", "output_encoding"]),
        ("max2d", {"input": GRID, "kernel_size": 3, "padding": 2}, ["body", "padding"]),
        ("max2d", {"input": GRID, "kernel_size": 5}, ["body", "kernel_size"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "padding": "full"}, ["body", "padding"]),
        ("max1d", {"input": [[[1, 2, 3]]], "kernel_size": 2, "padding": [1, 2]}, ["body", "padding"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "padding": [[2, 0], [0, 0]]}, ["body", "padding"]),
        ("avg1d", {"input": [[[1, 2, 3]]], "kernel_size": 2, "dilation": 3, "padding": [[4, 0]]}, ["body", "padding"]),
        ("lp2d", {"input": GRID, "kernel_size": 2, "norm_type": 2, "padding": [[1, 1]]}, ["body", "padding"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "data_format": "nhwc"}, ["body", "data_format"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "indices_layout": "flat"}, ["body", "indices_layout"]),
        ("avg2d", {"input": GRID, "kernel_size": 2, "indices_layout": "global"}, ["body", "indices_layout"]),
        ("global-avg2d", {"input": GRID, "keepdims": 0}, ["body", "keepdims"]),
        ("max2d", {"input": GRID, "kernel_size": 2, "dry_run": True}, ["body", "input_shape"]),
        ("max2d", {"input": GRID, "input_shape": [1, 1, 4, 4], "kernel_size": 2}, ["body", "input_shape"]),
        ("max2d", {"input_shape": [1, 1, 4, 4], "kernel_size": 2}, ["body", "input"]),
        ("max2d", {"dry_run": True, "input_shape": [1, 4, 4, 1, 1, 1], "kernel_size": 2}, ["body", "input_shape"]),
        (
            "avg2d",
            {"dry_run": True, "input_shape": [1, 1, 4, 4], "dtype": "int64", "kernel_size": 2},
            ["body", "input_shape"],
        ),
        ("max2d", {"input": GRID, "kernel_size": 2, "data_format": "channels_last"}, ["body", "kernel_size"]),
        ("fractional-max2d", {"input": GRID, "kernel_size": 2}, ["body", "output_size"]),
        (
            "fractional-max2d",
            {"input": GRID, "kernel_size": 2, "output_size": 2, "output_ratio": 0.5},
            ["body", "output_size"],
        ),
        ("fractional-max2d", {"input": GRID, "kernel_size": 2, "output_ratio": 1.5}, ["body", "output_ratio", 0]),
        ("fractional-max2d", {"input": GRID, "kernel_size": 2, "output_size": 4}, ["body", "output_size"]),
        (
            "fractional-max2d",
            {"input": GRID, "kernel_size": 2, "output_size": 2, "random_seed": -1},
            ["body", "random_seed"],
        ),
        ("adaptive-avg2d", {"input": GRID, "output_size": [0, 2]}, ["body", "output_size", 0]),
        ("max-unpool2d", {"input": [[[[6.0]]]], "indices": [[[[16]]]], "kernel_size": 2}, ["body", "indices"]),
        ("max-unpool2d", {"input": [[[[6.0]]]], "indices": [[[[1.5]]]], "kernel_size": 2}, ["body", "indices"]),
        ("max-unpool2d", {"input": [[[[6.0]]]], "indices": [[[[1, 2]]]], "kernel_size": 2}, ["body", "indices"]),
        (
            "max-unpool2d",
            {"input": [[[[6.0]]]], "indices": [[[[1]]]], "kernel_size": 2, "output_size": [9, 9]},
            ["body", "output_size"],
        ),
        ("max2d", {"input": [[1, 2], [3, 4]], "kernel_size": 1}, ["body", "input"]),
        ("max2d", {"input": [[[[]]]], "kernel_size": 1}, ["body", "input"]),
        ("max2d", {"input": 5, "kernel_size": 1}, ["body", "input"]),
        ("avg2d", {"input": GRID, "kernel_size": 2, "dtype": "int32"}, ["body", "input"]),
        ("max2d", {"input": [[[[1, 300]]]], "kernel_size": 1, "dtype": "uint8"}, ["body", "input"]),
        ("max2d", {"input": [[[[1.5, 3]]]], "kernel_size": 1, "dtype": "int32"}, ["body", "input"]),
        ("max2d", {"input": [[[[1e39, 3]]]], "kernel_size": 1}, ["body", "input"]),
        (
            "max2d",
            {"input": {"data": [1, 2], "shape": [1, 1, 2], "dtype": "float64"}, "dtype": "float32", "kernel_size": 1},
            ["body", "dtype"],
        ),
        (
            "max2d",
            {"input": {"data": [1], "shape": [1, 1, 1, 1], "unit": "m"}, "kernel_size": 1},
            ["body", "input", "unit"],
        ),
    ],
)
def test_invalid_parameters_are_422_naming_the_field(client, op, document, loc):
    assert_problem(post_json(client, op, document), 422, loc=loc)


def test_typo_gets_a_suggestion(client):
    problem = assert_problem(post_json(client, "max2d", {"input": GRID, "kernal_size": 2}), 422)
    assert problem["errors"][0]["loc"] == ["body", "kernal_size"]
    assert "kernel_size" in problem["errors"][0]["msg"]


def test_body_that_is_not_an_object_is_422(client):
    assert_problem(post_raw(client, "max2d", b"[1, 2, 3]"), 422, loc=["body"])


def test_npy_dtype_disagreeing_with_dtype_field_is_422(client):
    body = npy_bytes(np.zeros((1, 4, 4), np.float64))
    assert_problem(
        post_raw(client, "max2d?kernel_size=2&dtype=float32", body, "application/x-npy"), 422, loc=["query", "dtype"]
    )


@pytest.mark.parametrize("dtype", [np.bool_, np.complex64, np.uint16])
def test_unsupported_npy_dtypes_are_422(client, dtype):
    body = npy_bytes(np.zeros((1, 4, 4), dtype))
    assert_problem(post_raw(client, "max2d?kernel_size=2", body, "application/x-npy"), 422)


def test_bfloat16_as_npy_says_why(client):
    body = npy_bytes(np.zeros((1, 4, 4), np.dtype("V2")))
    assert_problem(post_raw(client, "max2d?kernel_size=2", body, "application/x-npy"), 422, detail_has="bfloat16")


def test_bfloat16_result_asked_as_npy_is_422(client):
    document = {"input": GRID, "kernel_size": 2, "dtype": "bfloat16"}
    assert_problem(post_json(client, "max2d", document, accept="application/x-npy"), 422, detail_has="bfloat16")
    document["output_encoding"] = "npy_base64"
    assert_problem(post_json(client, "max2d", document), 422, detail_has="bfloat16")


def test_query_parameters_beside_a_json_body_are_422(client):
    response = client.post("/pool/max2d?kernel_size=2", json={"input": GRID, "kernel_size": 2})
    assert_problem(response, 422, loc=["query", "kernel_size"])


def test_repeated_query_parameter_is_422(client):
    body = npy_bytes(np.zeros((1, 4, 4), np.float32))
    response = post_raw(client, "max2d?kernel_size=2&kernel_size=3", body, "application/x-npy")
    assert_problem(response, 422, loc=["query", "kernel_size"])


def test_server_still_answers_after_errors(client):
    response = post_json(client, "max2d", {"input": GRID, "kernel_size": 2, "return_indices": True})
    assert response.status_code == 200
    assert response.json()["output"] == [[[[6.0, 8.0], [3.0, 4.0]]]]


@pytest.mark.parametrize(
    "params",
    [
        {"kernel_size": 2, "stride": 1, "dilation": 10**12, "padding": [[10**12, 0]]},
        {"kernel_size": 10**9, "stride": 1, "padding": [[10**9, 10**9]]},
        {"kernel_size": 2, "stride": 1, "padding": [[0, 10**15]]},
        {"kernel_size": 3, "stride": 10**12, "dilation": 10**11, "padding": [[2 * 10**11, 2 * 10**11]]},
    ],
)
def test_huge_windows_and_padding_are_refused_before_any_allocation(client, params):
    """A tiny input with enormous padding or dilation must not make the server pad or walk it."""
    response = post_json(client, "avg1d", {"input": [[[1.0, 2.0, 3.0, 4.0, 5.0]]], **params})
    assert_problem(response, 413 if response.status_code == 413 else 422)
    response = post_json(client, "max1d", {"input": [[[1.0, 2.0, 3.0, 4.0, 5.0]]], **params})
    assert response.status_code in (413, 422)
