"""Large JSON documents are read a piece at a time (`app.jsonparse`), and read exactly
as orjson reads them whole: the same document, or an error where orjson finds one."""

from __future__ import annotations

import json
import threading
import time

import httpx
import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from app import codecs, jsonparse

TEXT = st.text(alphabet=st.sampled_from(list('ab,[]{}":\\\n\u00e9 ')), max_size=8)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(TEXT, inner, max_size=5),
    max_leaves=40,
)


def _written(value, spaced: bool) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode() if spaced else orjson.dumps(value)


@pytest.fixture
def small_pieces(monkeypatch):
    monkeypatch.setattr(jsonparse, "PIECE", 7)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES, spaced=st.booleans())
@example(value={"a": [[1, 2], [3, 4]], "b": "x,y]"}, spaced=True)
@example(value=[{"\\": ['"', "\\\\", '\\"']}], spaced=False)
def test_a_document_in_pieces_is_the_document(small_pieces, value, spaced):
    text = _written(value, spaced)
    assert jsonparse.loads(text) == orjson.loads(text)


@settings(max_examples=600, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=VALUES, data=st.data())
@example(value=[1, 2], data=None)
def test_a_broken_document_in_pieces_is_refused_as_orjson_refuses_it(small_pieces, value, data):
    text = bytearray(orjson.dumps(value))
    if data is not None and text:
        at = data.draw(st.integers(0, len(text) - 1))
        edit = data.draw(st.sampled_from(["drop", "insert"]))
        if edit == "drop":
            del text[at]
        else:
            text.insert(at, ord(data.draw(st.sampled_from(list(',[]{}":\\ 1')))))
    else:
        text = bytearray(b"[1,2,]")
    try:
        whole = orjson.loads(text)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            jsonparse.loads(text)
        return
    assert jsonparse.loads(text) == whole


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":[[1]],"b":[[2]],"a":[[3],[4],[5],[6],[7],[8],[9],[10],[11]]}',
        b'{"a":[1,2,3,4,5,6,7,8],"b":{"c":[1,2,3,4,5,6],"c":[7,8,9,10,11]},"a":{"x":[1,2,3,4,5,6,7]}}',
        b"[1,2,3,4,5,6,7,8,9,10,11," + b" " * 100 + b"\n" * 70 + b"12]",
        b'{"k\\"ey":[1,2,3,4,5,6,7,8,9],"k\\"ey":[[1,2],[3,4,5,6,7,8]]}',
    ],
)
def test_repeated_keys_escapes_and_long_whitespace_across_cuts(small_pieces, text):
    assert jsonparse.loads(text) == orjson.loads(text)


@pytest.mark.parametrize(
    "text", [b"[" * 5000, b"[1," * 2000 + b"1" + b"]" * 2000, b'{"a":"' + b"\\\\" * 500 + b'"}', b'"' * 3001]
)
def test_deep_nesting_and_long_strings_across_cuts(small_pieces, text):
    try:
        whole = orjson.loads(text)
    except orjson.JSONDecodeError:
        with pytest.raises(orjson.JSONDecodeError):
            jsonparse.loads(text)
        return
    assert jsonparse.loads(text) == whole


def test_a_large_tensor_document_is_read_whole():
    rows = [[float(i % 7) + 0.5] * 300 for i in range(4000)]
    text = orjson.dumps({"input": [[rows]], "kernel_size": 2, "id": 'a"b,[c'})
    assert len(text) > 4 * jsonparse.PIECE
    assert jsonparse.loads(text) == orjson.loads(text)


def test_a_large_json_body_leaves_the_service_answering(server):
    """While a 60 MiB nested JSON body is read, pooled and written back as JSON,
    `/healthz` keeps answering within a loose bound (the tight figures: the soak benchmark)."""
    row = b"[" + b",".join([b"1.5"] * 4000) + b"]"
    body = b'{"input":[[[' + b",".join([row] * 4000) + b']]],"kernel_size":2,"output_encoding":"flat"}'
    answer: dict[str, httpx.Response] = {}

    def send() -> None:
        answer["big"] = httpx.post(
            f"{server}/pool/max2d", content=body, headers={"content-type": "application/json"}, timeout=120
        )

    sender = threading.Thread(target=send)
    slowest = 0.0
    with httpx.Client(base_url=server, timeout=10) as client:
        sender.start()
        while sender.is_alive():
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            slowest = max(slowest, time.perf_counter() - started)
            time.sleep(0.02)
    sender.join()
    big = answer["big"]
    assert big.status_code == 200, big.text[:300]
    result = big.json()
    assert result["shape"] == [1, 1, 2000, 2000] and result["output"]["data"][:3] == [1.5, 1.5, 1.5]
    assert len(result["output"]["data"]) == 2000 * 2000
    assert slowest < 1, f"/healthz took {slowest:.2f} s while a large JSON body was read"


LEAVES = (
    st.integers(-(2**64), 2**64) | st.floats(allow_nan=False) | st.sampled_from(["NaN", "Infinity", "x", True, None])
)


def _rows(depth: int, draw) -> list:
    """A nested list, mostly rectangular, sometimes ragged."""
    if depth == 0:
        return draw(st.lists(LEAVES, min_size=0, max_size=5))
    width = draw(st.integers(0, 4))
    rows = [_rows(depth - 1, draw) for _ in range(width)]
    if rows and draw(st.booleans()):  # rectangular: every row as the first
        rows = [rows[0]] * width
    return rows


def _decoded(value, dtype):
    try:
        tensor = codecs.decode_json_tensor(
            value, loc=("input",), dtype=dtype, dtype_given=True, limits=LIMITS, maybe_bools=True
        )
    except Exception as exc:  # the same error, whichever way the rows were read
        return type(exc), getattr(exc, "status", None)
    return tensor.array.dtype, tensor.array.shape, tensor.array.tobytes()


LIMITS = codecs.Limits(max_elements=10**6, max_ndim=6, max_work=10**9)


@settings(max_examples=300)
@given(data=st.data(), depth=st.integers(0, 3), dtype=st.sampled_from(["float32", "float64", "int64", "uint8"]))
def test_rows_read_in_groups_are_the_rows_read_at_once(data, depth, dtype):
    value = _rows(depth, data.draw)
    whole = _decoded(value, dtype)
    saved = codecs.ROWS_AT_ONCE
    codecs.ROWS_AT_ONCE = 2
    try:
        assert _decoded(value, dtype) == whole
    finally:
        codecs.ROWS_AT_ONCE = saved


@settings(max_examples=200)
@given(st.lists(st.floats() | st.integers(-5, 5).map(float), min_size=1, max_size=60), st.integers(1, 3))
def test_json_written_in_groups_is_json_written_at_once(values, rows):
    array = np.array(values[: len(values) // rows * rows] or values[:1]).reshape(rows if len(values) >= rows else 1, -1)
    whole = codecs.nested_json(array)
    saved = codecs.ROWS_AT_ONCE
    codecs.ROWS_AT_ONCE = 2
    try:
        assert codecs.nested_json(array) == whole
        assert codecs.nested_json(array[None, None]) == b"[[" + whole + b"]]"
    finally:
        codecs.ROWS_AT_ONCE = saved
