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
# httpx asks for gzip by default; tensors compress little, and compressing costs the service
# more than sending them does on any network a pooling service sits on.
AS_IT_IS = {"accept-encoding": "identity"}


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


def _plain(value: Any) -> Any:
    """A parameter as JSON can carry it: numpy scalars as Python numbers, non-finite floats as
    the strings the service reads ("Infinity" for an Lp norm's p)."""
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def dumps(document: Any) -> bytes:
    if orjson is not None:
        return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)
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


def _flat(array: np.ndarray) -> dict[str, Any]:
    """A tensor in the service's flat JSON form, with its dtype, so integers travel exactly and
    every dtype comes back as itself; non-finite floats as the strings the service reads."""
    data = array.reshape(-1).tolist()
    if array.dtype.kind == "f" and not bool(np.isfinite(array).all()):
        data = [_plain(value) for value in data]
    return {"data": data, "shape": list(array.shape), "dtype": str(array.dtype)}


def build_call(op: str, x: ArrayLike | None, indices: ArrayLike | None, params: dict[str, Any], transport: str) -> Call:
    name = operation_name(op)
    required = OPERATIONS[name]["required"]
    # None means "the service's default", except for a required parameter, where it is a value
    # (an adaptive pool's output_size of null keeps every size).
    params = {key: _plain(value) for key, value in params.items() if value is not None or key in required}
    path = f"/pool/{name}"
    tensor = None if x is None else np.asarray(x)
    dtype = params.pop("dtype", None)
    if tensor is not None and dtype is not None and dtype != "bfloat16":
        tensor = tensor.astype(dtype)  # the tensor is sent in the dtype asked for
    if params.get("dry_run") or transport == "json" or dtype == "bfloat16":
        document = dict(params)
        if dtype is not None and tensor is None:
            document["dtype"] = dtype
        if tensor is not None:
            document["input"] = _flat(tensor)
            if dtype == "bfloat16":  # numpy has no bfloat16: the service rounds the values
                document["input"]["dtype"] = dtype
        if indices is not None:
            document["indices"] = _flat(np.asarray(indices))
        return Call(path, dumps(document), {"content-type": JSON, "accept": JSON, **AS_IT_IS})
    if tensor is None:
        raise ValueError("no tensor to send (a dry run takes input_shape instead)")
    out = io.BytesIO()
    if indices is None:
        np.save(out, tensor, allow_pickle=False)
        kind = NPY
    else:
        np.savez(out, input=tensor, indices=np.asarray(indices))
        kind = NPZ
    query = {key: dumps(value).decode() for key, value in params.items()}
    return Call(path, out.getvalue(), {"content-type": kind, "accept": NPZ, **AS_IT_IS}, query)


def read_answer(response: httpx.Response) -> Any:
    """The output; (output, indices) when indices came back; a dry run's plan as a dict. A
    bfloat16 output read from JSON comes back as float32 holding the same values (numpy has no
    bfloat16)."""
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


LONGEST_WAIT = 30.0  # seconds: a Retry-After beyond this is waited this long


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(LONGEST_WAIT, max(0.0, float(response.headers.get("retry-after", "1"))))
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
        # The key goes on this client's requests, not into a given http client's defaults.
        self._auth = _http_options(api_key, transport)
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._transport, self._retries = transport, retries

    def pool(self, op: str, x: ArrayLike | None = None, *, indices: ArrayLike | None = None, **params: Any) -> Any:
        call = build_call(op, x, indices, params, self._transport)
        for attempt in range(self._retries + 1):
            headers = {**call.headers, **self._auth}
            response = self._http.post(call.path, content=call.content, headers=headers, params=call.params)
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
        self._auth = _http_options(api_key, transport)
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._transport, self._retries = transport, retries

    async def pool(
        self, op: str, x: ArrayLike | None = None, *, indices: ArrayLike | None = None, **params: Any
    ) -> Any:
        call = build_call(op, x, indices, params, self._transport)
        for attempt in range(self._retries + 1):
            headers = {**call.headers, **self._auth}
            response = await self._http.post(call.path, content=call.content, headers=headers, params=call.params)
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
