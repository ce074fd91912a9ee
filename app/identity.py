"""Who a request is from and which request it is, over HTTP or gRPC alike: the API key it
presents (headers or metadata), checked in constant time, and its request id."""

from __future__ import annotations

import hmac
import itertools
import os
import re
from collections.abc import Iterable

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def presented_key(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The key in `Authorization: Bearer <key>` or `X-API-Key: <key>` (HTTP headers or gRPC
    metadata, names in lower case)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value
    return None


def key_matches(keys: list[bytes], given: bytes | None) -> bool:
    """Whether `given` is one of `keys`: every key is compared, each in constant time, so
    timing tells nothing."""
    if given is None:
        return False
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(key, given)
    return matched


# New ids: a random prefix per process and a counter, 32 hex digits in all, unique
# across workers and restarts; reading the system's random source for each request
# would cost more than pooling a small tensor.
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count()


def request_id_from(given: bytes | None, fallback: str | None = None) -> str:
    """The client's X-Request-ID (header or metadata) when it is a sane token, else
    `fallback` (a trace id) or a new one."""
    if given is not None:
        text = given.decode("latin-1")
        if _REQUEST_ID.fullmatch(text):
            return text
    return fallback or f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFFFFFFFFFFFFFF:016x}"
