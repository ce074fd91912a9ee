"""The service's typed errors. They import no web framework: inner layers raise
them, and `app.responses` renders them as problem+json (RFC 9457) in one place.

    ProblemError                 status, detail, errors, headers
     +-- UndecodableBody         400  a body or tensor that cannot be decoded
     +-- NotFound                404
     +-- NotAcceptable           406  `Accept` names nothing the service produces
     +-- BodyTooSlow             408  the body did not arrive within its time, or at its pace
     +-- TooLarge                413  body, tensor or result over a limit
     +-- UnsupportedMediaType    415
     +-- InvalidParameters       422  parameters invalid, or invalid for this tensor
     +-- Overloaded              503  refused before any work: every slot and queue place
                                      taken, bodies over budget, shutting down
     +-- TimedOut                504  the computation ran past the request's time limit
    ClientGone                        the client disconnected; nobody is left to answer

Where an error lies: an `InvalidParameters` raised while validating or planning
names the parameter alone (`["kernel_size"]`); the door that received the
request knows whether that parameter came from the JSON body, the query string
or the protocol's `parameters`, and says so with `located`.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Collection
from typing import Any

from pydantic import ValidationError

Loc = tuple[str | int, ...]


def cut(text: str, limit: int = 200) -> str:
    """A header or path as an error message quotes it: as it came, cut to a prefix."""
    return text if len(text) <= limit else text[:limit] + "…"


def shown(value: object, limit: int = 40) -> str:
    """A client's value as an error message quotes it: its repr, cut to a short prefix."""
    text = repr(value) if not isinstance(value, str) or len(value) <= limit else repr(value[:limit]) + "…"
    return text if len(text) <= limit + 8 else text[:limit] + "…"


class ClientGone(Exception):
    """The client disconnected: nobody is left to answer."""


class ProblemError(Exception):
    status = 500

    def __init__(
        self,
        detail: str,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}


class UndecodableBody(ProblemError):
    status = 400


class NotFound(ProblemError):
    status = 404


class NotAcceptable(ProblemError):
    status = 406


class BodyTooSlow(ProblemError):
    status = 408


class TooLarge(ProblemError):
    status = 413


class UnsupportedMediaType(ProblemError):
    status = 415


class Overloaded(ProblemError):
    status = 503


class TimedOut(ProblemError):
    status = 504


class InvalidParameters(ProblemError):
    status = 422

    @classmethod
    def at(cls, loc: Loc, msg: str, kind: str = "value_error") -> InvalidParameters:
        """One fault at one place: `at(("kernel_size",), "...")` while planning, or a
        whole location (`("body", "input")`) where a door decodes."""
        return cls(msg, errors=[{"loc": [_short(part) for part in loc], "msg": msg, "type": kind}])

    def located(self, where: Callable[[str | int], Loc], root: str) -> InvalidParameters:
        """The same faults, each parameter's location spelled out by `where`
        (`"kernel_size"` -> `("query", "kernel_size")`); a fault of the parameters
        as a whole (no location) lies at `root`."""
        errors = [
            {**error, "loc": [*where(error["loc"][0]), *error["loc"][1:]] if error["loc"] else [root]}
            for error in self.errors or []
        ]
        return InvalidParameters(self.detail, errors=errors, headers=self.headers)


def validation_problem(exc: ValidationError, known: Collection[str] = ()) -> InvalidParameters:
    """A pydantic error as a 422 whose `errors` name each bad field (by its name
    alone, for the door to locate), unknown fields first."""
    errors = [
        {"loc": [_short(part) for part in err["loc"]], "msg": _message(err, known), "type": err["type"]}
        for err in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    errors.sort(key=lambda e: e["type"] != "extra_forbidden")
    first = errors[0]
    detail = f"{'.'.join(str(part) for part in first['loc']) or 'parameters'}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return InvalidParameters(detail, errors=errors)


def _short(part: str | int) -> str | int:
    """A location part as a client may have spelled it (an unknown field's name), kept short."""
    return part if isinstance(part, int) or len(part) <= 64 else part[:64] + "…"


def _message(err: Any, known: Collection[str]) -> str:
    if err["type"] == "extra_forbidden":
        guess = difflib.get_close_matches(str(err["loc"][-1])[:64], known, n=1)
        hint = f"; did you mean {guess[0]}?" if guess else f"; it takes {', '.join(sorted(known))}" if known else ""
        return "unknown parameter for this operation" + hint
    return str(err["msg"])
