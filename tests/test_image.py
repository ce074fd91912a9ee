"""The image built from the repository's Dockerfile, with build arguments only, and run as the
README runs it; then docker-compose.yml's replicas behind nginx.

The test starts a Docker engine of its own (Debian's `docker.io`, cgroupfs, state in a cache
folder so base images and layers are kept between runs on one machine) and stops it at the end.
No image registry is reachable, so base images are made from Debian's packages with mmdebstrap,
and torch, pinned in pyproject.toml, is served to the build from a loopback package index.
Traffic goes to loopback and to the containers the test started.

Skipped where no engine can start; failed instead when `CI` is set (`.ci/run` installs
docker.io, docker-compose and mmdebstrap)."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.server
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import tritonclient.grpc as triton_grpc

from app.settings import Settings
from benchmarks.serve import free_port, wait_ready

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("POOL_IMAGE_TEST_CACHE", "/var/cache/pooling-service-image-test"))
ARTIFACTS = ROOT / "test-artifacts"
PROJECT = "pooltest"  # the compose project's name
SMOKE = "pool-image-smoke"  # the single container's name


def _compose_command() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    return None


def _missing() -> list[str]:
    missing = [tool for tool in ("dockerd", "docker", "mmdebstrap") if shutil.which(tool) is None]
    if _compose_command() is None:
        missing.append("docker-compose")
    if os.geteuid() != 0:
        missing.append("root (dockerd and mmdebstrap need it)")
    return missing


def _run(args: list[str], env: dict[str, str], timeout: float, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args[:4])} … exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    return done


class Engine:
    """A dockerd of the test's own (its state and run folders under CACHE, its own containerd
    namespace), and `docker` bound to its socket."""

    def __init__(self) -> None:
        self.run = CACHE / "run"
        self._clean_run_folder()
        self.run.mkdir()
        self.socket = self.run / "docker.sock"
        self.env = {**os.environ, "DOCKER_HOST": f"unix://{self.socket}", "DOCKER_BUILDKIT": "0"}
        self.log_path = CACHE / "dockerd.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [
                "dockerd",
                "--data-root", str(CACHE / "docker"),
                "--exec-root", str(self.run / "exec"),
                "-H", f"unix://{self.socket}",
                "--pidfile", str(self.run / "dockerd.pid"),
                "--exec-opt", "native.cgroupdriver=cgroupfs",
                "--containerd-namespace", "pooling-image-test",
                "--containerd-plugins-namespace", "pooling-image-test-plugins",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while self.docker("info", check=False, timeout=10).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise EngineUnavailable(f"dockerd did not start; the end of its log:\n{tail}")
            time.sleep(0.5)

    def _clean_run_folder(self) -> None:
        """Ends a dockerd that a run cut short left behind, and unmounts what it left mounted."""
        pidfile = self.run / "dockerd.pid"
        if pidfile.exists():
            with contextlib.suppress(ValueError, ProcessLookupError):
                pid = int(pidfile.read_text())
                if "dockerd" in Path(f"/proc/{pid}/cmdline").read_text(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
                    time.sleep(1)
        mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
        for mount in sorted((m for m in mounts if m.startswith(f"{self.run}/")), reverse=True):
            subprocess.run(["umount", "-l", mount], check=False)
        shutil.rmtree(self.run, ignore_errors=True)

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run(["docker", *args], self.env, timeout, check)

    def compose(self, *args: str, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess[str]:
        command = _compose_command()
        assert command is not None
        return _run(
            [*command, "-p", PROJECT, "-f", str(ROOT / "docker-compose.yml"), *args], {**self.env, **env}, timeout
        )

    def clear(self) -> None:
        """Removes every container and network left by an earlier run that was cut short."""
        containers = self.docker("ps", "-aq").stdout.split()
        if containers:
            self.docker("rm", "-f", *containers)
        self.docker("network", "prune", "-f")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()
        self._clean_run_folder()  # dockerd leaves its network namespace mounted there


class EngineUnavailable(Exception):
    pass


def _unavailable(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    missing = _missing()
    if missing:
        _unavailable(f"no Docker engine can start here: missing {', '.join(missing)}")
    CACHE.mkdir(parents=True, exist_ok=True)
    # One engine per cache folder at a time.
    with (CACHE / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            engine = Engine()
        except EngineUnavailable as error:
            _unavailable(str(error))
        try:
            engine.clear()
            yield engine
            engine.clear()
            _forget_old_images(engine)
        finally:
            engine.stop()


def _forget_old_images(engine: Engine) -> None:
    """Base images of earlier recipes, then layers no image uses any more: the cache holds what
    the next run builds from, and no more."""
    current = {f"pool-test/{name}:{_recipe_tag(*recipe)}" for name, recipe in BASES.items()}
    for tag in engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}", "pool-test/*").stdout.split():
        if tag.split(":")[0] in {f"pool-test/{name}" for name in BASES} and tag not in current:
            engine.docker("rmi", tag, check=False)
    engine.docker("image", "prune", "-f")


HOOKS = (
    'cp /etc/ssl/certs/ca-certificates.crt "$1/etc/ssl/certs/ca-certificates.crt"',
    'printf "[global]\\ncert = /etc/ssl/certs/ca-certificates.crt\\n" > "$1/etc/pip.conf"',
)
# name -> (Debian packages, `docker import --change` instructions)
BASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "python": ("python3,python3-venv,python-is-python3,ca-certificates", ()),
    "nginx": ("nginx-light,wget,ca-certificates", ('CMD ["nginx", "-g", "daemon off;"]',)),
}


def _recipe_tag(packages: str, changes: tuple[str, ...]) -> str:
    """Changes with the recipe, and with this machine's CA certificates, which go into the image."""
    certificates = hashlib.sha256(Path("/etc/ssl/certs/ca-certificates.crt").read_bytes()).hexdigest()
    return hashlib.sha256(json.dumps([packages, HOOKS, changes, certificates]).encode()).hexdigest()[:12]


