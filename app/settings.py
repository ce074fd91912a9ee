"""Service settings, read once at start from `POOL_*` environment variables."""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


def available_cores() -> int:
    """Cores this process may run on (a container's CPU set, not the host's)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


class Settings(BaseSettings):
    """Every field is an environment variable: `device` is `POOL_DEVICE`."""

    model_config = SettingsConfigDict(env_prefix="POOL_", extra="ignore")

    host: str = Field("127.0.0.1", description="Address `python -m app` listens on (0.0.0.0 in the container).")
    port: int = Field(8000, ge=1, le=65535, description="Port `python -m app` listens on.")
    grpc_port: int = Field(
        8001,
        ge=0,
        le=65535,
        description="Port of the gRPC server (the Open Inference Protocol over gRPC, and grpc.health.v1), on the "
        "same host as the HTTP server; 0 turns it off.",
    )
    grpc_max_calls: int = Field(
        64,
        ge=1,
        description="gRPC calls a server process holds at once, counted from their first bytes; past them, "
        "RESOURCE_EXHAUSTED at once. Each may hold a message of up to max_body_bytes while it arrives, before "
        "anything reads it: this bounds that memory.",
    )
    grpc_idle_s: float = Field(
        30, gt=0, description="Seconds a gRPC connection with no call in progress stays open; clients reconnect."
    )
    workers: int = Field(
        1, ge=1, description="Server processes; each holds its own compute pool of max_concurrency threads."
    )
    drain_s: float = Field(
        5,
        ge=0,
        description="On SIGTERM, seconds /readyz answers 503 while requests are still served, so load balancers "
        "stop sending before the listener closes.",
    )
    shutdown_grace_s: int = Field(
        20,
        ge=1,
        description="Then, seconds in-flight requests may take to finish before they are cancelled. "
        "drain_s + shutdown_grace_s stays below Kubernetes' terminationGracePeriodSeconds (30).",
    )
    device: str = Field(
        "auto",
        description="Where tensors are pooled: auto (a GPU when there is one), cpu, cuda, cuda:N or mps.",
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; empty leaves the service open.",
        repr=False,  # never in logs or tracebacks
    )
    max_body_bytes: int = Field(64 * 1024 * 1024, ge=1, description="Largest request body accepted.")
    max_elements: int = Field(16_777_216, ge=1, description="Largest element count of any input or output tensor.")
    max_ndim: int = Field(6, ge=1, le=32, description="Most dimensions a tensor may have.")
    max_concurrency: int = Field(2, ge=1, description="Computations that run at once.")
    max_queue: int = Field(
        8, ge=0, description="Computations that may wait for a slot; past that, 503 with Retry-After at once."
    )
    request_timeout_s: float | None = Field(
        None, gt=0, description="Seconds a computation may take before its request gets a 504; none by default."
    )
    body_timeout_s: float = Field(
        60, gt=0, description="Seconds a request body may take to arrive in full; past them, a 408."
    )
    body_min_rate: float = Field(
        16_384,
        gt=0,
        description="Bytes a second a body must arrive at, on average, after its first second; slower, a 408.",
    )
    max_header_bytes: int = Field(
        32_768, ge=1024, description="Largest request head (request line and headers); past it, a 431."
    )
    max_url_bytes: int = Field(8_192, ge=256, description="Longest request URL; past it, a 414.")
    header_timeout_s: float = Field(
        10,
        gt=0,
        description="Seconds a request's head may take to arrive, from the connection's opening or its previous "
        "answer; past them the connection closes (with a 408 if part of a head came).",
    )
    max_connections: int = Field(
        1000,
        ge=1,
        description="Open connections a server process holds; at the bound the one that has waited longest for a "
        "request is closed, and when all have one in hand, a new connection's request gets a 503.",
    )
    retry_after_s: int = Field(1, ge=1, description="Retry-After, in seconds, on a 503.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated origins browsers may call the service from; empty (default) turns CORS off.",
    )
    log_level: str = Field(
        "info", description="Log level of the service's JSON-lines logs (debug, info, warning, error)."
    )
    inline_max_bytes: int = Field(
        65_536,
        ge=0,
        description="Requests with bodies up to this size are decoded on the event loop; larger ones, "
        "decoding included, in the compute pool.",
    )
    inline_max_work: int = Field(
        65_536,
        ge=0,
        description="Computations whose plan visits at most this many cells run on the event loop: a thread hop "
        "would cost more than they do. Anything more goes to the compute pool.",
    )
    max_batch: int = Field(
        32,
        ge=1,
        description="Most small requests of the same plan (op, parameters, shape, dtype) that arrive together "
        "and are pooled in one torch call, joined along their batch dimension; 1 pools each alone.",
    )
    max_work: int = Field(
        1_000_000_000,
        ge=1,
        description="Most cells one request's computation may visit (window cells, padded copies, scattered "
        "elements); past it, a 422 before anything is computed. The default keeps the costliest admitted request "
        "to about two seconds on two cores (benchmarks/work_cap.py).",
    )
    plan_cache_size: int = Field(
        1024, ge=0, description="Validated parameter sets and their plans kept for requests of the same shape."
    )
    torch_threads: int = Field(
        default_factory=available_cores,
        ge=1,
        description="Torch intra-op threads of each computation in the compute pool (default: the cores this "
        "process may use); the small ones on the event loop run on one.",
    )

    @field_validator("api_keys", "cors_origins", mode="before")
    @classmethod
    def split_keys(cls, value: object) -> object:
        # A comma-separated string, as an environment variable carries it.
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

    @field_validator("log_level")
    @classmethod
    def known_level(cls, value: str) -> str:
        if value.lower() not in {"debug", "info", "warning", "error", "critical"}:
            raise ValueError("log_level must be debug, info, warning, error or critical")
        return value.lower()

    @field_validator("device")
    @classmethod
    def known_device(cls, value: str) -> str:
        value = value.strip().lower()
        kind, _, index = value.partition(":")
        if kind not in {"auto", "cpu", "cuda", "mps"} or (index and (kind != "cuda" or not index.isdigit())):
            raise ValueError("device must be auto, cpu, cuda, cuda:N or mps")
        return value
