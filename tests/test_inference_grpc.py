"""The Open Inference Protocol over gRPC: tritonclient.grpc, unchanged, against a real
server, for every call it makes; typed contents and crafted messages by hand; keys, limits,
deadlines, compression, health and the drain."""

from __future__ import annotations

import gzip
import json
import signal
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc
from tritonclient.utils import InferenceServerException

from app.operations import OPERATIONS
from benchmarks.serve import free_port
from tests.conftest import PROCESSES, serving
from tests.families import cases
from tests.test_ops import _compare, _expected, _inputs

X = np.random.default_rng(7).standard_normal((2, 3, 8, 8)).astype(np.float32)
LIMIT = 4 * 1024 * 1024  # the test server's body limit, so messages past it are cheap to send
FAMILY_OPS = {operation.family.name: name for name, operation in OPERATIONS.items()}


class Served:
    def __init__(self, url: str, grpc_port: int, log: Path) -> None:
        self.url = url
        self.target = f"127.0.0.1:{grpc_port}"
        self.log = log
        self.channel = grpc.insecure_channel(self.target)
        self.stub = service_pb2_grpc.GRPCInferenceServiceStub(self.channel)
        self.client = triton.InferenceServerClient(self.target)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc")
    port = free_port()
    with serving(folder, grpc_port=str(port), max_body_bytes=str(LIMIT), max_work=str(10**11)) as url:
        yield Served(url, port, folder / "server.log")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grpc-keyed")
    port = free_port()
    with serving(folder, grpc_port=str(port), api_keys="k1,k2", grpc_max_calls="2", max_work=str(10**11)) as url:
        yield Served(url, port, folder / "server.log")


