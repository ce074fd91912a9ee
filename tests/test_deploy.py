"""The Dockerfile and compose file, checked without a Docker engine."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from app.main import create_app
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def _compose_service() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["pooling"]


def test_compose_settings_are_real_settings_and_build_an_app(monkeypatch):
    environment = _compose_service()["environment"]
    fields = {f"POOL_{name.upper()}" for name in Settings.model_fields}
    assert set(environment) <= fields, set(environment) - fields
    for key, value in environment.items():
        monkeypatch.setenv(key, value.replace("${POOL_API_KEYS:-}", ""))
    drain, grace = float(environment["POOL_DRAIN_S"]), float(environment["POOL_SHUTDOWN_GRACE_S"])
    assert drain + grace < int(_compose_service()["stop_grace_period"].rstrip("s"))
    settings = Settings()
    assert settings.device == "cpu" and settings.max_concurrency == 2 and settings.api_keys == []
    app = create_app(settings)
    app.state.runtime.executor.close()


def test_compose_and_dockerfile_agree_on_port_healthcheck_and_command():
    service = _compose_service()
    dockerfile = (ROOT / "Dockerfile").read_text()
    nginx = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["nginx"]
    assert nginx["ports"] == [
        "${POOL_BIND:-127.0.0.1}:${POOL_HOST_PORT:-8000}:8080",
        "${POOL_BIND:-127.0.0.1}:${POOL_GRPC_HOST_PORT:-8001}:8081",
    ]
    assert "EXPOSE 8000 8001" in dockerfile and "POOL_GRPC_PORT=8001" in dockerfile
    assert service["environment"]["POOL_GRPC_PORT"] == "8001"
    assert "server pooling:8000" in (ROOT / "deploy" / "nginx" / "upstreams.conf").read_text()
    assert "server pooling:8001" in (ROOT / "deploy" / "nginx" / "grpc_upstreams.conf").read_text()
    assert "/healthz" in " ".join(service["healthcheck"]["test"]) and "/healthz" in dockerfile
    assert 'CMD ["python", "-m", "app"]' in dockerfile and "POOL_HOST=0.0.0.0" in dockerfile
    assert "POOL_PORT=8000" in dockerfile
    assert re.search(r"^USER 10001:10001$", dockerfile, re.MULTILINE), "the image runs as a non-root user"
    assert service["deploy"]["resources"]["limits"] == {"cpus": "2", "memory": "4g"}


def test_api_keys_come_from_a_comma_separated_variable(monkeypatch):
    monkeypatch.setenv("POOL_API_KEYS", "alpha, beta,,gamma")
    assert Settings().api_keys == ["alpha", "beta", "gamma"]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cpu:0"])
def test_unknown_devices_are_refused_at_start(device):
    with pytest.raises(ValueError, match="device"):
        Settings(device=device)


def test_dockerfile_passes_hadolint():
    beside_python = Path(sys.executable).parent / "hadolint"  # the venv's, when it is not on PATH
    hadolint = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (it comes with the test extras)")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


K8S = ROOT / "deploy" / "k8s"


def _manifests() -> dict[str, dict]:
    return {doc["kind"]: doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml.safe_load_all(path.read_text())}


def test_kubernetes_manifests_are_valid():
    kubernetes_validate = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate comes with the test extras"
    )
    manifests = _manifests()
    assert set(manifests) == {
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, "1.30.0", strict=True)


def test_kubernetes_deployment_probes_limits_settings_and_grace_agree_with_the_service():
    manifests = _manifests()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "grpc": 8001}
    # Started once grpc.health.v1 answers on the gRPC port; then ready and alive over HTTP.
    assert container["startupProbe"]["grpc"]["port"] == ports["grpc"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    service = {port["name"]: port for port in manifests["Service"]["spec"]["ports"]}
    assert service["grpc"]["targetPort"] == "grpc" and service["grpc"]["appProtocol"] == "kubernetes.io/h2c"
    assert container["resources"]["limits"]["cpu"] and container["resources"]["requests"]["memory"]
    assert pod["securityContext"]["runAsNonRoot"] and container["securityContext"]["readOnlyRootFilesystem"]
    settings = manifests["ConfigMap"]["data"]
    fields = {f"POOL_{name.upper()}" for name in Settings.model_fields}
    assert set(settings) <= fields and "POOL_API_KEYS" in manifests["Secret"]["stringData"]
    assert int(settings["POOL_GRPC_PORT"]) == ports["grpc"]
    assert (
        float(settings["POOL_DRAIN_S"]) + float(settings["POOL_SHUTDOWN_GRACE_S"])
        < pod["terminationGracePeriodSeconds"]
    )
    assert settings["POOL_TORCH_THREADS"] == container["resources"]["limits"]["cpu"]  # no oversubscription
    assert manifests["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["resource"]["name"] == "cpu"


SCHEMAS = ROOT / "deploy" / "schemas"


def _custom_resource(path: str) -> dict:
    return yaml.safe_load((ROOT / "deploy" / path).read_text())


@pytest.mark.parametrize(
    ("path", "schema"),
    [
        ("keda/scaledobject.yaml", "keda.sh/scaledobject_v1alpha1.json"),
        ("kserve/inferenceservice.yaml", "serving.kserve.io/inferenceservice_v1beta1.json"),
    ],
)
def test_custom_resources_are_valid_against_their_pinned_schemas(path, schema):
    """The KEDA ScaledObject and the KServe InferenceService, against copies of their CRDs'
    schemas (deploy/schemas/README.md says where from), which refuse unknown fields."""
    import jsonschema

    manifest = _custom_resource(path)
    jsonschema.validate(manifest, json.loads((SCHEMAS / schema).read_text()))
    # A misspelt field is caught: the check can fail.
    broken = {**manifest, "spec": {**manifest["spec"], "minReplicaCuont": 1}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, json.loads((SCHEMAS / schema).read_text()))


def test_keda_scales_the_deployment_on_metrics_the_service_exports():
    scaled = _custom_resource("keda/scaledobject.yaml")
    deployment = _manifests()["Deployment"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    queries = [trigger["metadata"]["query"] for trigger in scaled["spec"]["triggers"]]
    assert _metric_names(" ".join(queries)) == {"pool_queue_length", "pool_computations_in_flight"}
    assert _metric_names(" ".join(queries)) <= _exported()


def test_kserve_predictor_serves_the_protocol_on_its_port():
    service = _custom_resource("kserve/inferenceservice.yaml")
    (container,) = service["spec"]["predictor"]["containers"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert set(env) <= {f"POOL_{name.upper()}" for name in Settings.model_fields}
    assert int(env["POOL_PORT"]) == container["ports"][0]["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"


def test_grafana_dashboard_queries_name_only_exported_metrics():
    dashboard = json.loads((ROOT / "deploy" / "grafana" / "pooling-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 10
    named = set().union(*(_metric_names(expr) for expr in expressions))
    assert named <= _exported(), named - _exported()
    titles = " ".join(panel["title"].lower() for panel in dashboard["panels"])
    for subject in ("requests", "latency", "queue", "shed", "event-loop lag", "memory"):
        assert subject in titles


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(?:pool|process)_[a-z_]+\b", expression))


def _exported() -> set[str]:
    """Every series name the service's /metrics has after a request, suffixes and all."""
    from tests.conftest import Client

    client = Client(max_body_bytes=1024)
    try:
        assert client.post("/pool/max2d", json={"input": [[[[1.0, 2.0], [3.0, 4.0]]]], "kernel_size": 1}).is_success
        assert client.post("/pool/max2d", content=b" " * 2048).status_code == 413  # a refusal, counted
        text = client.get("/metrics").text
    finally:
        client.close()
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}
