"""The Python client, sync against a real server and async in process."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
import torch
import torch.nn.functional as F
from click.testing import Result
from pooling_client import AsyncPoolClient, PoolClient, PoolError

from app.main import create_app
from app.operations import OPERATIONS
from app.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
X = np.random.default_rng(21).standard_normal((2, 3, 8, 8)).astype(np.float32)


def test_one_method_per_operation_with_its_parameters_documented():
    for operation in OPERATIONS.values():
        for cls in (PoolClient, AsyncPoolClient):
            method = getattr(cls, operation.method)
            assert method.__name__ == operation.method
            fields = [name for name in operation.params.model_fields if name != "input"]
            assert all(f"{name}: " in method.__doc__ for name in fields)
            signature = inspect.signature(method)
            assert list(signature.parameters)[:2] == ["self", "x"]
            assert sorted(list(signature.parameters)[2:]) == sorted(fields)
            required = {name for name, info in operation.params.model_fields.items() if info.is_required()}
            assert {n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty} == {
                "self",
                *(required - {"input"}),
            }


def test_the_generated_modules_follow_the_operation_table():
    done = subprocess.run(
        [sys.executable, str(ROOT / "clients" / "python" / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("transport", ["binary", "json"])
def test_sync_client_returns_what_torch_computes(server, transport):
    want, want_indices = F.max_pool2d(torch.from_numpy(X), 3, 2, 1, return_indices=True)
    with PoolClient(server, transport=transport) as client:
        output, indices = client.max2d(X, kernel_size=3, stride=2, padding=1, return_indices=True)
        np.testing.assert_array_equal(output, want.numpy())
        np.testing.assert_array_equal(indices, want_indices.numpy())
        averaged = client.avg2d(X, kernel_size=2, padding="same", stride=1)
        assert averaged.shape == (2, 3, 8, 8) and averaged.dtype == np.float32
        unpooled = client.max_unpool2d(output, indices=indices, kernel_size=3, stride=2, padding=1, output_size=[8, 8])
        np.testing.assert_array_equal(unpooled, F.max_unpool2d(want, want_indices, 3, 2, 1, (8, 8)).numpy())
        assert client.adaptive_max1d(np.arange(10, dtype=np.int64)[None, None], output_size=3).tolist() == [[[3, 6, 9]]]


def test_json_answers_in_any_encoding_come_back_as_arrays(server):
    want = F.max_pool2d(torch.from_numpy(X), 2).numpy()
    with PoolClient(server, transport="json") as client:
        for encoding in ("json", "flat", "npy_base64"):
            np.testing.assert_array_equal(client.max2d(X, kernel_size=2, output_encoding=encoding), want)


def test_sync_client_raises_the_problem(server):
    with PoolClient(server) as client:
        with pytest.raises(TypeError, match="kernal_size"):
            client.max2d(X, kernal_size=2)  # the generated method has no such parameter
        with pytest.raises(PoolError) as caught:
            client.pool("max2d", X, kernal_size=2)  # the service has none either
    assert caught.value.status == 422
    assert caught.value.errors[0]["loc"] == ["query", "kernal_size"]
    assert "kernel_size" in caught.value.errors[0]["msg"]


def test_dry_runs_answer_the_shape(server):
    with PoolClient(server) as client:
        plan = client.max3d(input_shape=[1, 2, 9, 9, 9], kernel_size=2, stride=2, padding="same", dry_run=True)
    assert plan["shape"] == [1, 2, 5, 5, 5] and plan["padding"] == [[0, 1], [0, 1], [0, 1]]


def test_async_client_with_an_api_key_in_process():
    app = create_app(Settings(device="cpu", torch_threads=1, api_keys=["k-1"]))

    async def scenario() -> tuple[np.ndarray, int]:
        transport = httpx.ASGITransport(app=app)
        async with AsyncPoolClient(http=httpx.AsyncClient(transport=transport, base_url="http://pool")) as anonymous:
            try:
                await anonymous.global_avg2d(X)
                status = 0
            except PoolError as exc:
                status = exc.status
        keyed = httpx.AsyncClient(transport=transport, base_url="http://pool", headers={"authorization": "Bearer k-1"})
        async with AsyncPoolClient(http=keyed) as client:
            return await client.global_avg2d(X, keepdims=False), status

    result, status = asyncio.run(scenario())
    assert status == 401
    np.testing.assert_allclose(result, X.mean(axis=(2, 3)), rtol=1e-5)
    app.state.runtime.executor.close()


def test_503_is_retried_after_its_retry_after():
    answers = iter([503, 503, 200])
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status = next(answers)
        if status == 503:
            return httpx.Response(
                503, headers={"retry-after": "0"}, json={"title": "Service Unavailable", "detail": "busy"}
            )
        return httpx.Response(
            200, json={"op": "max1d", "shape": [1, 1, 1], "dtype": "float32", "output": [[[2.0]]], "indices": None}
        )

    with PoolClient(http=httpx.Client(transport=httpx.MockTransport(handler), base_url="http://pool")) as client:
        assert client.max1d(np.array([[[1.0, 2.0]]]), kernel_size=2).tolist() == [[[2.0]]]
    assert len(seen) == 3
    refusing = httpx.Client(
        transport=httpx.MockTransport(lambda r: httpx.Response(503, headers={"retry-after": "0"}, json={})),
        base_url="http://pool",
    )
    with PoolClient(http=refusing, retries=1) as client, pytest.raises(PoolError) as caught:
        client.max1d(np.array([[[1.0, 2.0]]]), kernel_size=2)
    assert caught.value.status == 503


def _case_inputs(name):
    """The first sample case of an op, its input (and indices) and torch's answer."""
    from tests.families import cases, reference
    from tests.reference import sample, unpool_inputs

    spec = OPERATIONS[name]
    case = cases(spec)[0]
    if spec.family.extra_tensors:
        values, indices = unpool_inputs(spec, case, torch.float32)
        x, extra = values.numpy(), indices.numpy()
    else:
        x, extra = sample(case.shape(), "float32"), None
    want, want_indices = reference(
        spec, torch.from_numpy(x), case.params, torch.from_numpy(extra) if extra is not None else None
    )
    return case.params, x, extra, want.numpy(), None if want_indices is None else want_indices.numpy()