def _input(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> triton.InferInput:
    tensor = triton.InferInput(name, list(x.shape), datatype)
    tensor.set_data_from_numpy(x)
    return tensor


def _parameters(params: dict) -> dict:
    """Pooling parameters as InferParameters carry them: lists as their JSON text."""
    return {key: json.dumps(value) if isinstance(value, list | dict) else value for key, value in params.items()}


def _error(excinfo: pytest.ExceptionInfo[InferenceServerException]) -> tuple[str, str]:
    return excinfo.value.status(), excinfo.value.message()


# ---------------------------------------------------------------- every call tritonclient makes


def test_server_live_ready_and_described(served):
    client = served.client
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata(as_json=True)
    assert metadata == httpx.get(f"{served.url}/v2").json()
    assert "statistics" in metadata["extensions"] and "model_configuration" in metadata["extensions"]


@pytest.mark.parametrize("op", FAMILY_OPS.values())
def test_model_calls_answer_what_rest_answers(served, op):
    client, rest = served.client, triton_http.InferenceServerClient(served.url.removeprefix("http://"))
    for version in ("", "1"):
        assert client.is_model_ready(op, version)
        metadata = client.get_model_metadata(op, version, as_json=True)
        expected = rest.get_model_metadata(op)
        for tensor in (*expected["inputs"], *expected["outputs"]):
            tensor.pop("parameters", None)  # the proto's tensors carry no parameters
        assert {**metadata, "inputs": metadata["inputs"], "outputs": metadata["outputs"]} == {
            **expected,
            "inputs": [{**t, "shape": [str(n) for n in t["shape"]]} for t in expected["inputs"]],
            "outputs": [{**t, "shape": [str(n) for n in t["shape"]]} for t in expected["outputs"]],
        }
        config = client.get_model_config(op, version, as_json=True)["config"]
        assert config["name"] == op and [i["name"] for i in config["input"]] == [
            i["name"] for i in rest.get_model_config(op)["input"]
        ]
        assert {key: value["string_value"] for key, value in config["parameters"].items()} == {
            key: value["string_value"] for key, value in rest.get_model_config(op)["parameters"].items()
        }
    rest.close()


def test_other_versions_and_models_are_not_found(served):
    client = served.client
    for call in (
        lambda: client.is_model_ready("max2d", "2"),
        lambda: client.get_model_metadata("max2d", "2"),
        lambda: client.get_model_config("max2D"),
        lambda: client.get_inference_statistics("max2d", "2"),
        lambda: client.infer("max2d", [_input(X)], model_version="2", parameters={"kernel_size": 2}),
        lambda: client.infer("max9d", [_input(X)], parameters={"kernel_size": 2}),
    ):
        with pytest.raises(InferenceServerException) as excinfo:
            call()
        status, message = _error(excinfo)
        assert status == "StatusCode.NOT_FOUND", message
        assert "no model" in message or "no version '2'" in message


def test_repository_index_lists_every_model_ready(served):
    index = served.client.get_model_repository_index(as_json=True)["models"]
    assert [entry["name"] for entry in index] == list(OPERATIONS)
    assert {(entry["version"], entry["state"]) for entry in index} == {("1", "READY")}


def test_statistics_count_grpc_inferences(served):
    client = served.client
    before = client.get_inference_statistics("global-max2d", as_json=True)["model_stats"][0]
    client.infer("global-max2d", [_input(X)])
    after = client.get_inference_statistics("global-max2d", "1", as_json=True)["model_stats"][0]
    assert int(after["inference_count"]) == int(before.get("inference_count", 0)) + 1
    assert int(after["inference_stats"]["compute_infer"]["ns"]) > 0
    rest = httpx.get(f"{served.url}/v2/models/global-max2d/stats").json()["model_stats"][0]
    assert rest["inference_count"] == int(after["inference_count"])
    assert len(client.get_inference_statistics(as_json=True)["model_stats"]) == len(OPERATIONS)


# ---------------------------------------------------------------- inference, every family


@pytest.mark.parametrize("op", FAMILY_OPS.values())
def test_every_family_pools_as_torch_does(served, op):
    operation = OPERATIONS[op]
    case = cases(operation)[0]
    x, indices = _inputs(operation, case, "float32")
    inputs = [_input(x)] + ([_input(indices, "indices", "INT64")] if indices is not None else [])
    outputs = [triton.InferRequestedOutput(name) for name in ("output", "indices")[: 1 + operation.family.has_indices]]
    params = {key: value for key, value in case.params.items() if value is not None}
    if operation.family.has_indices:
        params["return_indices"] = True
    result = served.client.infer(op, inputs, outputs=outputs, parameters=_parameters(params), request_id="r-7")
    want, want_indices = _expected(operation, case, x, "float32", indices)
    _compare(operation, result.as_numpy("output"), want, "float32")
    if operation.family.has_indices:
        np.testing.assert_array_equal(result.as_numpy("indices"), want_indices.numpy())
    response = result.get_response()
    assert response.model_name == op and response.model_version == "1" and response.id == "r-7"


def test_fractional_pooling_returns_its_seed(served):
    params = {"kernel_size": 2, "output_size": [4, 4]}
    result = served.client.infer("fractional-max2d", [_input(X)], parameters=_parameters(params))
    seed = result.get_response().parameters["random_seed"].int64_param
    again = served.client.infer(
        "fractional-max2d", [_input(X)], parameters=_parameters({**params, "random_seed": seed})
    )
    np.testing.assert_array_equal(result.as_numpy("output"), again.as_numpy("output"))


@pytest.mark.parametrize("datatype", ["FP16", "BF16", "INT8", "UINT8", "INT64", "FP64"])
def test_raw_tensors_in_every_width(served, datatype):
    x = np.array([[[1.5, -2.0, 3.25, 0.5, 7.0, -1.0]]], dtype=np.float32)
    if datatype == "BF16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        array = x.astype(ml_dtypes.bfloat16)
    else:
        array = x.astype(triton.triton_to_np_dtype(datatype))
    result = served.client.infer("max1d", [_input(array, datatype=datatype)], parameters={"kernel_size": 2})
    want = F.max_pool1d(torch.from_numpy(array.astype(np.float64)), 2).numpy()
    assert result.as_numpy("output").astype(np.float64).tolist() == want.tolist()
    assert result.get_response().outputs[0].datatype == datatype


def test_large_integers_arrive_and_return_exactly(served):
    x = (np.arange(12, dtype=np.int64).reshape(1, 2, 6) * 3**35) + 2**62
    result = served.client.infer("max1d", [_input(x, datatype="INT64")], parameters={"kernel_size": 3})
    assert result.as_numpy("output").tolist() == x.reshape(1, 2, 2, 3).max(axis=-1).tolist()


def _typed_request(op: str, x: np.ndarray, datatype: str, field: str, **parameters) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=op)
    tensor = request.inputs.add(name="input", datatype=datatype, shape=x.shape)
    getattr(tensor.contents, field).extend(x.ravel().tolist())
    for key, value in parameters.items():
        setattr(request.parameters[key], "bool_param" if isinstance(value, bool) else "int64_param", value)
    return request


