"""Sending a tensor to the service in each form the contract allows, and reading the answer."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import orjson

from tests.conftest import Client, load_npz, npy_bytes, npz_bytes

TRANSPORTS = ("json", "flat", "npy_base64", "npy", "npz")


def json_tensor(array: np.ndarray, form: str, dtype: str) -> Any:
    if form == "json":
        return array.tolist()
    if form == "flat":
        return {"data": array.ravel().tolist(), "shape": list(array.shape), "dtype": dtype}
    return {"npy_base64": base64.b64encode(npy_bytes(array)).decode()}


def query_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return orjson.dumps(value).decode() if None in value else ",".join(str(v) for v in value)
    return str(value)


def send(
    client: Client,
    op: str,
    params: dict[str, Any],
    x: np.ndarray,
    form: str,
    dtype: str = "float32",
    indices: np.ndarray | None = None,
    accept: str | None = None,
):
    headers = {"accept": accept} if accept else {}
    if form in ("npy", "npz"):
        query = {key: query_text(value) for key, value in params.items()}
        if form == "npy":
            body, media = npy_bytes(x), "application/x-npy"
        else:
            arrays = {"input": x} if indices is None else {"input": x, "indices": indices}
            body, media = npz_bytes(**arrays), "application/x-npz"
        return client.post(f"/pool/{op}", content=body, params=query, headers={"content-type": media, **headers})
    document: dict[str, Any] = {"input": json_tensor(x, form, dtype), **params}
    if form != "npy_base64":
        document["dtype"] = dtype
    if indices is not None:
        document["indices"] = json_tensor(indices, form, "int64")
    return client.post(
        f"/pool/{op}", content=orjson.dumps(document), headers={"content-type": "application/json", **headers}
    )


def read_tensor(value: Any, dtype: str) -> np.ndarray:
    if isinstance(value, dict) and "npy_base64" in value:
        return np.load(io.BytesIO(base64.b64decode(value["npy_base64"])), allow_pickle=False)
    if isinstance(value, dict):
        return _numbers(value["data"], dtype).reshape(value["shape"])
    return _numbers(value, dtype)


def _numbers(value: Any, dtype: str) -> np.ndarray:
    names = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}

    def walk(v: Any) -> Any:
        return [walk(i) for i in v] if isinstance(v, list) else names.get(v, v) if isinstance(v, str) else v

    return np.array(walk(value), dtype=np.float64 if dtype in ("float16", "bfloat16", "float32", "float64") else dtype)


def read_answer(response, dtype: str) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    """(output, indices or None, JSON fields or {}) from any form of answer."""
    assert response.status_code == 200, response.text
    media = response.headers["content-type"]
    if media.startswith("application/x-npz"):
        arrays = load_npz(response.content)
        return arrays["output"], arrays.get("indices"), {}
    if media.startswith("application/x-npy"):
        return np.load(io.BytesIO(response.content), allow_pickle=False), None, {}
    body = response.json()
    out = read_tensor(body["output"], dtype)
    indices = read_tensor(body["indices"], "int64") if body["indices"] is not None else None
    return out, indices, body