def _with_indices(extra):
    """Only max-unpool's methods take indices."""
    return {} if extra is None else {"indices": extra}


def _check(result, want, want_indices):
    output, indices = result if isinstance(result, tuple) else (result, None)
    np.testing.assert_allclose(output, want, rtol=1e-5, atol=1e-6)
    if want_indices is not None:
        np.testing.assert_array_equal(indices, want_indices)


@pytest.mark.parametrize("name", list(OPERATIONS))
def test_sync_client_every_operation(server, name):
    params, x, extra, want, want_indices = _case_inputs(name)
    with PoolClient(server) as client:
        _check(getattr(client, OPERATIONS[name].method)(x, **_with_indices(extra), **params), want, want_indices)


def test_async_client_every_operation():
    app = create_app(Settings(device="cpu", torch_threads=1))

    async def scenario() -> None:
        http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://pool")
        async with AsyncPoolClient(http=http, transport="json") as client:
            for name, operation in OPERATIONS.items():
                params, x, extra, want, want_indices = _case_inputs(name)
                _check(await getattr(client, operation.method)(x, **_with_indices(extra), **params), want, want_indices)

    asyncio.run(scenario())
    app.state.runtime.executor.close()


def test_an_api_key_goes_on_a_given_http_clients_requests():
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(
            200, json={"op": "max1d", "shape": [1, 1, 1], "dtype": "float32", "output": [[[2.0]]], "indices": None}
        )

    http = httpx.Client(transport=httpx.MockTransport(handler), base_url="http://pool")
    with PoolClient(http=http, api_key="k-1") as client:
        client.max1d(np.array([[[1.0, 2.0]]]), kernel_size=2)
    assert seen == ["Bearer k-1"]


def test_a_problem_carries_the_request_id_the_service_answered_with(server):
    with PoolClient(server) as client, pytest.raises(PoolError) as caught:
        client.max2d(X, kernel_size=0)
    assert caught.value.status == 422 and caught.value.errors[0]["loc"][:2] == ["query", "kernel_size"]
    assert re.fullmatch(r"[0-9a-f]{32}", caught.value.request_id or "")


def test_non_finite_values_travel_in_json_as_the_service_spells_them(server):
    x = np.array([[[1.0, np.nan, -np.inf, 2.0, np.inf, 0.5]]], dtype=np.float32)
    want = F.max_pool1d(torch.from_numpy(x), 2).numpy()
    with PoolClient(server, transport="json") as client:
        np.testing.assert_array_equal(client.max1d(x, kernel_size=2), want)


