"""Reading a pooling request: its body, and the fields and tensors in it.

JSON bodies are parsed by orjson, with two shortcuts that keep large tensors
cheap: a large `npy_base64` is decoded straight from the body, and the check
for booleans among numbers costs a memchr pass rather than a walk over every
element. Binary bodies (.npy, .npz) take their parameters from the query.
"""

from __future__ import annotations

import asyncio
import ctypes
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pybase64
from starlette.datastructures import QueryParams
from starlette.types import Receive

from app import codecs, jsonparse
from app.codecs import Limits, Tensor
from app.errors import BodyTooSlow, ClientGone, InvalidParameters, Overloaded, TooLarge, UndecodableBody, shown
from app.operations import Operation

# The ASGI extension by which a connection (`app.connections`) offers to read the rest of
# a declared body straight into a buffer: {"receive": the `receive` it stands beside,
# "into": a `BodyInto`}. The view must be exactly as long as what is left of the body;
# the callback gets each count of bytes as it lands, and may raise to stop the read.
BODY_INTO = "pool.body_into"
BodyInto = Callable[[memoryview, Callable[[int], None]], Awaitable[int]]


@dataclass(slots=True)
class Incoming:
    """What the pipeline reads of a request: lower-case headers, the query (None when
    empty), the ASGI `receive` that yields the body (and then waits for the client to
    leave), the time the transport gives it (a gRPC deadline), if any, and the
    connection's way to read the rest of a declared body straight into a buffer
    (`BODY_INTO`), if it offers one."""

    headers: dict[str, str]
    query: QueryParams | None
    receive: Receive | None  # None: the body came whole, and the transport ends the call if the client goes
    timeout_s: float | None = None
    body_into: BodyInto | None = None


async def _chunk(receive: Receive) -> tuple[bytes, bool]:
    """The body's next chunk, and whether more follow. (A loop over this, not an async
    generator: the generator's machinery costs more than a small body's whole read.)"""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGone
    return message.get("body", b""), message.get("more_body", False)


async def disconnected(receive: Receive) -> None:
    """Returns when the client has gone (after the body, `receive` waits for that)."""
    while (await receive())["type"] != "http.disconnect":
        pass


# A bytearray whose bytes are left as the allocator gave them: bytearray(size) writes
# zeros over all of them first, a pass over a large body (and its page faults) for
# nothing, since every byte is then filled from the body or the request is refused.
_uninitialised = ctypes.pythonapi.PyByteArray_FromStringAndSize
_uninitialised.restype = ctypes.py_object
_uninitialised.argtypes = (ctypes.c_char_p, ctypes.c_ssize_t)
_RECYCLED_FROM = 1 << 20  # smaller bodies come from the allocator's pools cheaply
DIRECT_READ_FROM = 1 << 18  # the least of a body left to read that is read straight into its buffer


class BodyBudget:
    """Bytes of request bodies held at once, across all requests: uploads read in
    parallel would otherwise multiply the body limit by the number of clients.
    Past the budget, a request gets a 503 before more of its body is read.

    It also keeps the buffer of the last large body for the next body of the same
    size, as clients send tensors of one shape again and again: a fresh buffer each
    time leaves the allocator holding the freed ones besides (`benchmarks/serve.py`
    measures the server's memory growth under W3)."""

    def __init__(self, total: int, retry_after_s: int) -> None:
        self.total = total
        self.held = 0
        self._retry_after = {"Retry-After": str(retry_after_s)}
        self._spare: bytearray | None = None

    def buffer(self, size: int) -> bytearray:
        """A buffer of `size` bytes to read a body into, its contents arbitrary."""
        if size < _RECYCLED_FROM:
            return bytearray(size)  # zeroing a small one costs less than the call below
        spare, self._spare = self._spare, None
        if spare is not None and len(spare) == size:
            return spare
        return _uninitialised(None, size)

    def recycle(self, body: bytearray) -> None:
        """Keep a large `body` for the next body of its size, unless something still
        views it (a bytearray with views cannot shrink, so the shrink tells)."""
        if len(body) < _RECYCLED_FROM:
            return
        last = body[-1]
        try:
            del body[-1]  # within its allocation, as is the append: neither copies
        except BufferError:
            return
        body.append(last)
        self._spare = body

    def take(self, size: int) -> None:
        if self.held + size > self.total:
            raise Overloaded("too many request bodies in flight; retry shortly", headers=self._retry_after)
        self.held += size

    def give_back(self, size: int) -> None:
        self.held -= size


