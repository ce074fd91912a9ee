"""The Open Inference Protocol (KServe v2): tritonclient, unchanged, against a real
server, binary and JSON, and the protocol's JSON by hand."""

from __future__ import annotations

import json
import signal
import time

import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from app.operations import OPERATIONS
from tests.conftest import PROCESSES, assert_problem, serving

X = np.random.default_rng(31).standard_normal((2, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def triton_client(server):
    client = triton.InferenceServerClient(url=server.removeprefix("http://"))
    yield client
    client.close()


def test_server_and_models_are_live_ready_and_described(triton_client):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.get_server_metadata()["name"] == "pooling-service"
    for name in ("max2d", "global-avg3d", "max-unpool1d"):
        assert triton_client.is_model_ready(name)
        metadata = triton_client.get_model_metadata(name)
        assert metadata["name"] == name and metadata["inputs"][0]["name"] == "input"
    assert [o["name"] for o in triton_client.get_model_metadata("max2d")["outputs"]] == ["output", "indices"]


def test_every_model_route_under_its_one_version(triton_client):
    for family_op in {operation.family.name: name for name, operation in OPERATIONS.items()}.values():
        assert triton_client.is_model_ready(family_op, "1")
        assert triton_client.get_model_metadata(family_op, "1") == triton_client.get_model_metadata(family_op)
        assert triton_client.get_model_config(family_op, "1") == triton_client.get_model_config(family_op)
    assert not triton_client.is_model_ready("max2d", "2")
    with pytest.raises(InferenceServerException, match="max2d has no version '2'"):
        triton_client.get_model_metadata("max2d", "2")
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    result = triton_client.infer("avg2d", [tensor], model_version="1", parameters={"kernel_size": 2})
    np.testing.assert_allclose(result.as_numpy("output"), F.avg_pool2d(torch.from_numpy(X), 2).numpy(), rtol=1e-6)
    assert result.get_response()["model_version"] == "1"
    # Triton's priority and timeout (microseconds) are the protocol's own parameters.
    result = triton_client.infer("max2d", [tensor], parameters={"kernel_size": 2}, priority=2, timeout=30_000_000)
    np.testing.assert_array_equal(result.as_numpy("output"), F.max_pool2d(torch.from_numpy(X), 2).numpy())
    with pytest.raises(InferenceServerException, match="max2d has no version '3'"):
        triton_client.infer("max2d", [tensor], model_version="3", parameters={"kernel_size": 2})


def test_model_configuration_describes_inputs_outputs_and_parameters(triton_client):
    for name, operation in OPERATIONS.items():
        config = triton_client.get_model_config(name)
        assert config["name"] == name and config["max_batch_size"] == 0
        assert [i["name"] for i in config["input"]] == ["input", *operation.family.extra_tensors]
        assert [o["name"] for o in config["output"]] == ["output"] + (
            ["indices"] if operation.family.has_indices else []
        )
        assert all(i["dims"] == [-1] * (operation.rank + 2) for i in config["input"])
        fields = operation.params.model_fields
        described = {key: json.loads(value["string_value"]) for key, value in config["parameters"].items()}
        assert set(described) == set(fields) - {"input", "indices", "dry_run", "input_shape", "output_encoding"}
        for key, value in described.items():
            assert value["required"] == fields[key].is_required()
    assert json.loads(triton_client.get_model_config("lp2d")["parameters"]["norm_type"]["string_value"])["required"]


def test_statistics_count_inferences_and_their_phases(make_client):
    """Triton's statistics extension: every computation of a model through either door, its
    phases, and failures; a dry run is no inference."""
    client = make_client(inline_max_bytes=1024)
    x = np.random.default_rng(4).standard_normal((1, 2, 32, 32)).astype(np.float32)  # a body for the pool
    assert client.post("/pool/max2d", json={"input": x.tolist(), "kernel_size": 2}).status_code == 200
    assert client.post("/pool/max2d", json={"input": [[[[1.0, 2.0]]]], "kernel_size": 1}).status_code == 200
    body = {
        "parameters": {"kernel_size": 2},
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}],
    }
    assert client.post("/v2/models/max2d/versions/1/infer", json=body).status_code == 200
    assert client.post("/pool/max2d", json={"input": [[[[1.0]]]], "kernel_size": 5}).status_code == 422
    dry = {"input_shape": [1, 1, 4, 4], "kernel_size": 2, "dry_run": True}
    assert client.post("/pool/max2d", json=dry).status_code == 200
    assert client.post("/pool/max2d", json={**dry, "kernel_size": 9}).status_code == 422  # a dry run is no inference
    refused = client.post(
        "/pool/max2d", content=b"{}", headers={"content-type": "application/json", "content-encoding": "br"}
    )
    assert refused.status_code == 415  # refused before the body was in: it never reached the model
    stats = client.get("/v2/models/max2d/stats").json()["model_stats"]
    assert stats == client.get("/v2/models/max2d/versions/1/stats").json()["model_stats"]
    (entry,) = stats
    assert entry["name"] == "max2d" and entry["version"] == "1"
    assert entry["inference_count"] == entry["execution_count"] == 3 and entry["last_inference"] > 0
    inference = entry["inference_stats"]
    assert inference["success"]["count"] == 3 and inference["fail"]["count"] == 1
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert inference[phase]["count"] == 3 and inference[phase]["ns"] > 0
    assert inference["success"]["ns"] >= sum(
        inference[p]["ns"] for p in ("compute_input", "compute_infer", "compute_output")
    )
    every = client.get("/v2/models/stats").json()["model_stats"]
    assert [e["name"] for e in every] == list(OPERATIONS)
    assert next(e for e in every if e["name"] == "avg2d")["inference_count"] == 0
    assert_problem(client.get("/v2/models/max2d/versions/2/stats"), 404)


