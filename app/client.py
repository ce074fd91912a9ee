"""A Python client for the pooling service, sync and async, on httpx.

    from app.client import PoolClient
    with PoolClient("http://127.0.0.1:8000", api_key="...") as client:
        output, indices = client.max2d(array, kernel_size=2, return_indices=True)

One method per operation, generated from `app.operations`, with the service's
parameter names. Tensors travel as binary .npy/.npz by default (`transport=
"json"` sends nested JSON instead). A 503 is retried after its `Retry-After`;
any other error raises `PoolError` with the problem's fields. It needs numpy,
httpx and orjson, not torch.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import numpy as np
import orjson

from app.negotiation import JSON, NPY, NPZ
from app.operations import OPERATIONS, Operation
from app.paths import pool_path

Result = Any  # np.ndarray, (output, indices), or a dry run's dict


class PoolError(Exception):
    """An error answer, with the problem's fields."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        self.title = problem.get("title", "")
        self.detail = problem.get("detail", "")
        self.errors = problem.get("errors")
        self.request_id = problem.get("request_id")
        super().__init__(f"{status} {self.title}: {self.detail}")


@dataclass(frozen=True)
class Call:
    """One request, built without sending it: shared by the sync and async clients."""

    path: str
    content: bytes
    headers: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)


def build_call(operation: Operation, x: Any, indices: Any, params: dict[str, Any], transport: str) -> Call:
    params = {name: value for name, value in params.items() if value is not None}
    path = pool_path(operation.name)
    if params.get("dry_run") or transport == "json":
        document = dict(params)
        if x is not None:
            document["input"] = np.asarray(x).tolist()
        if indices is not None:
            document["indices"] = np.asarray(indices).tolist()
        return Call(path, orjson.dumps(document), {"content-type": JSON, "accept": JSON})
    arrays = {"input": np.asarray(x)}
    if indices is not None:
        arrays["indices"] = np.asarray(indices)
    out = io.BytesIO()
    if len(arrays) == 1:
        np.save(out, arrays["input"], allow_pickle=False)
        kind = NPY
    else:
        np.savez(out, input=arrays["input"], indices=arrays["indices"])
        kind = NPZ
    query = {name: orjson.dumps(value).decode() for name, value in params.items()}
    return Call(path, out.getvalue(), {"content-type": kind, "accept": NPZ}, query)


def read_answer(response: httpx.Response) -> Result:
    if response.status_code >= 400:
        try:
            problem = response.json()
        except ValueError:
            problem = {"title": response.reason_phrase, "detail": response.text[:500]}
        raise PoolError(response.status_code, problem)
    if response.headers.get("content-type", "").startswith(NPZ):
        with np.load(io.BytesIO(response.content), allow_pickle=False) as archive:
            output = archive["output"]
            return (output, archive["indices"]) if "indices" in archive.files else output
    body = response.json()
    if body.get("output") is None:
        return body  # a dry run
    output = _json_tensor(body["output"], body["dtype"])
    return (output, _json_tensor(body["indices"], "int64")) if body.get("indices") is not None else output


def _json_tensor(value: Any, dtype: str) -> np.ndarray:
    if isinstance(value, dict) and "npy_base64" in value:
        return np.load(io.BytesIO(base64.b64decode(value["npy_base64"])), allow_pickle=False)
    names = {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}

    def numbers(v: Any) -> Any:
        return [numbers(i) for i in v] if isinstance(v, list) else names.get(v, v) if isinstance(v, str) else v

    carrier = "float32" if dtype == "bfloat16" else dtype
    if isinstance(value, dict) and "data" in value:
        return np.array(numbers(value["data"]), dtype=carrier).reshape(value["shape"])
    return np.array(numbers(value), dtype=carrier)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, float(response.headers.get("retry-after", "1")))
    except ValueError:
        return 1.0


class _Common:
    _http: httpx.Client | httpx.AsyncClient

    def _setup(self, api_key: str | None, transport: str, retries: int) -> None:
        """Keep the options; an API key goes on every request, a given `http` client's too."""
        self._transport, self._retries = transport, retries
        if api_key:
            self._http.headers["authorization"] = f"Bearer {api_key}"


def _method(operation: Operation) -> Callable[..., Any]:
    """`client.max2d(x, kernel_size=2)`: the client's `pool` for one operation."""

    def method(self: Any, x: Any = None, *, indices: Any = None, **params: Any) -> Any:
        return self.pool(operation.name, x, indices=indices, **params)

    method.__name__ = operation.method
    fields = ", ".join(name for name in operation.params.model_fields if name not in ("input", "indices"))
    method.__doc__ = f"{operation.family.summary} ({operation.reference}). Parameters: {fields}."
    return method


Client = TypeVar("Client", bound=_Common)


def _with_methods(cls: type[Client]) -> type[Client]:
    """One method per operation of the table."""
    for operation in OPERATIONS.values():
        setattr(cls, operation.method, _method(operation))
    return cls


@_with_methods
class PoolClient(_Common):
    _http: httpx.Client

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        transport: str = "binary",
        retries: int = 3,
        timeout: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        self._http = http or httpx.Client(base_url=base_url, timeout=timeout)
        self._setup(api_key, transport, retries)

    def pool(self, op: str, x: Any = None, *, indices: Any = None, **params: Any) -> Result:
        call = build_call(OPERATIONS[op], x, indices, params, self._transport)
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


@_with_methods
class AsyncPoolClient(_Common):
    """The same, for asyncio: `await client.max2d(...)`."""

    _http: httpx.AsyncClient

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        *,
        api_key: str | None = None,
        transport: str = "binary",
        retries: int = 3,
        timeout: float = 60.0,
        http: httpx.AsyncClient | None = None,
    ) -> None:
        self._http = http or httpx.AsyncClient(base_url=base_url, timeout=timeout)
        self._setup(api_key, transport, retries)

    async def pool(self, op: str, x: Any = None, *, indices: Any = None, **params: Any) -> Result:
        call = build_call(OPERATIONS[op], x, indices, params, self._transport)
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