@pytest.mark.parametrize(
    ("datatype", "field", "dtype"),
    [
        ("FP32", "fp32_contents", np.float32),
        ("FP64", "fp64_contents", np.float64),
        ("INT64", "int64_contents", np.int64),
        ("INT8", "int_contents", np.int8),
        ("INT16", "int_contents", np.int16),
        ("UINT8", "uint_contents", np.uint8),
    ],
)
def test_typed_contents(served, datatype, field, dtype):
    x = (np.random.default_rng(2).standard_normal((1, 2, 4, 4)) * 50).astype(dtype)
    response = served.stub.ModelInfer(_typed_request("max2d", x, datatype, field, kernel_size=2, return_indices=True))
    result = triton.InferResult(response)
    want, want_indices = F.max_pool2d(torch.from_numpy(x.astype(np.float64)), 2, return_indices=True)
    assert result.as_numpy("output").astype(np.float64).tolist() == want.tolist()
    assert result.as_numpy("indices").tolist() == want_indices.tolist()


@pytest.mark.parametrize(
    ("request_of", "names"),
    [
        # INT8 values that do not fit: refused, not wrapped.
        (lambda: _typed_request("max1d", np.array([[[1, 300]]]), "INT8", "int_contents", kernel_size=1), "INT8"),
        # FP16 has no typed field.
        (lambda: _typed_request("max1d", np.array([[[1.0, 2.0]]]), "FP16", "fp32_contents"), "raw_input_contents"),
        # Data in the wrong field for the datatype.
        (lambda: _typed_request("max1d", np.array([[[1, 2]]]), "FP32", "int64_contents"), "fp32_contents"),
        # Fewer values than the shape needs.
        (lambda: _shape_mismatch(), "shape [1, 1, 4] needs 4"),
    ],
)
def test_typed_contents_are_exact_or_refused(served, request_of, names):
    with pytest.raises(grpc.RpcError) as excinfo:
        served.stub.ModelInfer(request_of())
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert names in excinfo.value.details()


def _shape_mismatch() -> pb.ModelInferRequest:
    request = _typed_request("max1d", np.array([[[1.0, 2.0]]]), "FP32", "fp32_contents", kernel_size=1)
    request.inputs[0].shape[:] = [1, 1, 4]
    return request


# ---------------------------------------------------------------- errors, limits, crafted messages


def test_errors_map_to_status_codes_with_their_place(served):
    client = served.client
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("max2d", [_input(X)], parameters={"kernel_size": 0})
    status, message = _error(excinfo)
    assert status == "StatusCode.INVALID_ARGUMENT" and "parameters.kernel_size" in message
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("max2d", [_input(X)], parameters={"kernal_size": 2})
    assert "kernal_size" in _error(excinfo)[1]
    with pytest.raises(InferenceServerException) as excinfo:
        client.infer("max2d", [_input(X)], parameters={"kernel_size": "[2, 2"})
    assert _error(excinfo)[0] == "StatusCode.INVALID_ARGUMENT" and "JSON" in _error(excinfo)[1]


def test_nan_and_infinite_parameters_are_never_mistaken_for_each_other(served):
    """A plan is kept by its parameters' JSON, where orjson writes NaN and the infinities
    alike as null: such parameters are planned afresh every time."""
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    result = served.client.infer("lp2d", [_input(x)], parameters={"norm_type": float("inf"), "kernel_size": 2})
    np.testing.assert_array_equal(result.as_numpy("output"), F.max_pool2d(torch.from_numpy(x), 2).numpy())
    for value in (float("nan"), float("-inf")):
        with pytest.raises(InferenceServerException) as excinfo:
            served.client.infer("lp2d", [_input(x)], parameters={"norm_type": value, "kernel_size": 2})
        assert _error(excinfo)[0] == "StatusCode.INVALID_ARGUMENT", value