@dataclass(frozen=True)
class BodyPace:
    """How fast a body must arrive: all of it within `timeout_s`, and after the first
    `grace_s`, at least `min_rate` bytes a second on average; a client slower than
    that would hold its connection, and the bytes it sent, for as long as it liked."""

    timeout_s: float
    min_rate: float
    grace_s: float = 1.0

    def deadline(self, started: float, received: int) -> float:
        return started + min(self.timeout_s, self.grace_s + received / self.min_rate)


class _Read:
    __slots__ = ("late", "received", "started")

    def __init__(self, started: float) -> None:
        self.started = started
        self.received = 0
        self.late = False


class PaceKeeper:
    """Keeps every body read to its pace: one sweep every `interval` seconds stops the
    reads that have fallen behind (a timer per read would cost more than pooling a
    small tensor). A read is stopped at most `interval` seconds past its deadline."""

    def __init__(self, pace: BodyPace, interval: float = 0.25) -> None:
        self.pace = pace
        self.interval = interval
        self._reads: dict[asyncio.Task[Any], _Read] = {}
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, reader: asyncio.Task[Any], loop: asyncio.AbstractEventLoop) -> _Read:
        read = self._reads[reader] = _Read(loop.time())
        sweeper = self._sweeper
        if sweeper is None or sweeper.done() or sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep(loop))
        return read

    def forget(self, reader: asyncio.Task[Any]) -> None:
        self._reads.pop(reader, None)

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        while self._reads:
            await asyncio.sleep(self.interval)
            now = loop.time()
            for reader, read in list(self._reads.items()):
                if now >= self.pace.deadline(read.started, read.received):
                    read.late = True
                    del self._reads[reader]
                    reader.cancel()


async def read_body(incoming: Incoming, limit: int, budget: BodyBudget, keeper: PaceKeeper) -> bytearray:
    """The body, refused as soon as it is known to exceed `limit` bytes (a declared
    Content-Length before anything is read), the shared budget (taken as bytes
    arrive: a declared size reserves nothing) or its pace (408). The caller gives
    `len(body)` back to the budget when it is done with it."""
    declared = incoming.headers.get("content-length")
    size = _declared_size(declared, limit) if declared is not None else None
    # A declared body goes into one buffer of its size as it arrives, each chunk let go
    # at once, so the allocator hands the same memory back for the next: keeping every
    # chunk until the end and joining them costs twice the page faults.
    body = budget.buffer(size) if size is not None else bytearray()
    bound = size if size is not None else limit
    received, more = 0, True
    receive = incoming.receive
    assert receive is not None, "a body to read comes with its receive"
    loop = asyncio.get_running_loop()
    reader = asyncio.current_task(loop)
    assert reader is not None
    read = keeper.watch(reader, loop)

    def arrived(count: int) -> None:
        nonlocal received
        budget.take(count)
        received += count
        read.received = received

    try:
        while more:
            chunk, more = await _chunk(receive)
            count = len(chunk)
            if received + count > bound:
                if size is None:
                    raise TooLarge(f"the body exceeds the limit of {limit} bytes")
                raise UndecodableBody("the body is longer than its Content-Length")
            budget.take(count)
            if size is None:
                body += chunk
            else:
                body[received : received + count] = chunk
            received += count
            read.received = received
            if more and incoming.body_into is not None and size is not None and size - received >= DIRECT_READ_FROM:
                # The rest from the socket straight into the buffer, with no copy on the way.
                await incoming.body_into(memoryview(body)[received:], arrived)
                if received < size:
                    raise ClientGone
                more = False
    except asyncio.CancelledError:
        budget.give_back(received)
        if not read.late:
            raise
        reader.uncancel()
        pace = keeper.pace
        raise BodyTooSlow(
            f"the body did not arrive in time: {received} bytes in {pace.timeout_s:g} s at most, "
            f"at {pace.min_rate:g} bytes a second at least",
            headers={"Connection": "close"},
        ) from None
    except BaseException:
        budget.give_back(received)
        raise
    finally:
        keeper.forget(reader)
    if size is not None and received != size:
        budget.give_back(received)
        raise UndecodableBody("the body is shorter than its Content-Length")
    return body


def _declared_size(declared: str, limit: int) -> int:
    try:
        size = int(declared)
    except ValueError:
        raise UndecodableBody("Content-Length is not a number") from None
    if size < 0:
        raise UndecodableBody("Content-Length is negative")
    if size > limit:
        raise TooLarge(f"the body has {size} bytes; the limit is {limit}")
    return size