def _base_image(engine: Engine, name: str) -> str:
    """A Debian bookworm image with the packages of BASES[name], and the machine's CA
    certificates and a pip.conf that trusts them (builds reach PyPI through this machine's
    network)."""
    packages, changes = BASES[name]
    tag = f"pool-test/{name}:{_recipe_tag(packages, changes)}"
    if engine.docker("image", "inspect", tag, check=False).returncode == 0:
        return tag
    with tempfile.TemporaryDirectory(prefix="pool-base-") as folder:
        tarball = Path(folder) / "base.tar"
        hooks = [f"--customize-hook={hook}" for hook in HOOKS]
        _run(
            ["mmdebstrap", "--variant=minbase", f"--include={packages}", *hooks, "bookworm", str(tarball)],
            engine.env,
            600,
        )
        engine.docker("import", *(f"--change={change}" for change in changes), str(tarball), tag, timeout=300)
    return tag


def _torch_pin() -> str:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return next(d for d in dependencies if re.match(r"torch\s*==", d)).replace(" ", "")


@contextlib.contextmanager
def _torch_index() -> Iterator[str]:
    """A PEP 503 index on loopback holding the pinned torch wheel that pip resolves here (the
    CPU build on this kind of machine): its URL."""
    if os.environ.get("POOL_IMAGE_TEST_TORCH_INDEX"):
        yield os.environ["POOL_IMAGE_TEST_TORCH_INDEX"]
        return
    wheels = CACHE / "torch-wheels"
    pin = _torch_pin()
    version = pin.split("==")[1]
    for old in wheels.glob("torch-*.whl"):  # wheels of earlier pins
        if not old.name.startswith(f"torch-{version}+"):
            old.unlink()
    found = sorted(wheels.glob(f"torch-{version}+cpu-*.whl"))
    if not found:
        # For the image's Python (Debian bookworm's 3.11), whatever this environment runs.
        target = ["--python-version", "3.11", "--platform", "manylinux_2_28_x86_64", "--only-binary=:all:"]
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *target, pin, "-d", str(wheels)],
            check=True,
            timeout=900,
        )
        found = sorted(wheels.glob(f"torch-{version}+cpu-*.whl"))
    assert found, f"pip download {pin} gave no CPU wheel; set POOL_IMAGE_TEST_TORCH_INDEX to an index that has one"
    with tempfile.TemporaryDirectory(prefix="pool-index-") as folder:
        project = Path(folder) / "simple" / "torch"
        project.mkdir(parents=True)
        links = []
        for wheel in found:
            (project / wheel.name).symlink_to(wheel)
            links.append(f'<a href="{urllib.parse.quote(wheel.name)}">{wheel.name}</a>')
        (project / "index.html").write_text("<!DOCTYPE html><html><body>" + "".join(links) + "</body></html>")
        handler = functools.partial(_QuietHandler, directory=folder)
        # The index's URL is a build argument, so part of the layer cache's key: keep its port.
        remembered = CACHE / "torch-index-port"
        try:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", int(remembered.read_text())), handler)
        except (OSError, ValueError):
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
            remembered.write_text(str(server.server_address[1]))
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/simple"
        finally:
            server.shutdown()
            server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class Image:
    def __init__(self, tag: str, base: str, torch_index: str, build_log: str, size: int) -> None:
        self.tag, self.base, self.torch_index, self.build_log, self.size = tag, base, torch_index, build_log, size


