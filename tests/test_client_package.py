"""The client package installed alone, as a user of another project installs it: a fresh
virtual environment with `pip install clients/python[cli]` and nothing else, used against a
real server; every answer compared here with torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import venv
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from app.operations import OPERATIONS
from tests.test_client import _case_inputs

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "test-artifacts"

# Runs inside the client's environment: every op, sync and async, binary and JSON.
SCRIPT = """
import asyncio, json, sys
import numpy as np
from pooling_client import AsyncPoolClient, PoolClient, PoolError, OPERATIONS

url, folder = sys.argv[1], sys.argv[2]
cases = json.load(open(f"{folder}/cases.json"))
results = {}

def keep(name, answer):
    output, indices = answer if isinstance(answer, tuple) else (answer, None)
    results[f"{name}/output"] = output
    if indices is not None:
        results[f"{name}/indices"] = indices

def arguments(name):
    case = cases[name]
    x = np.load(f"{folder}/{case['file']}")
    extra = {"indices": np.load(f"{folder}/{case['indices']}")} if case["indices"] else {}
    return x, {**extra, **case["params"]}

for transport in ("binary", "json"):
    with PoolClient(url, transport=transport) as client:
        for name in cases:
            x, params = arguments(name)
            keep(f"sync-{transport}/{name}", getattr(client, OPERATIONS[name]["method"])(x, **params))

async def run_async():
    async with AsyncPoolClient(url) as client:
        for name in cases:
            x, params = arguments(name)
            keep(f"async-binary/{name}", await getattr(client, OPERATIONS[name]["method"])(x, **params))
asyncio.run(run_async())

try:
    PoolClient(url).max2d(np.zeros((1, 1, 4, 4), np.float32), kernel_size=9)
except PoolError as error:
    print(json.dumps({"status": error.status, "request_id": error.request_id, "detail": error.detail}))
np.savez(f"{folder}/results.npz", **results)
"""


def _size(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file() and not path.is_symlink())


@pytest.fixture(scope="module")
def client_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("client-env")
    # From a clean copy: a build folder left in the checkout could carry modules it no longer has.
    source = tmp_path_factory.mktemp("client-source") / "python"
    shutil.copytree(
        ROOT / "clients" / "python", source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__")
    )
    started = time.monotonic()
    venv.create(folder, with_pip=True)
    python = folder / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{source}[cli]"],
        check=True,
        timeout=600,
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
    )
    figures = {"install_seconds": round(time.monotonic() - started, 1), "venv_bytes": _size(folder)}
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "client-package.json").write_text(json.dumps(figures, indent=2) + "\n")
    return folder


def test_the_client_installs_without_torch_fastapi_or_the_server(client_env):
    probe = (
        "import importlib.util, pooling_client, pooling_client.cli\n"
        "print([m for m in ('torch', 'fastapi', 'starlette', 'pydantic', 'app') if importlib.util.find_spec(m)])"
    )
    done = subprocess.run(  # from a folder of its own: `python -c` puts the working folder on the path
        [str(client_env / "bin" / "python"), "-c", probe], capture_output=True, text=True, check=True, cwd=client_env
    )
    assert done.stdout.strip() == "[]"
    assert (client_env / "bin" / "pool").exists()
    # Far smaller than the server's environment, which carries torch.
    assert _size(client_env) < 300_000_000


def test_every_operation_sync_and_async_binary_and_json_from_the_installed_client(client_env, server, tmp_path):
    cases, expected = {}, {}
    for name in OPERATIONS:
        params, x, extra, want, want_indices = _case_inputs(name)
        np.save(tmp_path / f"{name}.npy", x)
        if extra is not None:
            np.save(tmp_path / f"{name}.indices.npy", extra)
        cases[name] = {
            "file": f"{name}.npy",
            "indices": f"{name}.indices.npy" if extra is not None else None,
            "params": params,
        }
        expected[name] = (want, want_indices)
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    done = subprocess.run(
        [str(client_env / "bin" / "python"), "-c", SCRIPT, server, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    problem = json.loads(done.stdout.strip().splitlines()[-1])
    assert problem["status"] == 422 and len(problem["request_id"]) == 32 and "window spans 9" in problem["detail"]
    with np.load(tmp_path / "results.npz") as results:
        assert len(results.files) == 3 * sum(1 + (w[1] is not None) for w in expected.values())
        for way in ("sync-binary", "sync-json", "async-binary"):
            for name, (want, want_indices) in expected.items():
                np.testing.assert_allclose(results[f"{way}/{name}/output"], want, rtol=1e-5, atol=1e-6)
                if want_indices is not None:
                    np.testing.assert_array_equal(results[f"{way}/{name}/indices"], want_indices)


def test_the_installed_command_line_over_a_folder(client_env, server, tmp_path):
    rng = np.random.default_rng(8)
    arrays = {f"v{i}": rng.standard_normal((1, 2, 6, 6, 6)).astype(np.float32) for i in range(4)}
    (tmp_path / "in").mkdir()
    for name, array in arrays.items():
        np.save(tmp_path / "in" / f"{name}.npy", array)
    command = [str(client_env / "bin" / "pool"), "avg3d", str(tmp_path / "in"), "--kernel-size", "3"]
    command += ["--stride", "1,2,3", "--padding", "1", "-o", str(tmp_path / "out"), "--format", "npy"]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "POOL_URL": server},
    )
    assert done.returncode == 0, done.stderr
    for name, array in arrays.items():
        want = F.avg_pool3d(torch.from_numpy(array), 3, (1, 2, 3), 1).numpy()
        np.testing.assert_allclose(np.load(tmp_path / "out" / f"{name}.npy"), want, rtol=1e-6, atol=1e-7)
    refused = subprocess.run(
        [str(client_env / "bin" / "pool"), "--url", server, "max2d", str(tmp_path / "in" / "v0.npy")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 2 and "--kernel-size" in refused.stderr