def parse_json_body(raw: bytearray) -> dict[str, Any]:
    try:
        document = jsonparse.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UndecodableBody(f"the body is not valid JSON: {exc}") from None
    if not isinstance(document, dict):
        raise InvalidParameters.at(("body",), "the body must be a JSON object of parameters and tensors", "model_type")
    return document


def query_value(text: str) -> Any:
    """A query parameter: JSON where it parses, else a comma-separated list of numbers, else the word."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    if "," in text:
        try:
            return [orjson.loads(part) for part in text.split(",")]
        except orjson.JSONDecodeError:
            pass
    return text


# A query string's booleans, in the lax forms pydantic knows; JSON bodies take only true and false.
QUERY_BOOLEANS = {
    "true": True,
    "false": False,
    "1": True,
    "0": False,
    "yes": True,
    "no": False,
    "on": True,
    "off": False,
    "t": True,
    "f": False,
    "y": True,
    "n": False,
}


def query_fields(query: QueryParams, booleans: frozenset[str] = frozenset()) -> dict[str, Any]:
    """The parameters of a query string; those named in `booleans` in any lax form."""
    fields = {}
    for key in query.keys():
        values = query.getlist(key)
        if len(values) > 1:
            raise InvalidParameters.at(("query", key), f"{shown(key)} is given {len(values)} times", "repeated")
        text = values[0]
        lax = QUERY_BOOLEANS.get(text.lower()) if key in booleans else None
        fields[key] = lax if lax is not None else query_value(text)
    return fields


def _request_dtype(fields: dict[str, Any]) -> tuple[str, bool]:
    if "dtype" not in fields:
        return "float32", False
    dtype = fields["dtype"]
    if dtype not in codecs.DTYPES:
        raise InvalidParameters.at(
            ("body", "dtype"), f"unknown dtype {shown(dtype)}; one of {', '.join(codecs.DTYPES)}", "literal_error"
        )
    return dtype, True


def _holds_numbers(value: Any) -> bool:
    """A nested or flat JSON tensor, whose numbers orjson has parsed into lists."""
    return isinstance(value, list) or (isinstance(value, dict) and "npy_base64" not in value)


_COUNTED_BELOW = 4096


def _occurs_more_than(raw: bytes | bytearray, byte: bytes, times: int) -> bool:
    """Whether `byte` occurs more than `times` times; each look is a memchr, and it
    stops at times + 1, so a body of numbers costs one pass. A small body is counted
    in one call instead: there the loop costs more than the bytes (count is a plain
    loop, forty times slower than memchr on megabytes)."""
    if len(raw) <= _COUNTED_BELOW:
        return raw.count(byte) > times
    position = -1
    for _ in range(times + 1):
        position = raw.find(byte, position + 1)
        if position < 0:
            return False
    return True


def _loose_booleans(raw: bytes | bytearray, fields: dict[str, Any], tensors: tuple[str, ...]) -> bool:
    """Whether `true` or `false` may stand inside a tensor, where numpy would read
    them as 1 and 0: the body holds more t or f letters than the rest of the
    document spells (numbers never do). Without escapes the letters of the body and
    of that document re-encoded agree exactly; with any, the exact check runs."""
    if raw.find(b"\\") >= 0:
        return True
    skeleton = orjson.dumps({key: 0 if key in tensors else value for key, value in fields.items()})
    return _occurs_more_than(raw, b"t", skeleton.count(b"t")) or _occurs_more_than(raw, b"f", skeleton.count(b"f"))


_LARGE_BASE64 = 1 << 16
_BASE64_KEY = re.compile(rb'"npy_base64"\s*:\s*"')
# What stands in the value's place: no client can write it, so a later key with the same
# name (the last one counts, as orjson reads JSON) shows as a value that is not it.
_SLOT = "\x00" + str(secrets.randbits(64))  # digits: no t or f to count as booleans
_SLOT_TEXT = orjson.dumps(_SLOT)[1:-1]


def _split_base64(raw: bytearray) -> tuple[dict[str, Any], memoryview, bytes] | None:
    """A large `npy_base64` input decoded in the raw body, the rest parsed, and the
    document's text without the value (the body no longer holds it): orjson would
    otherwise build a Python string as large as the tensor only for it to be decoded.
    Taken only where the cut provably is the input's value and is plain base64 (no
    escapes, no whitespace); anything else gets the full parse."""
    # The key comes before its value, so a large value's key is near the start;
    # a body of numbers is not searched to its end.
    key = raw.find(b'"npy_base64"', 0, _LARGE_BASE64)
    match = _BASE64_KEY.match(raw, key) if key >= 0 else None
    if match is None:
        return None
    start = match.end()
    end = raw.find(b'"', start)
    if end - start < _LARGE_BASE64 or raw.find(b"\\", start, end) >= 0:
        return None
    before, after = bytes(raw[:start]), bytes(raw[end:])
    try:
        fields = orjson.loads(before + _SLOT_TEXT + after)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(fields, dict) or fields.get("input") != {"npy_base64": _SLOT}:
        return None
    decoded = _decode_in_place(raw, start, end)
    if decoded is None:
        return None
    return fields, decoded, before + after


_BASE64_STEP = 1 << 20  # base64 characters decoded at a time: a multiple of 4


def _decode_in_place(raw: bytearray, start: int, end: int) -> memoryview | None:
    """The standard base64 `raw[start:end]` decoded into `raw`, a step at a time: bytes
    come out shorter than their text, so each step lands where text has been read, and
    no second buffer as large as the tensor is needed. The bytes start at the 64-byte
    boundary at or before `start` (what lies between has been parsed already), where a
    `.npy`'s data come out aligned, as numpy reads them fastest. None, with `raw` as it
    was, where the text is anything but standard and unbroken: padding ends it."""
    view = memoryview(raw)
    at = first = start & ~63
    before = bytes(view[first:start])
    for begin in range(start, end, _BASE64_STEP):
        stop = min(begin + _BASE64_STEP, end)
        try:
            part = pybase64.b64decode(view[begin:stop], validate=True)
        except ValueError:
            part = b""
        if (stop < end and len(part) != _BASE64_STEP // 4 * 3) or not part:  # padding inside the text, or not base64
            raw[start:begin] = pybase64.b64encode(view[first:at])  # the text read so far, as it was
            raw[first:start] = before
            return None
        view[at : at + len(part)] = part
        at += len(part)
    return view[first:at]


def decode_json_request(
    raw: bytearray, operation: Operation, limits: Limits
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """The fields of a JSON body and its tensors, decoded (those that are there)."""
    split = _split_base64(raw)
    document: bytes | bytearray = raw
    if split is not None:
        # The body now holds the decoded tensor where its text was: the rest of the
        # document, as parsed, is what any booleans are counted in.
        fields, decoded, document = split
        fields["input"] = {"npy_base64": decoded}  # a view of the body: already decoded
    else:
        fields = parse_json_body(raw)
    names = ("input", *operation.family.extra_tensors)
    dtype, dtype_given = _request_dtype(fields)
    nested = any(_holds_numbers(fields.get(name)) for name in names)
    maybe_bools = nested and _loose_booleans(document, fields, names)
    tensors = {}
    for name in names:
        if fields.get(name) is None:
            continue
        is_input = name == "input"
        tensors[name] = codecs.decode_json_tensor(
            fields[name],
            loc=("body", name),
            dtype=dtype if is_input else "int64",
            dtype_given=dtype_given and is_input,
            limits=limits,
            maybe_bools=maybe_bools,
            integer_only=not is_input,
        )
    return fields, tensors


def decode_binary_request(
    raw: bytearray, kind: str, query: QueryParams, operation: Operation, limits: Limits
) -> tuple[dict[str, Any], dict[str, Tensor]]:
    fields = query_fields(query, operation.boolean_fields)
    names = ("input", *operation.family.extra_tensors)
    for name in names:
        if name in fields:
            raise InvalidParameters.at(
                ("query", name), f"{name} travels in the body, not in the query", "tensor_in_query"
            )
    if kind == "npy":
        if operation.family.extra_tensors:
            raise UndecodableBody(f"{operation.name} takes {' and '.join(names)}: send them as an .npz")
        arrays = {"input": codecs.decode_npy(raw, limits, ("body",))}
    else:
        arrays = codecs.decode_npz(raw, set(names), limits)
        missing = [name for name in names if name not in arrays]
        if missing:
            raise UndecodableBody(f"the .npz lacks the member {missing[0]}.npy")
    tensors = {}
    for name, array in arrays.items():
        is_input = name == "input"
        dtype = codecs.dtype_of(array, ("body", name), integer_only=not is_input)
        tensors[name] = Tensor(array, dtype, kind)
    requested = fields.get("dtype")
    if requested is not None and requested != tensors["input"].dtype:
        raise InvalidParameters.at(
            ("query", "dtype"),
            f"the .npy is {tensors['input'].dtype} but dtype says {shown(requested)}",
            "dtype_conflict",
        )
    for name in names:
        fields[name] = None  # tensors are decoded; the model checks the rest
    return fields, tensors