def test_a_misspelled_parameter_is_a_type_error(tmp_path):
    """mypy sees the generated methods: a misspelled parameter is flagged before anything runs."""
    snippet = tmp_path / "snippet.py"
    snippet.write_text(
        "import numpy as np\n"
        "from pooling_client import AsyncPoolClient, PoolClient\n\n"
        "x = np.zeros((1, 1, 4, 4), np.float32)\n"
        "with PoolClient() as client:\n"
        "    client.max2d(x, kernel_size=2, stride=[2, 2], padding='same')\n"
        "    client.max2d(x, kernal_size=2)\n"
        "    client.avg2d(x, kernel_size=2, padding='sideways')\n\n"
        "async def main() -> None:\n"
        "    async with AsyncPoolClient() as pool:\n"
        "        await pool.max_unpool2d(x, indices=x, kernel_size=2)\n"
        "        await pool.lp1d(x, kernel_size=2)\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", str(snippet)],
        capture_output=True,
        text=True,
        env={**os.environ, "MYPYPATH": str(ROOT / "clients" / "python")},
        cwd=tmp_path,
    )
    errors = [line.split(" error: ")[1] for line in done.stdout.splitlines() if " error: " in line]
    assert len(errors) == 3, done.stdout
    assert errors[0].startswith('Unexpected keyword argument "kernal_size" for "max2d"')
    assert 'Argument "padding" to "avg2d"' in errors[1]
    assert errors[2].startswith('Missing named argument "norm_type" for "lp1d"')


def test_the_client_package_type_checks_strictly():
    done = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--strict", "pooling_client"],
        capture_output=True,
        text=True,
        cwd=ROOT / "clients" / "python",
    )
    assert done.returncode == 0, done.stdout


# ---------------------------------------------------------------- the command line


def _pool(server: str, *args: str) -> Result:
    from click.testing import CliRunner
    from pooling_client.cli import main

    return CliRunner().invoke(main, ["--url", server, *args], catch_exceptions=False)


def test_cli_pools_a_folder_of_arrays_and_images_as_torch_does(server, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(5)
    folder = tmp_path / "in"
    folder.mkdir()
    arrays = {f"x{i}": rng.standard_normal((2, 3, 9, 8)).astype(np.float32) for i in range(3)}
    for name, array in arrays.items():
        np.save(folder / f"{name}.npy", array)
    pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "photo.png")
    done = _pool(
        server,
        "max2d",
        str(folder),
        "--kernel-size",
        "3,2",
        "--stride",
        "2",
        "--return-indices",
        "-o",
        str(tmp_path / "out"),
    )
    assert done.exit_code == 0, done.output
    for name, array in arrays.items():
        want, want_indices = F.max_pool2d(torch.from_numpy(array), (3, 2), 2, return_indices=True)
        with np.load(tmp_path / "out" / f"{name}.npz") as archive:
            np.testing.assert_array_equal(archive["output"], want.numpy())
            np.testing.assert_array_equal(archive["indices"], want_indices.numpy())
    image = torch.from_numpy(np.moveaxis(pixels, -1, 0)[None].astype(np.float32))
    with np.load(tmp_path / "out" / "photo.npz") as archive:
        np.testing.assert_array_equal(archive["output"], F.max_pool2d(image, (3, 2), 2).numpy())
    # An image out: the average of each 2×2 block, rounded to the nearest pixel value.
    done = _pool(server, "avg2d", str(folder / "photo.png"), "--kernel-size", "2", "-o", str(tmp_path / "small.png"))
    assert done.exit_code == 0, done.output
    small = np.asarray(Image.open(tmp_path / "small.png"))
    want = np.rint(F.avg_pool2d(image.double(), 2)[0].numpy()).astype(np.uint8)
    np.testing.assert_array_equal(np.moveaxis(small, -1, 0), want)


def test_cli_unpools_an_npz_and_answers_dry_runs(server, tmp_path):
    x = torch.from_numpy(np.random.default_rng(6).standard_normal((1, 2, 8, 8)).astype(np.float32))
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    np.savez(tmp_path / "pooled.npz", input=pooled.numpy(), indices=indices.numpy())
    done = _pool(
        server, "max-unpool2d", str(tmp_path / "pooled.npz"), "--kernel-size", "2", "-o", str(tmp_path / "u.npy")
    )
    assert done.exit_code == 0, done.output
    np.testing.assert_array_equal(np.load(tmp_path / "u.npy"), F.max_unpool2d(pooled, indices, 2).numpy())
    done = _pool(
        server, "max3d", "--input-shape", "[1,2,9,9,9]", "--kernel-size", "2", "--padding", "same", "--dry-run"
    )
    assert done.exit_code == 0, done.output
    plan = orjson.loads(done.output)
    assert plan["shape"] == [1, 2, 5, 5, 5] and plan["padding"] == [[0, 1], [0, 1], [0, 1]]


