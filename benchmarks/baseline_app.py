"""The floor for small requests: a bare FastAPI endpoint that reads the body and
returns a constant JSON, served by the same uvicorn settings as the service.
Beside it, for reference, the least a FastAPI endpoint can do to pool: parse,
`max_pool2d` with indices, encode, with no checks at all.

    python -m benchmarks.baseline_app APP PORT   (APP: app, minimal or transport)

serves one of them on a loopback port as `python -m app` serves the service:
uvloop, the service's connection protocol (`app.connections`), no access log.
"""

from __future__ import annotations

import sys

import numpy as np
import orjson
import torch
import torch.nn.functional as F
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

from app.connections import http_protocol
from app.requests import BODY_INTO, DIRECT_READ_FROM

app = FastAPI()
CONSTANT = b'{"op":"max2d","shape":[1,1,2,2],"dtype":"float32"}'


@app.post("/pool/{op}")
async def pool(op: str, request: Request) -> Response:
    await request.body()
    return Response(CONSTANT, media_type="application/json")


minimal = FastAPI()


@minimal.post("/pool/{op}")
async def minimal_pool(op: str, request: Request) -> Response:
    document = orjson.loads(await request.body())
    with torch.inference_mode():
        x = torch.from_numpy(np.array(document["input"], dtype=np.float32))
        out, indices = F.max_pool2d(x, document["kernel_size"], return_indices=True)
    body = {"output": out.numpy(), "indices": indices.numpy()}
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")


async def transport(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """HTTP alone, as the service does it: the body read into one buffer of its declared
    length as it arrives (the rest of a large one straight from the socket), and an
    answer of as many bytes as the service's (the request's `x-answer-bytes`). What a
    large request costs before any framework or pooling runs."""
    if scope["type"] != "http":
        return
    headers = dict(scope["headers"])
    body = bytearray(int(headers.get(b"content-length", b"0")))
    direct = scope.get("extensions", {}).get(BODY_INTO)
    received, more = 0, True
    while more:
        message = await receive()
        chunk = message.get("body", b"")
        body[received : received + len(chunk)] = chunk
        received += len(chunk)
        more = message.get("more_body", False)
        if more and direct is not None and len(body) - received >= DIRECT_READ_FROM:
            received += await direct["into"](memoryview(body)[received:], lambda count: None)
            more = False
    answer = _answer(int(headers.get(b"x-answer-bytes", b"0")) or len(CONSTANT))
    head = [(b"content-type", b"application/octet-stream"), (b"content-length", b"%d" % len(answer))]
    await send({"type": "http.response.start", "status": 200, "headers": head})
    await send({"type": "http.response.body", "body": answer})


_ANSWERS: dict[int, bytes] = {}


def _answer(size: int) -> bytes:
    if size not in _ANSWERS:
        _ANSWERS[size] = b"\0" * size
    return _ANSWERS[size]


if __name__ == "__main__":
    name, port = sys.argv[1], int(sys.argv[2])
    uvicorn.run(
        f"benchmarks.baseline_app:{name}",
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http=http_protocol(),
        ws="none",
        server_header=False,
        access_log=False,
        log_level="warning",
    )
