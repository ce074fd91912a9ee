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
- where no comma lies outside strings for `LONGEST_SCAN` pieces (a long
  string, such as a base64 `.npy`, which orjson can only read whole), the rest
  of the document is read in one call;
- the pieces are joined where they were cut: what follows a cut extends the
  container it cut, and in each outer container the piece's first element (or
  its `CONTINUED` member) continues the last one.

Every byte is read by orjson in the context it has in the whole document, so
a document is read exactly when `orjson.loads` reads it (a repeated key
included: the last value, at the first key's place); the join refuses what
pieces read alone would let pass (a comma with no value on one side).
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import numpy as np
import orjson

PIECE = 1 << 20  # bytes read per call
LONGEST_SCAN = 4  # pieces scanned for a comma before the rest is read in one call
DEEPEST = 1024  # nesting orjson reads; deeper is refused before the containers are listed
CONTINUED = "\x00" + secrets.token_hex(8)  # unguessable: no client can write it

_LIST, _OBJECT = ord("["), ord("{")
_STRUCTURAL = np.zeros(256, dtype=bool)
_STRUCTURAL[[ord(c) for c in '[]{},:"\\']] = True
_DEPTH = np.zeros(256, dtype=np.int64)
_DEPTH[[_LIST, _OBJECT]] = 1
_DEPTH[[ord("]"), ord("}")]] = -1
_BRACKET_BITS, _BRACKET = 0xD9, 0x59  # [ ] { } are the bytes b with b & 0xD9 == 0x59, besides Y _ y DEL
_CONTINUE = {_LIST: b"[", _OBJECT: b"{" + orjson.dumps(CONTINUED) + b":"}
_START = {_LIST: b"[", _OBJECT: b"{"}
_CLOSE = {_LIST: b"]", _OBJECT: b"}"}
_WHITESPACE = re.compile(rb"[ \t\r\n]*")
_COLON = re.compile(rb"[ \t\r\n]*(?::)?")  # what may follow a string before a value (a key's colon)

# An open container: its kind (`[` or `{`) and, in an object, the key it is the value of.
Level = tuple[int, "str | None"]


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
    stack: list[Level] = []  # the containers open where the last piece ended, outermost first
    start = 0
    while True:
        end, after = _cut(data, start, stack)
        opening = [_CONTINUE[kind] for kind, _ in stack[:-1]] + [_START[kind] for kind, _ in stack[-1:]]
        text = b"".join([*opening, data[start:end], *(_CLOSE[kind] for kind, _ in reversed(after))])
        part = orjson.loads(text)
        if stack:
            _join(document, part, stack)
        else:
            document = part
        if end == len(data):
            return document
        preceding = data[start:end].rstrip()[-1:]
        next_value = _WHITESPACE.match(data, end + 1).end()  # type: ignore[union-attr]  # it matches anywhere
        following = data[next_value : next_value + 1]
        if preceding in (b"", b"[", b"{") or following in (b"", b"]", b"}", b","):
            raise Unjoinable("a comma without a value on each side")
        if not after:
            raise Unjoinable("a comma outside every container")
        stack, start = after, end + 1


def _cut(data: bytes, start: int, stack: list[Level]) -> tuple[int, list[Level]]:
    """Where the piece from `start` ends (at a comma outside strings, or at the document's
    end) and the containers open there."""
    size = PIECE
    while True:
        if size > LONGEST_SCAN * PIECE:
            # No comma outside a string in all that (a long string, say): the rest is
            # one piece, which orjson reads and checks whole.
            return len(data), []
        stop = min(len(data), start + size)
        piece = _Piece.scanned(data, start, stop)
        if stop == len(data):
            after = piece.open_after(len(piece.chars), stack)
            if after:
                raise Unjoinable("the document ends inside a container")
            return len(data), after
        commas = np.flatnonzero(piece.chars == ord(","))
        if len(commas):
            last = int(commas[-1])
            return int(piece.at[last]), piece.open_after(last, stack)
        size *= 2  # no comma outside a string yet (a long string): a longer piece


def _outside_strings(where: np.ndarray, chars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which of the structural characters (at `where`, in order) lie outside strings,
    and which are the quotes that open and close strings; a piece starts outside every
    string, since it starts after a comma that does."""
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
    return ~(inside | quote), quote


def _brackets_and_last_comma(
    data: bytes, u: np.ndarray, start: int, begin: int, end: int
) -> tuple[np.ndarray, np.ndarray]:
    """In `data[begin:end]`, which holds no string (`u` is the piece from `start`): its
    brackets (with Y _ y DEL, which valid JSON has only in strings and which count for
    nothing) and its last comma, as characters and their places."""
    at = np.flatnonzero(u[begin - start : end - start] & _BRACKET_BITS == _BRACKET) + begin
    comma = data.rfind(b",", begin, end)
    if comma >= 0:
        at = np.insert(at, np.searchsorted(at, comma), comma)
    return u[at - start], at


class _Piece:
    """A piece's structural characters outside strings (`chars`, at `at` in the document)
    and the quotes of its strings (at `quotes`)."""

    def __init__(self, data: bytes, start: int, chars: np.ndarray, at: np.ndarray, quotes: np.ndarray) -> None:
        self.data, self.start, self.chars, self.at, self.quotes = data, start, chars, at, quotes

    @classmethod
    def scanned(cls, data: bytes, start: int, stop: int) -> _Piece:
        """The piece `data[start:stop]`, which starts outside every string. From its first
        string to its last (and the colon after that, if any) every structural character
        is looked at; before and after, where a tensor's numbers lie, there are no strings
        and so no keys, and brackets and the last comma are all that count, which a mask
        and a memchr find."""
        u = np.frombuffer(data, dtype=np.uint8, count=stop - start, offset=start)
        first = data.find(b'"', start, stop)
        if first < 0:
            return cls(data, start, *_brackets_and_last_comma(data, u, start, start, stop), np.empty(0, np.intp))
        last = data.rfind(b'"', start, stop)
        split = _COLON.match(data, last + 1, stop).end()  # type: ignore[union-attr]  # it matches anywhere
        where = np.flatnonzero(_STRUCTURAL[u[first - start : split - start]])
        chars = u[where + (first - start)]
        keep, quotes = _outside_strings(where, chars)
        parts = [_brackets_and_last_comma(data, u, start, start, first), (chars[keep], where[keep] + first)]
        if np.count_nonzero(quotes) % 2 == 0:  # the last string closes: the rest lies outside every string
            parts.append(_brackets_and_last_comma(data, u, start, split, stop))
        return cls(
            data,
            start,
            np.concatenate([part[0] for part in parts]),
            np.concatenate([part[1] for part in parts]),
            where[quotes] + first,
        )

    def open_after(self, count: int, stack: list[Level]) -> list[Level]:
        """The containers open after the first `count` characters, when `stack` was open before them."""
        steps = _DEPTH[self.chars[:count]]
        moves = np.flatnonzero(steps)
        if not len(moves):
            return list(stack)
        depth = np.cumsum(steps[moves])
        lowest = min(0, int(depth.min()))
        if -lowest > len(stack):
            raise Unjoinable("a bracket closes nothing")
        # An opening bracket is still open at the end when the depth never falls below it later.
        later = np.minimum.accumulate(depth[::-1])[::-1]
        opened = stack[: len(stack) + lowest]
        still_open = moves[(steps[moves] == 1) & (later >= depth)]
        if len(opened) + len(still_open) > DEEPEST:
            raise Unjoinable(f"nested more than {DEEPEST} deep")
        for index in still_open:
            inside_object = bool(opened) and opened[-1][0] == _OBJECT
            opened.append((int(self.chars[index]), self._key(int(index)) if inside_object else None))
        return opened

    def _key(self, index: int) -> str:
        """The key whose value opens at the character `index`: the string before the colon before it."""
        if index == 0 or self.chars[index - 1] != ord(":"):
            raise Unjoinable("a value in an object without a key")
        close = int(np.searchsorted(self.quotes, self.at[index - 1])) - 1
        if close < 1:
            raise Unjoinable("a value in an object without a key")
        key = orjson.loads(self.data[self.quotes[close - 1] : self.quotes[close] + 1])
        if not isinstance(key, str):
            raise Unjoinable("a value in an object without a key")
        return key


def _join(document: Any, part: Any, stack: list[Level]) -> None:
    """Join `part`, read with `stack` reopened, to `document`, which was cut there."""
    into = document
    for level, (kind, _) in enumerate(stack):
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
                into.update(part)  # a repeated key: the last value, at the first place, as orjson reads it
                return
            key = stack[level + 1][1]
            if key not in into or CONTINUED not in part:
                raise Unjoinable("pieces do not join")
            target, first = into[key], part.pop(CONTINUED)
            into.update(part)
        into, part = target, first