def test_sizes_past_the_limits_are_resource_exhausted(served):
    big = np.zeros((1, 1, 1024, 1280), dtype=np.float32)  # 5 MiB: past the message limit
    with pytest.raises(InferenceServerException) as excinfo:
        served.client.infer("max2d", [_input(big)], parameters={"kernel_size": 2})
    assert _error(excinfo)[0] == "StatusCode.RESOURCE_EXHAUSTED"
    # The output's element count, planned before anything is computed.
    with pytest.raises(InferenceServerException) as excinfo:
        served.client.infer(
            "max-unpool1d",
            [_input(np.ones((1, 1, 4), np.float32)), _input(np.zeros((1, 1, 4), np.int64), "indices", "INT64")],
            parameters={"kernel_size": 1, "stride": 10**8},
        )
    status, message = _error(excinfo)
    assert status in ("StatusCode.RESOURCE_EXHAUSTED", "StatusCode.INVALID_ARGUMENT"), message


def test_compressed_requests_are_read_and_bombs_refused(served):
    for algorithm in ("gzip", "deflate"):
        result = served.client.infer(
            "avg2d", [_input(X)], parameters={"kernel_size": 2}, compression_algorithm=algorithm
        )
        np.testing.assert_allclose(result.as_numpy("output"), F.avg_pool2d(torch.from_numpy(X), 2).numpy(), rtol=1e-6)
    zeros = np.zeros((1, 4, 1024, 1024), dtype=np.float32)  # 16 MiB of zeros: a few KiB compressed
    assert len(gzip.compress(zeros.tobytes())) < LIMIT // 100
    with pytest.raises(InferenceServerException) as excinfo:
        served.client.infer("max2d", [_input(zeros)], parameters={"kernel_size": 2}, compression_algorithm="gzip")
    assert _error(excinfo)[0] == "StatusCode.RESOURCE_EXHAUSTED"
    assert served.client.is_server_live()


def test_a_message_of_countless_fields_is_refused_unparsed(served):
    request = pb.ModelInferRequest(model_name="max1d")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 1, 2]).contents.fp32_contents.extend([1.0, 2.0])
    for _ in range(5000):
        request.outputs.add()
    with pytest.raises(grpc.RpcError) as excinfo:
        served.stub.ModelInfer(request)
    assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "more than 1024 fields" in excinfo.value.details()
    garbage = served.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    for message in (b"\xff\xff\xff", b"\x0a\x80", b"\x0b"):
        with pytest.raises(grpc.RpcError) as excinfo:
            garbage(message)
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "ModelInferRequest" in excinfo.value.details()


def test_calls_it_does_not_serve_are_unimplemented(served):
    with pytest.raises(InferenceServerException) as excinfo:
        served.client.load_model("max2d")
    assert _error(excinfo)[0] == "StatusCode.UNIMPLEMENTED"


# ---------------------------------------------------------------- time


def _long(planes: int, **parameters: object) -> tuple[list[triton.InferInput], dict]:
    """max2d over one-pixel planes with a kernel of 100 and its padding: seconds of work."""
    x = np.arange(planes, dtype=np.float32).reshape(1, planes, 1, 1)
    return [_input(x)], {"kernel_size": 100, "stride": 1, "padding": "[[99, 99], [99, 99]]", **parameters}