def test_statistics_need_a_key_where_keys_are_set(make_client):
    client = make_client(api_keys=["k1"])
    for path in ("/v2/models/stats", "/v2/models/max2d/stats", "/v2/models/max2d/versions/1/stats"):
        assert_problem(client.get(path), 401)
        assert client.get(path, headers={"x-api-key": "k1"}).status_code == 200
    assert client.get("/v2/models/max2d/config").status_code == 200  # metadata stays open


def test_tritonclient_reads_the_statistics(triton_client):
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    before = triton_client.get_inference_statistics("global-max2d")["model_stats"][0]["inference_count"]
    triton_client.infer("global-max2d", [tensor])
    after = triton_client.get_inference_statistics("global-max2d", "1")["model_stats"][0]
    assert after["inference_count"] == before + 1 and after["inference_stats"]["compute_infer"]["ns"] > 0
    assert len(triton_client.get_inference_statistics()["model_stats"]) == len(OPERATIONS)


def test_every_protocol_error_carries_error(client):
    for method, path in (("POST", "/v2"), ("POST", "/v2/models/max2d"), ("GET", "/v2/models/nope/config")):
        problem = client.request(method, path).json()
        assert problem["error"] == problem["detail"], (method, path)


def test_the_repository_index_lists_every_model_ready(triton_client):
    index = triton_client.get_model_repository_index()
    assert [entry["name"] for entry in index] == list(OPERATIONS)
    assert {(entry["version"], entry["state"]) for entry in index} == {("1", "READY")}


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_pools_as_torch_does(triton_client, binary):
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X, binary_data=binary)
    outputs = [triton.InferRequestedOutput(name, binary_data=binary) for name in ("output", "indices")]
    result = triton_client.infer(
        "max2d", [tensor], outputs=outputs, parameters={"kernel_size": 3, "stride": 2, "padding": 1}
    )
    want, want_indices = F.max_pool2d(torch.from_numpy(X), 3, 2, 1, return_indices=True)
    np.testing.assert_array_equal(result.as_numpy("output"), want.numpy())
    np.testing.assert_array_equal(result.as_numpy("indices"), want_indices.numpy())


def test_tritonclient_defaults_to_binary_outputs_and_takes_integers(triton_client):
    x = np.arange(2 * 10, dtype=np.int64).reshape(1, 2, 10) * 3**30
    tensor = triton.InferInput("input", list(x.shape), "INT64")
    tensor.set_data_from_numpy(x)
    result = triton_client.infer("adaptive-max1d", [tensor], parameters={"output_size": 3, "return_indices": True})
    assert result.as_numpy("output").tolist() == x[:, :, [3, 6, 9]].tolist()
    assert result.as_numpy("indices").tolist() == [[[3, 6, 9], [3, 6, 9]]]


def test_unpooling_takes_two_inputs(triton_client):
    values, indices = F.max_pool1d(torch.from_numpy(X[:, :, 0]), 2, return_indices=True)
    inputs = []
    for name, array, datatype in (("input", values.numpy(), "FP32"), ("indices", indices.numpy(), "INT64")):
        tensor = triton.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    result = triton_client.infer("max-unpool1d", inputs, parameters={"kernel_size": 2})
    np.testing.assert_array_equal(result.as_numpy("output"), F.max_unpool1d(values, indices, 2).numpy())