def test_cli_lists_operations_and_their_parameters(server):
    listed = _pool(server, "ops")
    assert [line.split()[0] for line in listed.output.splitlines()] == list(OPERATIONS)
    described = _pool(server, "ops", "fractional-max2d")
    for name in OPERATIONS["fractional-max2d"].params.model_fields:
        if name != "input":
            assert f"--{name.replace('_', '-')} (" in described.output
    helped = _pool(server, "lp2d", "--help")
    assert "--norm-type" in helped.output and "torch.nn.functional.lp_pool2d" in helped.output


def test_cli_exits_1_with_the_problem_and_its_request_id(server, tmp_path):
    np.save(tmp_path / "x.npy", X)
    done = _pool(server, "max2d", str(tmp_path / "x.npy"), "--kernel-size", "0")
    assert done.exit_code == 1
    assert "422 Unprocessable Entity" in done.output and "query.kernel_size" in done.output
    assert re.search(r"request id: [0-9a-f]{32}", done.output)
    missing = _pool(server, "max2d", str(tmp_path / "nothing-*.npy"), "--kernel-size", "2")
    assert missing.exit_code == 2 and "no such file" in missing.output


def test_json_transport_keeps_every_dtype_exact(server):
    big = np.array([[[2**53 + 1, 5, 2**62 + 3, -(2**63)]]], dtype=np.int64)
    with PoolClient(server, transport="json") as client:
        pooled = client.max1d(big, kernel_size=2)
        assert pooled.dtype == np.int64 and pooled.tolist() == [[[2**53 + 1, 2**62 + 3]]]
        small = client.max1d(np.array([[[1, 250, 3, 4]]], np.uint8), kernel_size=2)
        assert small.dtype == np.uint8 and small.tolist() == [[[250, 4]]]
        assert client.max1d(np.zeros((0, 1, 4), np.float16), kernel_size=2).shape == (0, 1, 2)
        unbatched = client.avg1d(np.arange(6, dtype=np.float64).reshape(2, 3), kernel_size=3)
        assert unbatched.dtype == np.float64 and unbatched.tolist() == [[1.0], [4.0]]


@pytest.mark.parametrize("transport", ["binary", "json"])
def test_parameters_the_way_python_writes_them(server, transport):
    x = np.random.default_rng(3).standard_normal((1, 2, 6, 6)).astype(np.float32)
    with PoolClient(server, transport=transport) as client:
        # An Lp norm of infinity is the largest magnitude... as torch computes it.
        np.testing.assert_allclose(
            client.lp2d(x, kernel_size=np.int64(2), norm_type=float("inf")),
            F.lp_pool2d(torch.from_numpy(x), float("inf"), 2).numpy(),
            rtol=1e-6,
        )
        # A required parameter's None is a value: an adaptive pool keeps that size.
        kept = client.adaptive_avg2d(x, output_size=[None, 3])
        np.testing.assert_allclose(kept, F.adaptive_avg_pool2d(torch.from_numpy(x), (None, 3)).numpy(), rtol=1e-6)
        # dtype: the tensor is sent in it.
        wide = client.max2d(x, kernel_size=2, dtype="float64")
        assert wide.dtype == np.float64
        np.testing.assert_array_equal(wide, F.max_pool2d(torch.from_numpy(x).double(), 2).numpy())


def test_a_given_http_client_is_left_as_it_was(server):
    http = httpx.Client(base_url=server)
    with PoolClient(http=http, api_key="k-1") as client:
        client.max1d(np.array([[[1.0, 2.0]]], np.float32), kernel_size=2)
    assert "authorization" not in http.headers