def test_the_deadline_and_the_timeout_bound_a_call(served):
    inputs, params = _long(60)
    started = time.perf_counter()
    with pytest.raises(InferenceServerException) as excinfo:
        served.client.infer("max2d", inputs, parameters=params, client_timeout=0.3)
    assert _error(excinfo)[0] == "StatusCode.DEADLINE_EXCEEDED"
    with pytest.raises(InferenceServerException) as excinfo:
        served.client.infer("max2d", inputs, parameters=params, timeout=300_000)
    status, message = _error(excinfo)
    assert status == "StatusCode.DEADLINE_EXCEEDED" and "the request's timeout" in message
    assert time.perf_counter() - started < 5
    # The stopped computations free their slots.
    deadline = time.perf_counter() + 5
    while True:
        stats = httpx.get(f"{served.url}/metrics").text
        if "pool_computations_in_flight 0.0" in stats:
            break
        assert time.perf_counter() < deadline, "a stopped computation kept its slot"
        time.sleep(0.1)
    inputs, params = _long(1, kernel_size=2, padding="[[1, 1], [1, 1]]")
    assert served.client.infer("max2d", inputs, parameters=params, client_timeout=30).as_numpy("output").shape


# ---------------------------------------------------------------- keys, concurrency, records


def test_keys_are_asked_for_computing_and_usage(keyed):
    client = keyed.client
    assert client.is_server_ready() and client.get_model_metadata("max2d").name == "max2d"
    for call in (
        lambda headers: client.infer("max2d", [_input(X)], parameters={"kernel_size": 2}, headers=headers),
        lambda headers: client.get_inference_statistics("max2d", headers=headers),
    ):
        for headers in (None, {"authorization": "Bearer k3"}, {"x-api-key": ""}):
            with pytest.raises(InferenceServerException) as excinfo:
                call(headers)
            assert _error(excinfo)[0] == "StatusCode.UNAUTHENTICATED"
        call({"authorization": "Bearer k2"})
        call({"x-api-key": "k1"})


def test_calls_past_the_bound_are_refused_at_once(keyed):
    """Two long computations hold the two call places; a third call is refused at once."""
    x = np.arange(60, dtype=np.float32).reshape(1, 60, 1, 1)
    request = pb.ModelInferRequest(model_name="max2d")
    request.inputs.add(name="input", datatype="FP32", shape=x.shape)
    request.raw_input_contents.append(x.tobytes())
    request.parameters["kernel_size"].int64_param = 100
    request.parameters["stride"].int64_param = 1
    request.parameters["padding"].string_param = "[[99, 99], [99, 99]]"  # seconds of work

    def hold() -> grpc.Future:
        # A call that finished a moment ago may still hold its place: try again until one runs.
        for _ in range(50):
            call = keyed.stub.ModelInfer.future(request, metadata=[("x-api-key", "k1")], timeout=60)
            time.sleep(0.1)
            if not call.done():
                return call
        raise AssertionError("no call was let in to hold a place")

    held = [hold(), hold()]
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                keyed.client.is_server_live()
            except InferenceServerException as error:
                assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
                break
            assert time.monotonic() < deadline, "a third call was let in"
            time.sleep(0.02)
        assert not any(call.done() for call in held)
    finally:
        for call in held:
            call.cancel()  # and with the calls, their computations stop
    _settled(keyed.client)


def _settled(client: triton.InferenceServerClient, within: float = 10) -> None:
    """Returns once calls are let in again, twice running."""
    deadline, admitted = time.monotonic() + within, 0
    while admitted < 2:
        try:
            admitted = admitted + 1 if client.is_server_live() else 0
        except InferenceServerException:
            admitted = 0
        assert time.monotonic() < deadline, "calls were still refused"
        time.sleep(0.05)


