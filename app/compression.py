"""Content-Encoding in both directions for the pooling endpoint: a request body sent as gzip
or deflate (tritonclient's `request_compression_algorithm`) is inflated before it is
decoded, and an answer is compressed when `Accept-Encoding` asks for it.

The body limits hold for the inflated size: inflating stops, with a 413, as soon as it
passes `POOL_MAX_BODY_BYTES`, and counts against the shared body budget as it grows, so a
small compressed body cannot become a large one unseen. Inflating happens a piece at a time,
handing the event loop back between pieces; compressing a large answer happens in a worker
thread (zlib lets go of the interpreter's lock).
"""

from __future__ import annotations

import asyncio
import zlib

from app.errors import TooLarge, UndecodableBody, UnsupportedMediaType, shown
from app.negotiation import JSON, OCTET_STREAM
from app.requests import BodyBudget

# Content-Encoding -> zlib's window bits: gzip's header and trailer, or zlib's (HTTP's deflate).
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
SLICE = 1 << 16  # compressed bytes given to zlib at a time
PIECE = 1 << 20  # inflated bytes it may make of them at a time
SMALLEST = 1024  # answers shorter than this are sent as they are
ON_THE_LOOP = 1 << 14  # answers up to this size are compressed on the event loop (a fraction of a millisecond)
# Answers compressed when asked: JSON, and the protocol's binary tensors (tritonclient asks only
# when told to). A raw .npy or .npz answer is sent as it is: HTTP libraries ask for gzip by
# default, and tensors compress too little to pay for the time.
COMPRESSED = (JSON, OCTET_STREAM)


def request_coding(header: str | None) -> str | None:
    """The body's coding (None: as it is), or a 415 for one the service cannot read."""
    if header is None:
        return None
    coding = header.strip().lower()
    if coding in ("", "identity"):
        return None
    if coding not in WBITS:
        raise UnsupportedMediaType(
            f"Content-Encoding {shown(header)} is not one the service reads: gzip, deflate or identity"
        )
    return coding


async def inflate(body: bytearray, coding: str, limit: int, budget: BodyBudget) -> bytearray:
    """The body inflated within `limit` bytes, in a worker thread (zlib lets go of the
    interpreter's lock, so the event loop keeps serving). The budget holds `limit` bytes while
    it runs, then the inflated body's; the compressed body's bytes go back to it (the caller
    gives back the inflated body's, as for any body)."""
    try:
        budget.take(limit)
    except BaseException:
        budget.give_back(len(body))
        raise
    try:
        out = await asyncio.get_running_loop().run_in_executor(None, _inflate, body, coding, limit)
    except BaseException:
        budget.give_back(limit)
        raise
    finally:
        budget.give_back(len(body))
    budget.give_back(limit - len(out))
    return out


def _inflate(body: bytearray, coding: str, limit: int) -> bytearray:
    """A slice of input at a time (zlib copies what it leaves unconsumed), each gzip member in
    turn (RFC 1952 allows several), stopping as soon as the output passes `limit`."""
    out = bytearray()
    view = memoryview(body)
    start = 0
    while True:
        inflater = zlib.decompressobj(WBITS[coding])
        while start < len(view) and not inflater.eof:
            chunk = view[start : start + SLICE]
            start += len(chunk)
            pending: bytes | memoryview = chunk
            while pending:
                try:
                    piece = inflater.decompress(pending, PIECE)
                except zlib.error:
                    raise UndecodableBody(f"the body is not valid {coding}") from None
                if len(out) + len(piece) > limit:
                    raise TooLarge(f"the body inflates past the limit of {limit} bytes")
                out += piece
                pending = inflater.unconsumed_tail
                if not piece and not pending:
                    break
        if not inflater.eof:
            raise UndecodableBody(f"the {coding} body is cut short")
        rest = inflater.unused_data
        start -= len(rest)  # the next member starts where this one ended
        if start >= len(view):
            return out
        if WBITS[coding] == zlib.MAX_WBITS:
            raise UndecodableBody("the deflate body has data after its end")


def answer_coding(header: str | None) -> str | None:
    """gzip or deflate, whichever `Accept-Encoding` weighs more (gzip on a tie), else None."""
    if not header:
        return None
    accepted: dict[str, float] = {}
    for item in header[:1024].lower().split(","):
        name, _, parameters = item.strip().partition(";")
        weight = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.strip().partition("=")
            if key == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        accepted["gzip" if name.strip() == "x-gzip" else name.strip()] = weight
    weights = {coding: accepted.get(coding, accepted.get("*", 0.0)) for coding in ("gzip", "deflate")}
    best = max(weights, key=lambda coding: weights[coding])
    return best if weights[best] > 0 else None


def _compress(body: bytes, coding: str) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, WBITS[coding])  # fastest: tensors compress little
    return compressor.compress(body) + compressor.flush()


async def compress(body: bytes, coding: str) -> bytes:
    if len(body) <= ON_THE_LOOP:
        return _compress(body, coding)
    return await asyncio.get_running_loop().run_in_executor(None, _compress, body, coding)
