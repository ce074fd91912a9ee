"""The clients, sync and async, on httpx.

Tensors travel as binary .npy/.npz by default (`transport="json"` sends nested JSON instead).
A 503 (a refusal before any work) is retried after its `Retry-After`; any other error raises
`PoolError` with the problem's fields and the request id the service answered with.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import numpy as np
from numpy.typing import ArrayLike

from pooling_client._catalogue import OPERATIONS
from pooling_client._methods import AsyncOperations, Operations

try:
    import orjson
except ImportError:  # orjson is the `fast` extra; the standard library does the same, slower
    orjson = None  # type: ignore[assignment]

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
Transport = Literal["binary", "json"]
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class PoolError(Exception):
    """An error answer: its status, the problem's fields, and the request's id (`X-Request-ID`)."""

    def __init__(self, status: int, problem: dict[str, Any], request_id: str | None = None) -> None:
        self.status = status
        self.problem = problem
        self.title: str = problem.get("title", "")
        self.detail: str = problem.get("detail", "")
        self.errors: list[dict[str, Any]] | None = problem.get("errors")
        self.request_id = request_id or problem.get("request_id")
        super().__init__(f"{status} {self.title}: {self.detail}")


def dumps(document: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(document)
    return json.dumps(document, separators=(",", ":"), allow_nan=False).encode()


def loads(content: bytes) -> Any:
    return orjson.loads(content) if orjson is not None else json.loads(content)


def operation_name(op: str) -> str:
    """The service's name of an operation, given it or its method's name (`max_unpool2d`)."""
    name = op.replace("_", "-")
    if name not in OPERATIONS:
        raise ValueError(f"no operation {op!r}; the operations: {', '.join(OPERATIONS)}")
    return name


@dataclass(frozen=True)
class Call:
    """One request, built without sending it: shared by the sync and async clients."""

    path: str
    content: bytes
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)


def _nested(array: np.ndarray) -> Any:
    """A nested list; non-finite floats as the strings the service reads ("NaN", "Infinity")."""
    listed = array.tolist()
    if array.dtype.kind != "f" or bool(np.isfinite(array).all()):
        return listed

    def spelled(value: Any) -> Any:
        if isinstance(value, list):
            return [spelled(item) for item in value]
        if math.isnan(value):
            return "NaN"
        return value if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")

    return spelled(listed)


def build_call(op: str, x: ArrayLike | None, indices: ArrayLike | None, params: dict[str, Any], transport: str) -> Call:
    params = {key: value for key, value in params.items() if value is not None}
    path = f"/pool/{operation_name(op)}"
    if params.get("dry_run") or transport == "json":
        document = dict(params)
        if x is not None:
            document["input"] = _nested(np.asarray(x))
        if indices is not None:
            document["indices"] = np.asarray(indices).tolist()
        return Call(path, dumps(document), {"content-type": JSON, "accept": JSON})
    if x is None:
        raise ValueError("no tensor to send (a dry run takes input_shape instead)")
    out = io.BytesIO()
    if indices is None:
        np.save(out, np.asarray(x), allow_pickle=False)
        kind = NPY
    else:
        np.savez(out, input=np.asarray(x), indices=np.asarray(indices))
        kind = NPZ
    query = {key: dumps(value).decode() for key, value in params.items()}
    return Call(path, out.getvalue(), {"content-type": kind, "accept": NPZ}, query)


def read_answer(response: httpx.Response) -> Any:
    """The output; (output, indices) when indices came back; a dry run's plan as a dict."""
    if response.status_code >= 400:
        try:
            problem = loads(response.content)
            if not isinstance(problem, dict):
                raise ValueError
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:500]}
        raise PoolError(response.status_code, problem, response.headers.get("x-request-id"))
    if response.headers.get("content-type", "").startswith(NPZ):
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            output = archive["output"]
            return (output, archive["indices"]) if "indices" in archive.files else output
    body = loads(response.content)
    if body.get("output") is None:
        return body  # a dry run
    output = _json_tensor(body["output"], body["dtype"])
    return (output, _json_tensor(body["indices"], "int64")) if body.get("indices") is not None else output


def _json_tensor(value: Any, dtype: str) -> np.ndarray:
    if isinstance(value, dict) and "npy_base64" in value:
        loaded: np.ndarray = np.load(io.BytesIO(base64.b64decode(value["npy_base64"])), allow_pickle=False)
        return loaded

    def numbers(v: Any) -> Any:
        if isinstance(v, list):
            return [numbers(i) for i in v]
        return NON_FINITE.get(v, v) if isinstance(v, str) else v

    carrier = "float32" if dtype == "bfloat16" else dtype  # numpy has no bfloat16
    if isinstance(value, dict) and "data" in value:
        return np.array(numbers(value["data"]), dtype=carrier).reshape(value["shape"])
    return np.array(numbers(value), dtype=carrier)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


def _http_options(api_key: str | None, transport: str) -> dict[str, str]:
    if transport not in ("binary", "json"):
        raise ValueError(f"transport is binary or json, not {transport!r}")
    return {"authorization": f"Bearer {api_key}"} if api_key else {}


class PoolClient(Operations):
    """`client.max2d(x, kernel_size=2)`: one typed method per operation, or `client.pool("max2d", x, ...)`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        transport: Transport = "binary",
        retries: int = 3,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        headers = _http_options(api_key, transport)
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._http.headers.update(headers)
        self._transport, self._retries = transport, retries

    def pool(self, op: str, x: ArrayLike | None = None, *, indices: ArrayLike | None = None, **params: Any) -> Any:
        call = build_call(op, x, indices, params, self._transport)
        for attempt in range(self._retries + 1):
            response = self._http.post(call.path, content=call.content, headers=call.headers, params=call.params)
            if response.status_code != 503 or attempt == self._retries:
                return read_answer(response)
            time.sleep(_retry_after(response))
        raise AssertionError("unreachable")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncPoolClient(AsyncOperations):
    """The same, for asyncio: `await client.max2d(...)`."""

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        transport: Transport = "binary",
        retries: int = 3,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        headers = _http_options(api_key, transport)
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._http.headers.update(headers)
        self._transport, self._retries = transport, retries

    async def pool(
        self, op: str, x: ArrayLike | None = None, *, indices: ArrayLike | None = None, **params: Any
    ) -> Any:
        call = build_call(op, x, indices, params, self._transport)
        for attempt in range(self._retries + 1):
            response = await self._http.post(call.path, content=call.content, headers=call.headers, params=call.params)
            if response.status_code != 503 or attempt == self._retries:
                return read_answer(response)
            await asyncio.sleep(_retry_after(response))
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncPoolClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
