"""The service's path grammar, in one place: which paths compute (the pooling
endpoint's), which need an API key, and which op a request is metered under."""

from __future__ import annotations

from collections.abc import Container, Iterable
from typing import Literal

POOL_PREFIX = "/pool/"
V2_MODELS, V2_INFER = "/v2/models/", "/infer"
Door = Literal["native", "protocol"]


def pool_path(op: str) -> str:
    return f"{POOL_PREFIX}{op}"


def compute_target(path: str) -> tuple[str, Door] | None:
    """(op, door) for the paths the pooling endpoint serves: `/pool/{op}` (the native
    API) and `/v2/models/{op}[/versions/{version}]/infer` (the Open Inference Protocol);
    neither `op` nor the version is checked here (`model_version` splits them)."""
    if path.startswith(POOL_PREFIX):
        op = path[len(POOL_PREFIX) :]
        return (op, "native") if "/" not in op else None
    if path.startswith(V2_MODELS) and path.endswith(V2_INFER):
        model = path[len(V2_MODELS) : -len(V2_INFER)]
        op, _ = model_version(model)
        return (model, "protocol") if op and "/" not in op else None
    return None


def compute_template(path: str) -> str | None:
    """The pooling endpoint's path as a template (`/pool/{op}`), for names that stay few."""
    target = compute_target(path)
    if target is None:
        return None
    return f"{POOL_PREFIX}{{op}}" if target[1] == "native" else f"{V2_MODELS}{{op}}{V2_INFER}"


VERSION = "1"  # every model's one version
VERSIONS = "/versions/"
VERSIONED = "/versions/{version}"  # as routes and the schema write it


def is_protocol(path: str) -> bool:
    """The Open Inference Protocol's paths, whose errors carry its `error` member."""
    return path == "/v2" or path.startswith("/v2/")


def model_version(model: str) -> tuple[str, str | None]:
    """`max2d` → (max2d, None); `max2d/versions/1` → (max2d, "1")."""
    op, versioned, version = model.partition(VERSIONS)
    return (op, version) if versioned and version and "/" not in version else (model, None)


def needs_key(method: str, path: str) -> bool:
    """The routes that compute or report usage; health, docs, schema, /info and the
    catalogue stay open."""
    if path == "/metrics" or (path.startswith(V2_MODELS) and path.endswith("/stats")):
        return True  # usage: counts, times, when each model was last used
    return method == "POST" and compute_target(path) is not None


def metered_op(method: str, path: str, operations: Container[str]) -> tuple[str, Door] | None:
    """The op a request computes and its door, for metrics: `unknown` for a name no op has,
    None for requests that compute nothing."""
    target = compute_target(path) if method == "POST" else None
    if target is None:
        return None
    op = model_version(target[0])[0]
    return (op if op in operations else "unknown"), target[1]


def served_paths(operations: Iterable[str]) -> set[str]:
    """The POST paths the pooling endpoint answers for these ops, as the OpenAPI
    schema names them."""
    return {pool_path(op) for op in operations} | {
        f"{V2_MODELS}{{op}}{V2_INFER}",
        f"{V2_MODELS}{{op}}{VERSIONED}{V2_INFER}",
    }
