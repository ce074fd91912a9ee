"""JSON documents of any size, read a piece at a time.

orjson reads a document in one call that holds the interpreter's lock
throughout: for a body of tens of megabytes, a second or more in which the
event loop cannot answer anyone, `/healthz` included. `loads` gives what
`orjson.loads` gives, but reads a large document in pieces of about `PIECE`
bytes, so that no call holds the lock for longer than a piece takes:

- a piece ends at a comma outside every string, found by a vectorised scan
  (numpy) of the piece's quotes, backslashes and brackets, which also says
  which containers are open there;
- each piece is read as a document of its own: the containers open where it
  starts are reopened before it (an object under the key `CONTINUED`) and
  those open where it ends are closed after it;
- the pieces are joined where they were cut: what follows a cut extends the
  container it cut, and in each outer container the piece's first element (or
  its `CONTINUED` member) continues the last one.

Every byte is read by orjson in the context it has in the whole document, so
a document is read exactly when `orjson.loads` reads it; the join refuses
what pieces read alone would let pass (a comma followed by no value, a key
repeated across a cut).
"""

from __future__ import annotations

import secrets
from typing import Any

import numpy as np
import orjson

PIECE = 1 << 20  # bytes read per call
CONTINUED = "\x00" + secrets.token_hex(8)  # unguessable: no client can write it

_LIST, _OBJECT = ord("["), ord("{")
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[[ord(c) for c in '[]{},"\\']] = True
_DEPTH = np.zeros(256, dtype=np.int64)
_DEPTH[[_LIST, _OBJECT]] = 1
_DEPTH[[ord("]"), ord("}")]] = -1
_CONTINUE = {_LIST: b"[", _OBJECT: b"{" + orjson.dumps(CONTINUED) + b":"}
_START = {_LIST: b"[", _OBJECT: b"{"}
_CLOSE = {_LIST: b"]", _OBJECT: b"}"}


class Unjoinable(orjson.JSONDecodeError):
    """The document is not valid JSON, as its pieces showed."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "", 0)


def loads(buf: bytes | bytearray | memoryview) -> Any:
    """The document in `buf`, as `orjson.loads` reads it (`orjson.JSONDecodeError` if it is not valid)."""
    if len(buf) <= PIECE:
        return orjson.loads(buf)
    data = buf if isinstance(buf, bytes) else bytes(buf)
    document: Any = None
    stack: list[int] = []  # the containers open where the last piece ended, outermost first
    start = 0
    while True:
        end, after = _cut(data, start, stack)
        opening = [_CONTINUE[kind] for kind in stack[:-1]] + [_START[kind] for kind in stack[-1:]]
        text = b"".join([*opening, data[start:end], *(_CLOSE[kind] for kind in reversed(after))])
        part = orjson.loads(text)
        if stack:
            _join(document, part, stack)
        else:
            document = part
        if end == len(data):
            return document
        preceding = data[start:end].rstrip()[-1:]
        following = data[end + 1 : end + 65].lstrip()[:1]
        if preceding in (b"", b"[", b"{") or following in (b"", b"]", b"}", b","):
            raise Unjoinable("a comma without a value on each side")
        if not after:
            raise Unjoinable("a comma outside every container")
        stack, start = after, end + 1


def _cut(data: bytes, start: int, stack: list[int]) -> tuple[int, list[int]]:
    """Where the piece from `start` ends (at a comma outside strings, or at the document's
    end) and the containers open there."""
    size = PIECE
    while True:
        stop = min(len(data), start + size)
        u = np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start)
        where = np.flatnonzero(_STRUCTURAL[u])
        chars = u[where]
        keep = _outside_strings(where, chars)
        chars = chars[keep]
        if stop == len(data):
            after = _open_after(chars, stack)
            if after:
                raise Unjoinable("the document ends inside a container")
            return len(data), after
        commas = np.flatnonzero(chars == ord(","))
        if len(commas):
            last = int(commas[-1])
            return start + int(where[keep][last]), _open_after(chars[:last], stack)
        size *= 2  # no comma outside a string yet (a long string): a longer piece


def _outside_strings(where: np.ndarray, chars: np.ndarray) -> np.ndarray:
    """Which of the structural characters (at `where`, in order) lie outside strings;
    a piece starts outside every string, since it starts after a comma that does."""
    quote = chars == ord('"')
    backslash = chars == ord("\\")
    if backslash.any():
        # A quote is escaped when an odd run of backslashes ends right before it.
        index = np.arange(len(chars))
        adjacent = np.concatenate(([False], np.diff(where) == 1))
        continues = backslash & adjacent & np.concatenate(([False], backslash[:-1]))
        run_start = np.maximum.accumulate(np.where(continues, 0, index))
        run_length = np.where(backslash, index - run_start + 1, 0)
        escaped = adjacent & (np.concatenate(([0], run_length[:-1])) % 2 == 1)
        quote &= ~escaped
    inside = np.cumsum(quote) % 2 == 1  # from an opening quote up to its closing one, exclusive
    return ~(inside | quote)


def _open_after(chars: np.ndarray, stack: list[int]) -> list[int]:
    """The containers open after `chars` (structural characters outside strings) when
    `stack` was open before them."""
    steps = _DEPTH[chars]
    moves = np.flatnonzero(steps)
    if not len(moves):
        return list(stack)
    steps, kinds = steps[moves], chars[moves]
    depth = np.cumsum(steps)
    lowest = min(0, int(depth.min()))
    if -lowest > len(stack):
        raise Unjoinable("a bracket closes nothing")
    # An opening bracket is still open at the end when the depth never falls below it later.
    later = np.minimum.accumulate(depth[::-1])[::-1]
    still_open = (steps == 1) & (later >= depth)
    return [*stack[: len(stack) + lowest], *(int(kind) for kind in kinds[still_open])]


def _join(document: Any, part: Any, stack: list[int]) -> None:
    """Join `part`, read with `stack` reopened, to `document`, which was cut there."""
    into = document
    for level, kind in enumerate(stack):
        innermost = level == len(stack) - 1
        if kind == _LIST:
            if not (isinstance(into, list) and isinstance(part, list)):
                raise Unjoinable("pieces do not join")
            if innermost:
                into.extend(part)
                return
            if not (into and part):
                raise Unjoinable("pieces do not join")
            target, first = into[-1], part[0]
            into.extend(part[1:])
        else:
            if not (isinstance(into, dict) and isinstance(part, dict)):
                raise Unjoinable("pieces do not join")
            if innermost:
                _add_members(into, part)
                return
            if not into or next(iter(part), None) != CONTINUED:
                raise Unjoinable("pieces do not join")
            target, first = into[next(reversed(into))], part.pop(CONTINUED)
            _add_members(into, part)
        into, part = target, first


def _add_members(into: dict[str, Any], members: dict[str, Any]) -> None:
    for key, value in members.items():
        if key in into:
            raise Unjoinable(f"the key {key[:40]!r} is repeated")
        into[key] = value
