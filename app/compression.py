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
from app.requests import BodyBudget

# Content-Encoding -> zlib's window bits: gzip's header and trailer, or zlib's (HTTP's deflate).
WBITS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
PIECE = 1 << 20  # inflated bytes between two turns of the event loop
SMALLEST = 1024  # answers shorter than this are sent as they are
ON_THE_LOOP = 1 << 16  # answers up to this size are compressed on the event loop (well under a millisecond)


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
    """The body inflated, within `limit` bytes and the budget; the compressed body's bytes
    go back to the budget (the caller gives back the inflated body's, as for any body)."""
    inflater = zlib.decompressobj(WBITS[coding])
    out = bytearray()
    pending = bytes(body)
    try:
        while True:
            try:
                piece = inflater.decompress(pending, PIECE)
            except zlib.error:
                raise UndecodableBody(f"the body is not valid {coding}") from None
            if len(out) + len(piece) > limit:
                raise TooLarge(f"the body inflates past the limit of {limit} bytes")
            budget.take(len(piece))
            out += piece
            pending = inflater.unconsumed_tail
            if not piece and not pending:
                break
            await asyncio.sleep(0)  # let every other request have the loop between pieces
    except BaseException:
        budget.give_back(len(out))
        raise
    finally:
        budget.give_back(len(body))
    if not inflater.eof or inflater.unused_data:
        budget.give_back(len(out))
        raise UndecodableBody(f"the {coding} body is cut short, or has data after its end")
    return out


def answer_coding(header: str | None) -> str | None:
    """gzip or deflate where `Accept-Encoding` takes one (gzip first), else None."""
    if not header:
        return None
    accepted: dict[str, float] = {}
    for item in header.lower().split(","):
        name, _, parameters = item.strip().partition(";")
        weight = 1.0
        for parameter in parameters.split(";"):
            key, _, value = parameter.strip().partition("=")
            if key == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        accepted[name.strip()] = weight
    for coding in ("gzip", "deflate"):
        if accepted.get(coding, accepted.get("*", 0.0)) > 0:
            return coding
    return None


def _compress(body: bytes, coding: str) -> bytes:
    compressor = zlib.compressobj(1, zlib.DEFLATED, WBITS[coding])  # fastest: tensors compress little
    return compressor.compress(body) + compressor.flush()


async def compress(body: bytes, coding: str) -> bytes:
    if len(body) <= ON_THE_LOOP:
        return _compress(body, coding)
    return await asyncio.get_running_loop().run_in_executor(None, _compress, body, coding)
