"""Tensors in and out: nested JSON, flat JSON, npy_base64, raw .npy and .npz.

Decoding goes from bytes straight to numpy (orjson's lists through
`np.array`, or the .npy header and `np.frombuffer`), never element by
element through pydantic. A codec knows nothing about pooling.

A decoded tensor is a native-byte-order numpy array plus the service's dtype
name: bfloat16, which numpy lacks, travels as float32 until it reaches torch.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import struct
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import pybase64
from zlib_ng import zlib_ng  # its crc32 (PCLMUL) runs several times faster than zlib's, for the same sums

from app.dtypes import BY_CARRIER, DTYPES, INT_DTYPES, TABLE
from app.errors import InvalidParameters, TooLarge, UndecodableBody, shown

ENCODINGS = ("json", "flat", "npy_base64")
NONFINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}

NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 10_000  # numpy's own ceiling on header size
_WHITESPACE = b" \t\n\r\f\v"
_MOST_NPZ_ENTRIES = 16  # a directory parsed in full: enough to name a stray member, no more
# Zip flags a plain stored member may carry: a data descriptor (bit 3) and UTF-8 names (bit 11).
_PLAIN_ZIP_FLAGS = 0x0008 | 0x0800


@dataclass(frozen=True)
class Limits:
    max_elements: int
    max_ndim: int
    max_work: int = 1 << 62


@dataclass
class Tensor:
    array: np.ndarray
    dtype: str
    encoding: str  # json | flat | npy_base64 | npy


def where(loc: Sequence[str | int]) -> str:
    return ".".join(str(part) for part in loc[1:]) if len(loc) > 1 else str(loc[0])


def check_size(shape: Sequence[int], limits: Limits, loc: Sequence[str | int]) -> None:
    if len(shape) > limits.max_ndim:
        raise TooLarge(f"{where(loc)} has {len(shape)} dimensions; the limit is {limits.max_ndim}")
    count = math.prod(shape)
    if count > limits.max_elements:
        raise TooLarge(f"{where(loc)} has {count} elements; the limit is {limits.max_elements}")
    # An empty tensor holds nothing, but no dimension of it may be larger than a full one.
    if shape and max(shape) > limits.max_elements:
        raise TooLarge(f"{where(loc)} has a dimension of {max(shape)}; the limit is {limits.max_elements}")


# ---------------------------------------------------------------- JSON in


def decode_json_tensor(
    value: Any,
    *,
    loc: tuple[str | int, ...],
    dtype: str,
    dtype_given: bool,
    limits: Limits,
    maybe_bools: bool,
    integer_only: bool = False,
) -> Tensor:
    """A tensor as a JSON value: a nested array, `{data, shape, dtype}` or `{npy_base64}`.

    `maybe_bools` says the body might hold `true`/`false` inside an array,
    which numpy would silently read as 1 and 0; only then is every element
    checked in Python.
    """
    if isinstance(value, list):
        array = _nested_array(value, loc, limits, maybe_bools)
        if integer_only:
            _integers_only(array, loc)
        return Tensor(_cast(array, dtype, loc, value), dtype, "json")
    if not isinstance(value, dict):
        raise InvalidParameters.at(
            loc, "a tensor is a nested array, {data, shape, dtype} or {npy_base64}", "tensor_type"
        )
    if "npy_base64" in value:
        _only_keys(value, {"npy_base64"}, loc)
        text = value["npy_base64"]
        data: bytearray | memoryview
        if isinstance(text, memoryview):
            data = text  # decoded in the body as it was read; JSON itself yields no memoryview
        elif isinstance(text, str):
            data = decode_base64(text, loc)
        else:
            raise InvalidParameters.at((*loc, "npy_base64"), "npy_base64 must be a string", "string_type")
        array = decode_npy(data, limits, loc)
        name = dtype_of(array, loc, integer_only)
        if dtype_given and name != dtype and not integer_only:
            raise _dtype_conflict(loc, name, dtype)
        return Tensor(array, name, "npy_base64")
    if "data" in value or "shape" in value:
        return _flat(value, loc, dtype, dtype_given, limits, maybe_bools, integer_only)
    raise InvalidParameters.at(loc, "a tensor object needs `data` and `shape`, or `npy_base64`", "tensor_type")


def _flat(
    value: dict[str, Any],
    loc: tuple[str | int, ...],
    dtype: str,
    dtype_given: bool,
    limits: Limits,
    maybe_bools: bool,
    integer_only: bool,
) -> Tensor:
    _only_keys(value, {"data", "shape", "dtype"}, loc)
    shape = value.get("shape")
    if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
        raise InvalidParameters.at((*loc, "shape"), "shape must be a list of non-negative integers", "shape_type")
    check_size(shape, limits, loc)
    own = value.get("dtype")
    if own is not None:
        if own not in DTYPES:
            raise InvalidParameters.at(
                (*loc, "dtype"), f"unknown dtype {shown(own)}; one of {', '.join(DTYPES)}", "dtype"
            )
        if integer_only and own not in INT_DTYPES:
            raise InvalidParameters.at((*loc, "dtype"), f"indices must be integers, not {own}", "dtype")
        if dtype_given and own != dtype and not integer_only:
            raise _dtype_conflict(loc, own, dtype)
        dtype = own
    data = value.get("data")
    if not isinstance(data, list):
        raise InvalidParameters.at((*loc, "data"), "data must be a flat array of numbers", "list_type")
    array = _nested_array(data, (*loc, "data"), limits, maybe_bools)
    if integer_only:
        _integers_only(array, loc)
    if array.ndim != 1:
        raise UndecodableBody(f"{where(loc)}.data must be a flat (one-dimensional) array")
    if array.size != math.prod(shape):
        raise UndecodableBody(f"{where(loc)}.data has {array.size} elements but shape {shape} needs {math.prod(shape)}")
    return Tensor(_cast(array, dtype, loc, data).reshape(shape), dtype, "flat")


def _nested_array(value: list[Any], loc: tuple[str | int, ...], limits: Limits, maybe_bools: bool) -> np.ndarray:
    depth, probe = 0, value  # type: tuple[int, Any]
    while isinstance(probe, list):
        depth += 1
        if depth > limits.max_ndim:
            raise TooLarge(
                f"{where(loc)} is nested more than {limits.max_ndim} deep; the limit is {limits.max_ndim} dimensions"
            )
        probe = probe[0] if probe else None
    try:
        array = _to_array(value, loc)
    except _Mixed:
        array = np.empty(0, dtype=object)  # read element by element below
    if array.dtype.kind == "b":
        raise UndecodableBody(f"{where(loc)} holds booleans; tensors hold numbers")
    if array.dtype.kind in "OUS" or maybe_bools:
        # Strings (the non-finite names), nulls or booleans may be inside:
        # check each element, then build the array again.
        array = _to_array(_checked(value, loc, 0, limits.max_ndim), loc)
    check_size(array.shape, limits, loc)
    return array


def _to_array(value: list[Any], loc: tuple[str | int, ...]) -> np.ndarray:
    try:
        return _assembled(value)
    except ValueError:
        raise UndecodableBody(f"{where(loc)} is ragged: every row of a dimension must have the same length") from None


ROWS_AT_ONCE = 1 << 16  # elements np.array reads in one call: a short hold of the interpreter's lock


class _Mixed(Exception):
    """Rows read in groups that share no dtype (numbers beside strings)."""


def _assembled(value: list[Any]) -> np.ndarray:
    """`np.array(value)`, read a group of rows at a time when it is large, so that no
    call holds the interpreter's lock for long. The groups' arrays join with numpy's
    own promotion (integers and floats: float64, as np.array gives); groups that
    cannot join raise `_Mixed`."""
    first: Any = value
    per_row = 1
    while isinstance(first, list) and first:
        first = first[0]
        if isinstance(first, list):
            per_row *= len(first)
    if len(value) * per_row <= ROWS_AT_ONCE:
        return np.array(value)
    try:
        if per_row > ROWS_AT_ONCE:  # rows too large for one call: each row by itself
            return np.stack([_assembled(row) if isinstance(row, list) else np.array(row) for row in value])
        step = ROWS_AT_ONCE // per_row
        return np.concatenate([np.array(value[i : i + step]) for i in range(0, len(value), step)])
    except TypeError:  # no common dtype
        raise _Mixed from None


def _checked(value: Any, loc: tuple[str | int, ...], depth: int, max_depth: int) -> Any:
    if isinstance(value, list):
        if depth >= max_depth:
            raise TooLarge(f"{where(loc)} is nested more than {max_depth} deep")
        return [_checked(item, loc, depth + 1, max_depth) for item in value]
    kind = type(value)
    if kind is int or kind is float:
        return value
    if kind is str and value in NONFINITE:
        return NONFINITE[value]
    shown = orjson.dumps(value).decode()[:40]
    raise UndecodableBody(
        f'{where(loc)} holds {shown}, which is not a number (non-finite values are "NaN", "Infinity", "-Infinity")'
    )


_EXACT_IN_FLOAT = 2**53  # every integer below this, and no more, is a float64 exactly
_BFLOAT16_INFINITE_FROM = (2 - 2**-8) * 2**127  # values from here round to infinity in bfloat16


def _cast(array: np.ndarray, dtype: str, loc: tuple[str | int, ...], source: list[Any]) -> np.ndarray:
    """The decoded `array` in `dtype`; integers exactly as the JSON `source` wrote them."""
    target = TABLE[dtype].carrier
    if target.kind in "iu":
        if array.dtype.kind == "f":
            # 3.0 is an integer too (JSON does not tell them apart); 3.5 and NaN are not.
            if array.size and not (np.isfinite(array).all() and np.array_equal(array, np.trunc(array))):
                raise InvalidParameters.at(loc, f"{dtype} holds integers; the values are not all integers", "dtype")
            if array.size and float(np.abs(array).max()) >= _EXACT_IN_FLOAT:
                # numpy read the numbers through float64, which rounds integers this large.
                array = _exact_integers(source, array.shape, dtype, loc)
        elif array.dtype.kind not in "iu":
            raise InvalidParameters.at(loc, f"a value does not fit {dtype}", "dtype")
        info = np.iinfo(target)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise InvalidParameters.at(loc, f"a value does not fit {dtype} ({info.min} to {info.max})", "dtype")
        return array.astype(target, copy=False)
    if _within_range(array.dtype, target):
        carried = array.astype(target, copy=False)  # nothing to overflow: no error state to set
    else:
        try:
            with np.errstate(over="raise"):
                carried = array.astype(target, copy=False)
        except (FloatingPointError, OverflowError, TypeError):
            raise InvalidParameters.at(loc, f"a value is outside the range of {dtype}", "dtype") from None
    if dtype == "bfloat16" and carried.size:
        # Checked in the float32 that carries it, which torch then rounds: whatever the
        # JSON numbers were (floats, or integers too large for int64), as torch will see them.
        finite = carried[np.isfinite(carried)]
        if finite.size and float(np.abs(finite).max()) >= _BFLOAT16_INFINITE_FROM:
            raise InvalidParameters.at(loc, "a value is outside the range of bfloat16", "dtype")
    return carried


@functools.cache
def _within_range(source: np.dtype, target: np.dtype) -> bool:
    """Whether every number of dtype `source` lies within float dtype `target`'s range."""
    if source.kind not in "iuf":
        return False
    info = np.iinfo(source) if source.kind in "iu" else np.finfo(source)
    return float(info.max) <= float(np.finfo(target).max)


