"""The service routes, the catalogue listing and the offline docs pages."""

from __future__ import annotations

import re

import torch

from app import __version__
from app.operations import OPERATIONS

CONTRACT_OPS = {
    *(
        f"{family}{rank}d"
        for family in ("max", "avg", "lp", "adaptive-max", "adaptive-avg", "global-max", "global-avg", "max-unpool")
        for rank in (1, 2, 3)
    ),
    "fractional-max2d",
    "fractional-max3d",
}


def test_catalogue_holds_exactly_the_contract_ops():
    assert set(OPERATIONS) == CONTRACT_OPS


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {"status": "ready"}


def test_info_reports_versions_device_and_limits(client):
    assert client.get("/info").json() == {
        "version": __version__,
        "torch_version": torch.__version__,
        "device": "cpu",
        "auth": False,
        "limits": {"max_body_bytes": 64 * 1024 * 1024, "max_elements": 16_777_216, "max_ndim": 6, "max_concurrency": 2},
    }


def test_listing_describes_every_op_and_its_parameters(client):
    listing = {op["name"]: op for op in client.get("/pool").json()["operations"]}
    assert set(listing) == CONTRACT_OPS
    max2d = listing["max2d"]
    assert max2d["reference"] == "torch.nn.functional.max_pool2d" and max2d["returns_indices"] is True
    params = {p["name"]: p for p in max2d["parameters"]}
    assert params["kernel_size"]["required"] is True
    assert params["ceil_mode"]["default"] is False and params["padding"]["default"] == 0
    assert params["stride"]["description"]
    assert {p["name"] for p in listing["max-unpool1d"]["parameters"]} >= {
        "input",
        "indices",
        "kernel_size",
        "output_size",
    }
    assert listing["fractional-max2d"]["reference"] == "torch.nn.functional.fractional_max_pool2d"
    assert "int64" in listing["max3d"]["dtypes"] and "int64" not in listing["avg3d"]["dtypes"]


def test_openapi_has_a_route_with_parameters_and_examples_per_op(client):
    schema = client.get("/openapi.json").json()
    for name, spec in OPERATIONS.items():
        operation = schema["paths"][f"/pool/{name}"]["post"]
        assert operation["operationId"] == f"pool-{name}"
        content = operation["requestBody"]["content"]
        assert set(content) == {"application/json", "application/x-npy", "application/x-npz"}
        properties = content["application/json"]["schema"]["properties"]
        assert set(properties) == set(spec.params.model_fields)
        assert content["application/json"]["examples"], name
        assert set(operation["responses"]) >= {"200", "400", "413", "422"}


def test_openapi_examples_run_and_succeed(client):
    """Every worked example in the docs is a request the service answers."""
    schema = client.get("/openapi.json").json()
    for name in OPERATIONS:
        examples = schema["paths"][f"/pool/{name}"]["post"]["requestBody"]["content"]["application/json"]["examples"]
        for example in examples.values():
            response = client.post(f"/pool/{name}", json=example["value"])
            assert response.status_code == 200, (name, response.text)


def test_docs_pages_load_only_bundled_assets(client):
    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        sources = re.findall(r'(?:src|href)="([^"]+)"', html) + re.findall(r"url: '([^']+)'", html)
        assert sources, page
        for source in sources:
            assert source.startswith("/"), f"{page} loads {source} from elsewhere"
            assert client.get(source).status_code == 200, source


def test_root_leads_to_the_playground_which_links_the_docs(client):
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307) and response.headers["location"] == "/playground"
    page = client.get("/playground").text
    assert 'href="/docs"' in page and "<script src=" not in page and "http" not in page.split("<script>")[0]
