"""Media types, and content negotiation: what a request body is, and what form the
answer takes. Plain functions of header values; no web framework."""

from __future__ import annotations

from app.errors import NotAcceptable, UnsupportedMediaType, cut

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
PROBLEM_JSON = "application/problem+json"
OCTET_STREAM = "application/octet-stream"  # the protocol's binary tensor data
OFFERED = (JSON, NPY, NPZ)
BODY_KINDS = {JSON: "json", NPY: "npy", NPZ: "npz"}


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def body_kind(content_type: str | None) -> str:
    """`json`, `npy` or `npz` for a request's `Content-Type` (none means JSON)."""
    media = media_type(content_type)
    if not media:
        return "json"
    if media in BODY_KINDS:
        return BODY_KINDS[media]
    if media == "application/x-www-form-urlencoded":
        raise UnsupportedMediaType(
            "the body was sent as a form (curl -d without a type); send Content-Type: application/json"
        )
    raise UnsupportedMediaType(f"Content-Type {cut(media)} is not accepted; send {JSON}, {NPY} or {NPZ}")


def _ranges(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    quality = 0.0
        ranges.append((media.lower(), quality))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    # The most specific range that matches decides (RFC 9110, 12.5.1).
    kind = offer.split("/", 1)[0]
    best, specificity = -1.0, -1
    for media, quality in ranges:
        rank = 2 if media == offer else 1 if media == f"{kind}/*" else 0 if media == "*/*" else -1
        if rank > specificity:
            best, specificity = quality, rank
    return best


def negotiate(accept: str | None, default: str) -> str:
    """The media type of the answer for an `Accept` header, or a 406."""
    if not accept or not accept.strip():
        return default
    ranges = _ranges(accept)
    scored = [(_quality(offer, ranges), offer == default, offer) for offer in OFFERED]
    quality, _, offer = max(scored, key=lambda s: (s[0], s[1]))
    if quality <= 0:
        raise NotAcceptable(
            f"Accept: {cut(accept)} names nothing this service produces; it offers {', '.join(OFFERED)}"
        )
    return offer