def _exact_integers(source: list[Any], shape: tuple[int, ...], dtype: str, loc: tuple[str | int, ...]) -> np.ndarray:
    """Integers mixed with floats, read one by one: JSON integers exactly, integral
    floats only below 2**53 (beyond, a float no longer says which integer it was)."""
    info = np.iinfo(TABLE[dtype].carrier)

    def exact() -> Iterator[int]:
        for value in _leaves(source):
            if type(value) is float:
                if abs(value) >= _EXACT_IN_FLOAT:
                    raise InvalidParameters.at(
                        loc, f"{dtype} values of 2**53 or more must be written as JSON integers, not as floats", "dtype"
                    )
                value = int(value)
            if not info.min <= value <= info.max:
                raise InvalidParameters.at(loc, f"a value does not fit {dtype} ({info.min} to {info.max})", "dtype")
            yield value

    # A generator read by np.fromiter runs as Python, so other threads run between its steps.
    return np.fromiter(exact(), dtype=TABLE[dtype].carrier, count=math.prod(shape)).reshape(shape)


def _leaves(value: Any) -> Iterator[Any]:
    """The scalars of a nested list, in order (depth-first, without recursion)."""
    stack = [iter([value])]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            yield item
        else:
            stack.pop()


def _integers_only(array: np.ndarray, loc: tuple[str | int, ...]) -> None:
    """Positions are JSON integers: a float (even 1.0) is refused, never truncated."""
    if array.size and array.dtype.kind not in "iu":
        raise InvalidParameters.at(loc, "indices are integers; the values are not all JSON integers", "dtype")