def test_health_is_checked_not_watched(served):
    health = health_pb2_grpc.HealthStub(served.channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as excinfo:
        next(health.Watch(health_pb2.HealthCheckRequest()))  # a stream held open with no key asked
    assert excinfo.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_malformed_messages_to_any_call_are_invalid_arguments(served):
    for method in ("ModelMetadata", "ModelConfig", "ModelStatistics", "ServerLive"):
        call = served.channel.unary_unary(f"/inference.GRPCInferenceService/{method}")
        with pytest.raises(grpc.RpcError) as excinfo:
            call(b"\x0a\x05ab")  # a name that runs past the end
        assert excinfo.value.code() == grpc.StatusCode.INVALID_ARGUMENT, method


def test_a_shape_of_countless_dimensions_is_refused_unread(served):
    request = pb.ModelInferRequest(model_name="max1d")
    request.inputs.add(name="input", datatype="FP32", shape=[1] * 100_000)
    started = time.perf_counter()
    with pytest.raises(grpc.RpcError) as excinfo:
        served.stub.ModelInfer(request)
    assert excinfo.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "dimensions" in excinfo.value.details()
    assert time.perf_counter() - started < 1


def test_every_problem_has_a_status_code():
    from app import errors
    from app.inference_grpc import CODES

    statuses = {
        cls.status for cls in vars(errors).values() if isinstance(cls, type) and issubclass(cls, errors.ProblemError)
    }
    assert statuses <= set(CODES), statuses - set(CODES)


def test_a_message_that_does_not_arrive_in_time_is_refused():
    import asyncio

    from app.errors import BodyTooSlow
    from app.inference_grpc import _Calls

    class Waiting:
        async def read(self):
            await asyncio.sleep(60)

    calls = _Calls(runtime=None, keys=[], message_timeout_s=0.1)  # type: ignore[arg-type]
    with pytest.raises(BodyTooSlow, match=r"did not arrive within 0\.1 s"):
        asyncio.run(calls._message(Waiting()))


def test_calls_are_metered_and_logged(served):
    served.client.infer("avg1d", [_input(X[:, :, 0])], parameters={"kernel_size": 2}, headers={"x-request-id": "g-42"})
    with pytest.raises(InferenceServerException):
        served.client.infer("avg1d", [_input(X[:, :, 0])], parameters={"kernel_size": 99})
    metrics = httpx.get(f"{served.url}/metrics").text
    assert 'pool_requests_total{op="avg1d",protocol="v2-grpc",status="200"}' in metrics
    assert 'pool_requests_total{op="avg1d",protocol="v2-grpc",status="422"}' in metrics
    deadline = time.monotonic() + 3
    while '"request_id":"g-42"' not in served.log.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.1)
    line = next(json.loads(line) for line in served.log.read_text().splitlines() if '"request_id":"g-42"' in line)
    assert line["method"] == "GRPC" and line["path"] == "/inference.GRPCInferenceService/ModelInfer"
    assert line["op"] == "avg1d" and line["status"] == 200 and line["bytes_in"] > 0 and line["bytes_out"] > 0


def test_the_request_id_comes_back_in_the_trailers(served):
    _, call = served.stub.ServerLive.with_call(pb.ServerLiveRequest(), metadata=[("x-request-id", "trace-1")])
    assert dict(call.trailing_metadata())["x-request-id"] == "trace-1"
    with pytest.raises(grpc.RpcError) as excinfo:
        served.stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), metadata=[("x-request-id", "trace-2")])
    assert dict(excinfo.value.trailing_metadata())["x-request-id"] == "trace-2"


# ---------------------------------------------------------------- health and the drain


def test_health_and_readiness_over_grpc_during_a_drain(tmp_path):
    port = free_port()
    with serving(tmp_path, grpc_port=str(port), drain_s="4") as url:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        client = triton.InferenceServerClient(f"127.0.0.1:{port}")
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.SERVING
        assert client.is_server_ready()
        PROCESSES[url].send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 3
        while client.is_server_ready():
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert httpx.get(f"{url}/readyz").status_code == 503
        for service in ("", "inference.GRPCInferenceService"):
            status = health.Check(health_pb2.HealthCheckRequest(service=service)).status
            assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        assert client.is_server_live()
        result = client.infer("max2d", [_input(X)], parameters={"kernel_size": 2})  # still served
        np.testing.assert_array_equal(result.as_numpy("output"), F.max_pool2d(torch.from_numpy(X), 2).numpy())
        # It stops as uvicorn stops on a signal: by the same signal, once shut down.
        assert PROCESSES[url].wait(timeout=30) in (0, -signal.SIGTERM)
        with pytest.raises(InferenceServerException):
            client.is_server_live()
        client.close()
        channel.close()


def test_messages_parse_as_the_protos_say(served):
    """ServerMetadata as a message, and back to the REST body's JSON."""
    response = served.stub.ServerMetadata(pb.ServerMetadataRequest())
    assert json_format.MessageToDict(response) == httpx.get(f"{served.url}/v2").json()
