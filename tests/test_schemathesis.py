"""schemathesis against the service's own /openapi.json: generated requests for every
operation, checked for server errors and for answers that break the schema."""

from __future__ import annotations

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.main import create_app
from app.settings import Settings


@schemathesis.serializer("application/x-npy", "application/x-npz")
def raw_bytes(ctx, value):  # type: ignore[no-untyped-def]
    """Binary bodies go as generated: mostly not a valid .npy, which is the point."""
    return value if isinstance(value, bytes) else str(value).encode()


app = create_app(Settings(device="cpu", torch_threads=1))
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


@schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests_never_break_the_server_or_the_schema(case):
    case.call_and_validate(checks=CHECKS)