def _only_keys(value: dict[str, Any], allowed: set[str], loc: tuple[str | int, ...]) -> None:
    extra = sorted(set(value) - allowed)
    if extra:
        raise InvalidParameters.at((*loc, extra[0]), f"unknown tensor field {shown(extra[0])}", "extra_forbidden")


def _dtype_conflict(loc: tuple[str | int, ...], own: str, requested: str) -> InvalidParameters:
    """Located at the request's `dtype`, beside the tensor at `loc`."""
    message = f"the tensor is {own} but the request's dtype says {shown(requested)}"
    return InvalidParameters.at((*loc[:-1], "dtype"), message, "dtype_conflict")


def decode_base64(text: str, loc: tuple[str | int, ...]) -> bytearray:
    """Standard or URL-safe base64, padding optional, whitespace ignored."""
    try:
        # The common case, standard and unbroken, decodes in one SIMD pass.
        return pybase64.b64decode_as_bytearray(text, validate=True)
    except ValueError:
        pass
    raw = text.encode("ascii", errors="replace").translate(None, _WHITESPACE).rstrip(b"=")
    if len(raw) % 4 == 1:
        raise UndecodableBody(f"{where(loc)}.npy_base64 is not valid base64 (truncated)")
    raw += b"=" * (-len(raw) % 4)
    altchars = b"-_" if (b"-" in raw or b"_" in raw) else None
    try:
        return pybase64.b64decode_as_bytearray(raw, altchars=altchars, validate=True)
    except ValueError:
        raise UndecodableBody(f"{where(loc)}.npy_base64 is not valid base64") from None