def _build(
    engine: Engine, tag: str, *build_args: str, target: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    args = [arg for pair in build_args for arg in ("--build-arg", pair)] + (["--target", target] if target else [])
    return engine.docker("build", "--network=host", *args, "-t", tag, str(ROOT), timeout=900, check=check)


@pytest.fixture(scope="module")
def torch_index() -> Iterator[str]:
    with _torch_index() as url:
        yield url


@pytest.fixture(scope="module")
def image(engine: Engine, torch_index: str) -> Image:
    base = _base_image(engine, "python")
    started = time.monotonic()
    build = _build(engine, "pooling-service:latest", f"PYTHON_IMAGE={base}", f"TORCH_INDEX={torch_index}")
    build_s = time.monotonic() - started
    # A tag on the build stage keeps its layers (torch and the dependencies) from the prune at
    # the end, so the next run on this machine builds from them.
    _build(engine, "pool-test/build-stage:latest", f"PYTHON_IMAGE={base}", f"TORCH_INDEX={torch_index}", target="build")
    size = int(engine.docker("image", "inspect", "-f", "{{.Size}}", "pooling-service:latest").stdout)
    _report("build", {"seconds": round(build_s, 1), "image_bytes": size, "base": base})
    return Image("pooling-service:latest", base, torch_index, build.stdout, size)


def _report(key: str, value: object) -> None:
    """The figures of a run, in test-artifacts/image.json."""
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "image.json"
    figures = json.loads(path.read_text()) if path.exists() else {}
    figures[key] = value
    path.write_text(json.dumps(figures, indent=2) + "\n")


def _readme_example() -> tuple[dict, dict]:
    """The README's first curl example: its JSON body and the answer the README shows."""
    readme = (ROOT / "README.md").read_text()
    match = re.search(
        r"curl -s http://127\.0\.0\.1:8000/pool/max2d .*?-d '(\{.*?\})'\n```\n\n```json\n(.*?)\n```", readme, re.S
    )
    assert match, "the README's max2d example"
    return json.loads(match.group(1)), json.loads(match.group(2))


def _torch_answer(body: dict) -> tuple[list, list]:
    values, indices = torch.nn.functional.max_pool2d(
        torch.tensor(body["input"], dtype=torch.float32), body["kernel_size"], return_indices=True
    )
    return values.tolist(), indices.tolist()


def test_the_image_is_the_cpu_build_and_runs_as_its_own_user(engine: Engine, image: Image) -> None:
    config = json.loads(engine.docker("image", "inspect", "-f", "{{json .Config}}", image.tag).stdout)
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["python", "-m", "app"]
    assert "/healthz" in " ".join(config["Healthcheck"]["Test"])
    torch_build = engine.docker(
        "run", "--rm", image.tag, "python", "-c", "import torch; print(torch.__version__, torch.version.cuda)"
    )
    assert torch_build.stdout.split() == [f"{_torch_pin().split('==')[1]}+cpu", "None"], torch_build.stdout
    # torch's CPU wheels and the service: about 1.2 GB. A CUDA build would be several times that.
    assert image.size < 2_000_000_000, image.size
    # .dockerignore keeps the virtual environment, .git and caches out of the build context.
    sent = re.search(r"Sending build context to Docker daemon\s+([\d.]+)([kMG]?B)", image.build_log)
    assert sent, image.build_log[:500]
    assert float(sent.group(1)) * {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[sent.group(2)] < 5e6, sent.group(0)


def test_a_build_for_the_wrong_torch_fails_loudly(engine: Engine, image: Image) -> None:
    # The CPU index asked for a CUDA build: the check after the install stops the build.
    wrong = _build(
        engine,
        "pool-test/wrong:cuda",
        f"PYTHON_IMAGE={image.base}",
        f"TORCH_INDEX={image.torch_index}",
        "TORCH_DEVICE=cuda",
        check=False,
    )
    assert wrong.returncode != 0
    assert "is a cpu build; TORCH_DEVICE asks for cuda" in wrong.stdout + wrong.stderr
    # An index that cannot be reached fails the build, with no fallback to PyPI's default torch.
    closed = free_port()
    started = time.monotonic()
    unreachable = _build(
        engine,
        "pool-test/wrong:unreachable",
        f"PYTHON_IMAGE={image.base}",
        f"TORCH_INDEX=http://127.0.0.1:{closed}/simple",
        check=False,
    )
    assert unreachable.returncode != 0
    assert "No matching distribution found for torch==" in unreachable.stdout + unreachable.stderr
    assert time.monotonic() - started < 180
    for tag in ("pool-test/wrong:cuda", "pool-test/wrong:unreachable"):
        assert engine.docker("image", "inspect", tag, check=False).returncode != 0


def test_the_image_serves_read_only_and_stops_cleanly(engine: Engine, image: Image) -> None:
    port, grpc_port = free_port(), free_port()
    engine.docker(
        "run", "-d", "--name", SMOKE, "--read-only", "--tmpfs", "/tmp",
        "-p", f"127.0.0.1:{port}:8000", "-p", f"127.0.0.1:{grpc_port}:8001", "-e", "POOL_DEVICE=cpu", image.tag,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    wait_ready(f"{base}/healthz", deadline=60)
    body, shown = _readme_example()
    answer = httpx.post(f"{base}/pool/max2d", json=body).json()
    output, indices = _torch_answer(body)
    assert answer == shown
    assert answer["output"] == output and answer["indices"] == indices
    assert _over_grpc(f"127.0.0.1:{grpc_port}", body) == (output, indices)
    assert engine.docker("exec", SMOKE, "id", "-u").stdout.strip() == "10001"
    assert engine.docker("exec", SMOKE, "id", "-g").stdout.strip() == "10001"
    assert engine.docker("exec", SMOKE, "touch", "/srv/written", check=False).returncode != 0
    deadline = time.monotonic() + 60
    while (health := engine.docker("inspect", "-f", "{{.State.Health.Status}}", SMOKE).stdout.strip()) != "healthy":
        assert health == "starting" and time.monotonic() < deadline, health
        time.sleep(1)
    # The container runs with the defaults: the drain and the grace for requests in flight.
    settings = Settings.model_construct()
    started = time.monotonic()
    engine.docker("stop", "-t", "60", SMOKE)
    stop_s = time.monotonic() - started
    state = json.loads(engine.docker("inspect", "-f", "{{json .State}}", SMOKE).stdout)
    assert state["ExitCode"] == 0 and not state["OOMKilled"], state
    assert stop_s < settings.drain_s + settings.shutdown_grace_s, stop_s
    logs = engine.docker("logs", SMOKE).stderr
    assert "Finished server process" in logs
    engine.docker("rm", SMOKE)
    _report("smoke", {"answer": answer, "uid": 10001, "health": health, "stop_seconds": round(stop_s, 1)})


def _over_grpc(target: str, body: dict) -> tuple[list, list]:
    """The README's example over the image's gRPC port: (output, indices)."""
    client = triton_grpc.InferenceServerClient(target)
    try:
        deadline = time.monotonic() + 30
        while not client.is_server_ready():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        x = np.asarray(body["input"], np.float32)
        tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        parameters = {key: json.dumps(value) if isinstance(value, list) else value for key, value in body.items()}
        del parameters["input"]
        result = client.infer("max2d", [tensor], parameters=parameters)
        return result.as_numpy("output").tolist(), result.as_numpy("indices").tolist()
    finally:
        client.close()


def _requests_per_replica(engine: Engine) -> Counter[str]:
    spread = Counter[str]()
    replicas = engine.docker(
        "ps", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}",
        "--filter", "label=com.docker.compose.service=pooling",
    ).stdout.split()  # fmt: skip
    for replica in replicas:
        logs = engine.docker("logs", replica)
        spread[replica] = sum('"path":"/pool/max2d"' in line for line in (logs.stdout + logs.stderr).splitlines())
    return spread


def test_compose_spreads_requests_over_three_replicas_behind_nginx(engine: Engine, image: Image) -> None:
    nginx = _base_image(engine, "nginx")
    port, grpc_port = free_port(), free_port()
    env = {
        "NGINX_IMAGE": nginx,
        "POOL_HOST_PORT": str(port),
        "POOL_GRPC_HOST_PORT": str(grpc_port),
        "POOL_REPLICAS": "3",
    }
    started = time.monotonic()
    engine.compose("up", "-d", "--no-build", "--scale", "pooling=3", env=env)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/nginx-health", deadline=60)
        up_s = time.monotonic() - started
        body, shown = _readme_example()
        with httpx.Client(base_url=base, timeout=30) as client:
            answers = [client.post("/pool/max2d", json=body) for _ in range(30)]
            big = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
            pooled = client.post("/pool/max2d", json={"input": big.tolist(), "kernel_size": 3, "stride": 2})
        assert [a.status_code for a in answers] == [200] * 30
        assert all(a.json() == shown for a in answers)
        expected = torch.nn.functional.max_pool2d(torch.from_numpy(big), 3, 2).numpy()
        np.testing.assert_array_equal(np.asarray(pooled.json()["output"], np.float32), expected)
        # gRPC through nginx's HTTP/2 port, to the replicas' gRPC ports.
        for _ in range(3):
            assert _over_grpc(f"127.0.0.1:{grpc_port}", body) == _torch_answer(body)
        # Each replica's request lines, written by its access-log thread a moment after the answer.
        deadline = time.monotonic() + 10
        while sum((spread := _requests_per_replica(engine)).values()) < 31 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert len(spread) == 3 and sum(spread.values()) == 31, spread
        assert min(spread.values()) >= 3, spread
        _report("compose", {"up_seconds": round(up_s, 1), "spread": sorted(spread.values())})
    finally:
        started = time.monotonic()
        engine.compose("down", "-v", "--remove-orphans", env=env)
        _report("compose_down_seconds", round(time.monotonic() - started, 1))