def test_cli_names_outputs_apart_and_reads_its_own_outputs(server, tmp_path):
    from PIL import Image

    x = torch.from_numpy(np.random.default_rng(7).standard_normal((1, 2, 8, 8)).astype(np.float32))
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        np.save(tmp_path / folder / "x.npy", x.numpy())
    clash = _pool(
        server,
        "max2d",
        str(tmp_path / "a" / "x.npy"),
        str(tmp_path / "b" / "x.npy"),
        "--kernel-size",
        "2",
        "-o",
        str(tmp_path / "out"),
    )
    assert clash.exit_code == 2 and "name them apart" in clash.output and not (tmp_path / "out").exists()
    # `-o folder/` is a folder even for one input; the file is written where it is named.
    done = _pool(
        server,
        "max2d",
        str(tmp_path / "a" / "x.npy"),
        "--kernel-size",
        "2",
        "--return-indices",
        "-o",
        f"{tmp_path / 'p'}/",
    )
    assert done.exit_code == 0, done.output
    assert (tmp_path / "p" / "x.npz").exists()
    # A max pooling's .npz (output and indices) unpools as it is.
    done = _pool(
        server,
        "max-unpool2d",
        str(tmp_path / "p" / "x.npz"),
        "--kernel-size",
        "2",
        "-o",
        str(tmp_path / "u.data"),
        "--format",
        "npy",
    )
    assert done.exit_code == 0, done.output
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    np.testing.assert_array_equal(np.load(tmp_path / "u.data"), F.max_unpool2d(pooled, indices, 2).numpy())
    # A second run over a folder does not read the results the first wrote beside the inputs.
    for _ in range(2):
        done = _pool(server, "avg2d", str(tmp_path / "a"), "--kernel-size", "2")
        assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["x.avg2d.npz", "x.npy"]
    # An input is never overwritten by its result.
    same = _pool(
        server, "avg2d", str(tmp_path / "a" / "x.npy"), "--kernel-size", "2", "-o", str(tmp_path / "a" / "x.npy")
    )
    assert same.exit_code == 2 and "would be overwritten" in same.output
    # 16-bit grey keeps its values.
    deep = np.random.default_rng(8).integers(0, 65536, (6, 8), dtype=np.uint16)
    Image.fromarray(deep).save(tmp_path / "deep.png")
    done = _pool(server, "max2d", str(tmp_path / "deep.png"), "--kernel-size", "2", "-o", str(tmp_path / "deep.npy"))
    assert done.exit_code == 0, done.output
    want = F.max_pool2d(torch.from_numpy(deep.astype(np.float32))[None, None], 2).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "deep.npy"), want)


def test_cli_options_of_every_kind(server, tmp_path):
    x = torch.from_numpy(np.random.default_rng(9).standard_normal((1, 2, 7, 7)).astype(np.float32))
    np.save(tmp_path / "x.npy", x.numpy())
    done = _pool(
        server,
        "lp2d",
        str(tmp_path / "x.npy"),
        "--kernel-size",
        "2",
        "--norm-type",
        "Infinity",
        "-o",
        str(tmp_path / "lp.npy"),
    )
    assert done.exit_code == 0, done.output
    np.testing.assert_allclose(np.load(tmp_path / "lp.npy"), F.lp_pool2d(x, float("inf"), 2).numpy(), rtol=1e-6)
    done = _pool(
        server,
        "avg2d",
        str(tmp_path / "x.npy"),
        "--kernel-size",
        "3",
        "--padding",
        "1",
        "--no-count-include-pad",
        "-o",
        str(tmp_path / "avg.npy"),
    )
    assert done.exit_code == 0, done.output
    want = F.avg_pool2d(x, 3, padding=1, count_include_pad=False).numpy()
    np.testing.assert_allclose(np.load(tmp_path / "avg.npy"), want, rtol=1e-6)
    done = _pool(
        server,
        "max2d",
        str(tmp_path / "x.npy"),
        "--kernel-size",
        "2",
        "--padding",
        "[[0,1],[1,0]]",
        "-o",
        str(tmp_path / "m.npy"),
    )
    assert done.exit_code == 0, done.output
    want = F.max_pool2d(F.pad(x, (1, 0, 0, 1), value=-torch.inf), 2).numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "m.npy"), want)
    refused = _pool(server, "max2d", str(tmp_path / "x.npy"), "--kernel-size", "2", "--output-encoding", "bogus")
    assert refused.exit_code == 2 and "bogus" in refused.output
    nowhere = _pool("http://127.0.0.1:9", "max2d", str(tmp_path / "x.npy"), "--kernel-size", "2")
    assert nowhere.exit_code == 1 and "did not answer" in nowhere.output and "x.npy" in nowhere.output