# ---------------------------------------------------------------- .npy and .npz in


def decode_npy(buf: bytearray | memoryview, limits: Limits, loc: Sequence[str | int]) -> np.ndarray:
    """A .npy file as an array over `buf` (no copy unless the bytes are big-endian)."""
    view = memoryview(buf)
    if len(view) < 10 or view[:6] != NPY_MAGIC:
        raise UndecodableBody(f"{where(loc)} is not a .npy file")
    major = view[6]
    if major == 1:
        start, header_len = 10, int.from_bytes(view[8:10], "little")
    elif major in (2, 3):
        start, header_len = 12, int.from_bytes(view[8:12], "little")
    else:
        raise UndecodableBody(f"{where(loc)}: unsupported .npy format version {major}")
    if header_len > _MAX_NPY_HEADER or start + header_len > len(view):
        raise UndecodableBody(f"{where(loc)}: the .npy header is truncated or too long")
    dtype, fortran, shape = _npy_header(bytes(view[start : start + header_len]), loc)
    check_size(shape, limits, loc)
    if dtype.itemsize == 0 or dtype.subdtype is not None or dtype.names is not None:
        raise InvalidParameters.at(tuple(loc), f"dtype {shown(dtype.descr)} is not a plain number type", "dtype")
    count = math.prod(shape)
    offset = start + header_len
    if len(view) - offset != count * dtype.itemsize:
        raise UndecodableBody(
            f"{where(loc)}: the .npy header announces {count * dtype.itemsize} data bytes "
            f"but {len(view) - offset} follow"
        )
    array = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")
    if not dtype.isnative:
        array = array.astype(dtype.newbyteorder("="))
    return array