def test_unknown_parameters_are_refused_by_name(triton_client):
    tensor = triton.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    with pytest.raises(InferenceServerException, match="kernal_size"):
        triton_client.infer("max2d", [tensor], parameters={"kernal_size": 2})


def test_protocol_json_by_hand(client):
    body = {
        "id": "r-1",
        "parameters": {"kernel_size": 2, "return_indices": True},
        "inputs": [{"name": "input", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [1, 5, 3, 2]}],
    }
    answer = client.post("/v2/models/max2d/infer", json=body).json()
    assert answer["model_name"] == "max2d" and answer["id"] == "r-1"
    assert answer["outputs"] == [
        {"name": "output", "datatype": "FP32", "shape": [1, 1, 1, 1], "data": [5.0]},
        {"name": "indices", "datatype": "INT64", "shape": [1, 1, 1, 1], "data": [1]},
    ]


@pytest.mark.parametrize(
    ("body", "status", "names"),
    [
        ({"parameters": {"kernel_size": 2, "colour": 1}, "inputs": []}, 400, "colour"),
        ({"inputs": [{"name": "pixels", "shape": [1], "datatype": "FP32", "data": [1]}]}, 400, "pixels"),
        ({"inputs": [{"name": "input", "shape": [1, 1, 2], "datatype": "FP32", "data": [1, 2, 3]}]}, 400, "shape"),
        ({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}, 422, "datatype"),
        (
            {"inputs": [{"name": "input", "shape": [1, 1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]},
            422,
            "kernel_size",
        ),
        ({"input": [1]}, 400, "input"),
    ],
)
def test_protocol_errors_carry_the_error_member(client, body, status, names):
    response = client.post("/v2/models/max1d/infer", json=body)
    problem = assert_problem(response, status)
    assert problem["error"] == problem["detail"] and names in response.text


def test_every_operation_is_a_model(client):
    for name in OPERATIONS:
        assert client.get(f"/v2/models/{name}/ready").json() == {"name": name, "ready": True}
    assert_problem(client.get("/v2/models/max9d"), 404)


@pytest.mark.parametrize("datatype", ["UINT8", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BF16"])
def test_every_datatype_pooling_takes_as_json(client, datatype):
    body = {
        "parameters": {"kernel_size": 2},
        "inputs": [{"name": "input", "shape": [1, 1, 4], "datatype": datatype, "data": [1, 7, 3, 2]}],
    }
    output = client.post("/v2/models/max1d/infer", json=body).json()["outputs"][0]
    assert output == {"name": "output", "datatype": datatype, "shape": [1, 1, 2], "data": [7, 3]}


@pytest.mark.parametrize("datatype", ["FP16", "BF16", "INT16"])
def test_binary_tensors_in_half_and_integer_datatypes(triton_client, datatype):
    x = np.array([[[1.5, -2.0, 3.25, 0.5]]], dtype=np.float32)
    tensor = triton.InferInput("input", list(x.shape), datatype)
    if datatype == "BF16":
        ml_dtypes = pytest.importorskip("ml_dtypes")  # tritonclient's own bfloat16 comes from it
        tensor.set_data_from_numpy(x.astype(ml_dtypes.bfloat16))
    else:
        tensor.set_data_from_numpy(x.astype(np.float16 if datatype == "FP16" else np.int16))
    result = triton_client.infer("max1d", [tensor], parameters={"kernel_size": 2})
    expected = [1.5, 3.25] if datatype != "INT16" else [1, 3]
    assert result.as_numpy("output").astype(np.float64).ravel().tolist() == expected


def test_readiness_agrees_over_both_protocols_while_draining(tmp_path):
    """On SIGTERM both readiness routes answer 503, each with its own body, while requests
    are still served for the drain."""
    with serving(tmp_path, drain_s="4") as url:
        triton_client = triton.InferenceServerClient(url=url.removeprefix("http://"))
        assert triton_client.is_server_ready() and httpx.get(f"{url}/readyz").status_code == 200
        PROCESSES[url].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while httpx.get(f"{url}/readyz").status_code != 503:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        ready = httpx.get(f"{url}/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        assert httpx.get(f"{url}/readyz").json() == {"status": "draining"}
        assert not triton_client.is_server_ready() and triton_client.is_server_live()
        tensor = triton.InferInput("input", list(X.shape), "FP32")
        tensor.set_data_from_numpy(X)
        result = triton_client.infer("max2d", [tensor], parameters={"kernel_size": 2})  # still served
        np.testing.assert_array_equal(result.as_numpy("output"), F.max_pool2d(torch.from_numpy(X), 2).numpy())
        triton_client.close()
