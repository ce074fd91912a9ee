"""The shapes of the protocol's metadata answers, as Triton's REST API writes them: what the
OpenAPI document declares for them, so generated clients get types rather than `unknown`.
The routes (`app.inference`) build plain dicts; FastAPI checks them against these."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    parameters: dict[str, Any] | None = None


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelReady(BaseModel):
    name: str
    ready: bool


class TensorConfig(BaseModel):
    name: str
    data_type: str
    dims: list[int]


class ConfigParameter(BaseModel):
    string_value: str  # a parameter's schema and whether it is required, as JSON


class ModelConfig(BaseModel):
    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[TensorConfig]
    output: list[TensorConfig]
    parameters: dict[str, ConfigParameter]


class Duration(BaseModel):
    count: int
    ns: int


class InferenceStats(BaseModel):
    success: Duration
    fail: Duration
    queue: Duration
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration
    cache_hit: Duration
    cache_miss: Duration


class ModelStatistics(BaseModel):
    name: str
    version: str
    last_inference: int
    inference_count: int
    execution_count: int
    inference_stats: InferenceStats
    batch_stats: list[Any]
    memory_usage: list[Any]


class Statistics(BaseModel):
    model_stats: list[ModelStatistics]


class RepositoryModel(BaseModel):
    name: str
    version: str
    state: str
    reason: str