def _npy_header(text: bytes, loc: Sequence[str | int]) -> tuple[np.dtype[Any], bool, tuple[int, ...]]:
    try:
        header = ast.literal_eval(text.decode("latin1"))
        if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
            raise ValueError
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        fortran, shape = header["fortran_order"], header["shape"]
        if not isinstance(fortran, bool) or not isinstance(shape, tuple):
            raise ValueError
        if not all(type(n) is int and n >= 0 for n in shape):
            raise ValueError
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise UndecodableBody(f"{where(loc)}: the .npy header cannot be read") from None
    if dtype.hasobject:
        raise UndecodableBody(f"{where(loc)}: object (pickled) arrays are never loaded")
    return dtype, fortran, shape


def dtype_of(array: np.ndarray, loc: Sequence[str | int], integer_only: bool = False) -> str:
    """The service's name for a decoded array's dtype, or a 422 that says why not."""
    native = array.dtype.newbyteorder("=") if array.dtype.byteorder not in "=|" else array.dtype
    name = BY_CARRIER.get(native)
    if name is None:
        kind = array.dtype.kind
        if kind == "V" and array.dtype.itemsize == 2 and array.dtype.names is None:
            why = "a .npy cannot carry bfloat16; send bfloat16 as nested or flat JSON with dtype bfloat16"
        elif kind == "b":
            why = "bool tensors are not supported"
        elif kind == "c":
            why = "complex tensors are not supported"
        else:
            supported = ", ".join(n for n in DTYPES if n != "bfloat16")
            why = f"dtype {shown(array.dtype.str)} is not supported; one of {supported}"
        raise InvalidParameters.at(tuple(loc), why, "dtype")
    if integer_only and array.dtype.kind not in "iu":
        raise InvalidParameters.at(tuple(loc), f"indices must be integers, not {name}", "dtype")
    return name


def _zip_entries(buf: bytearray) -> int | None:
    """The entry count a zip's end record declares (None without one): read before
    zipfile parses a directory whose size the client chose."""
    end = buf.rfind(b"PK\x05\x06", max(0, len(buf) - 65_557))
    if end < 0 or end + 22 > len(buf):
        return None
    return int.from_bytes(buf[end + 10 : end + 12], "little")


def decode_npz(buf: bytearray, members: set[str], limits: Limits) -> dict[str, np.ndarray]:
    """An uncompressed .npz whose members are exactly some of `members`."""
    entries = _zip_entries(buf)
    if entries is not None and entries > _MOST_NPZ_ENTRIES:
        raise UndecodableBody(f"the .npz lists {entries} members; it holds at most {sorted(members)}")
    try:
        archive = zipfile.ZipFile(io.BytesIO(buf))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError):
        raise UndecodableBody("the body is not a readable .npz archive") from None
    arrays: dict[str, np.ndarray] = {}
    for info in infos:
        name = info.filename.removesuffix(".npy")
        shown_name = shown(info.filename)
        if name not in members or name in arrays:
            raise UndecodableBody(f".npz member {shown_name} is unknown or repeated; expected {sorted(members)}")
        if info.compress_type != zipfile.ZIP_STORED:
            raise UndecodableBody(f".npz member {shown_name} is compressed; store members uncompressed (np.savez)")
        if info.flag_bits & ~_PLAIN_ZIP_FLAGS:
            raise UndecodableBody(f".npz member {shown_name} is encrypted or uses zip features .npz never does")
        if info.file_size > len(buf):
            raise UndecodableBody(f".npz member {shown_name} claims more bytes than the body holds")
        member = bytearray(info.file_size)
        try:
            with archive.open(info) as stream:
                if stream.readinto(member) != info.file_size:  # type: ignore[attr-defined]
                    raise zipfile.BadZipFile
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError, NotImplementedError):
            raise UndecodableBody(f".npz member {shown_name} cannot be read") from None
        arrays[name] = decode_npy(member, limits, ("body", name))
    return arrays


