"""The floor for small requests: a bare FastAPI endpoint that reads the body and
returns a constant JSON, served by the same uvicorn settings as the service."""

from __future__ import annotations

from fastapi import FastAPI, Request
from starlette.responses import Response

app = FastAPI()
CONSTANT = b'{"op":"max2d","shape":[1,1,2,2],"dtype":"float32"}'


@app.post("/pool/{op}")
async def pool(op: str, request: Request) -> Response:
    await request.body()
    return Response(CONSTANT, media_type="application/json")