# ---------------------------------------------------------------- out


def _npy_parts(array: np.ndarray) -> tuple[bytes, memoryview]:
    """A .npy file as its header and the array's own memory (no copy)."""
    array = np.ascontiguousarray(array)
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, np.lib.format.header_data_from_array_1_0(array))
    return header.getvalue(), array.reshape(-1).view(np.uint8).data


def encode_npy(array: np.ndarray) -> bytes:
    return b"".join(_npy_parts(array))


_DOS_DATE = (0 << 9) | (1 << 5) | 1  # 1980-01-01, the zip epoch


def encode_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """An uncompressed .npz, as np.savez writes it, assembled with a single copy of
    the data: zipfile would copy each member twice more. Members stay far below the
    4 GiB a zip without zip64 can hold, since tensors are bounded by the limits."""
    parts: list[bytes | memoryview] = []
    directory: list[bytes] = []
    offset = 0
    for name, array in arrays.items():
        header, data = _npy_parts(array)
        filename = f"{name}.npy".encode()
        size = len(header) + data.nbytes
        crc = zlib_ng.crc32(data, zlib_ng.crc32(header))
        local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, _DOS_DATE, crc, size, size, len(filename), 0)
        parts += [local, filename, header, data]
        directory.append(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                0,
                0,
                0,
                _DOS_DATE,
                crc,
                size,
                size,
                len(filename),
                0,
                0,
                0,
                0,
                0o600 << 16,
                offset,
            )
            + filename
        )
        offset += len(local) + len(filename) + size
    listing = b"".join(directory)
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(directory), len(directory), len(listing), offset, 0)
    return b"".join([*parts, listing, end])


def nested_json(array: np.ndarray) -> bytes:
    """An array as nested JSON, non-finite floats as "NaN", "Infinity", "-Infinity";
    a large one written a group of rows at a time, so that no call holds the
    interpreter's lock for long."""
    if array.ndim == 0 or array.size <= ROWS_AT_ONCE:
        return _nested_json(array)
    per_row = array.size // len(array)
    if per_row > ROWS_AT_ONCE:
        parts = [nested_json(row) for row in array]
    else:
        step = ROWS_AT_ONCE // per_row
        parts = [_nested_json(array[i : i + step])[1:-1] for i in range(0, len(array), step)]
    return b"[" + b",".join(parts) + b"]"


def _nested_json(array: np.ndarray) -> bytes:
    """orjson writes non-finite floats as null, and numbers never spell null: the
    nulls are swapped for the names, in order, by numpy and bytes.join (C loops,
    whatever the count)."""
    array = np.ascontiguousarray(array)
    raw = orjson.dumps(array, option=orjson.OPT_SERIALIZE_NUMPY)
    if array.dtype.kind != "f" or raw.find(b"null") < 0:
        return raw
    bad = array[~np.isfinite(array)]
    parts = raw.split(b"null")
    pieces = np.empty(2 * len(parts) - 1, dtype=object)
    pieces[0::2] = parts
    pieces[1::2] = np.where(np.isnan(bad), b'"NaN"', np.where(bad > 0, b'"Infinity"', b'"-Infinity"'))
    return b"".join(pieces)


def json_tensor(array: np.ndarray, dtype: str, encoding: str) -> Any:
    """A tensor for a JSON response, in one of `ENCODINGS`."""
    if encoding == "npy_base64":
        return {"npy_base64": pybase64.b64encode(encode_npy(array)).decode("ascii")}
    if encoding == "flat":
        return {"data": orjson.Fragment(nested_json(array.reshape(-1))), "shape": list(array.shape), "dtype": dtype}
    return orjson.Fragment(nested_json(array))
